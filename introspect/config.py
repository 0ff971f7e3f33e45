"""Pipeline files: TOML with known keys and defaults; command-line flags override them.

Unknown keys and wrong types are rejected up front, so a typo costs one line, not a 9-hour run
with the default silently used.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

from .errors import UserError

#: Every key a pipeline file may set, with its default. Paths are relative to the working directory.
DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {
        "list": "lists/synth.txt",  # one image per line: a path under root, a record id, or shard.tar:member
        "root": "data/synth",  # files: their folder; recordio: the .rec (or its folder); tar: the shards' folder
        "format": "files",  # files | recordio | tar; with recordio or tar, list = "" runs every image
        "max_pixels": 50_000_000,  # an image whose header says more is refused (decompression bombs)
        "max_bytes": 64 << 20,  # a file larger than this is refused, never read whole
        # root as a URL (s3://bucket/prefix, gs://, az://, http(s)://): options for fsspec.filesystem (for s3:
        # endpoint_url, key, secret, anon, config_kwargs, ...); {} = the standard variables (AWS_ENDPOINT_URL, ...)
        "storage_options": {},
        "timeout": 60.0,  # root as a URL: seconds one read may take before it is retried (3 times), then failed
    },
    "model": {
        "path": "models/sface.onnx",
        "layer": "auto",  # "auto", a tensor name, or "node:<index>"
        "embedding": "auto",  # the output kept as `facen`; auto = the first graph output
        # what extract keeps of the layer: the center pixel (`prefacen`, the reference's feature) and the
        # spatial mean (`prefacen_mean`); ["center"] = the reference
        "pool": ["center", "mean"],
    },
    "preprocess": {
        "size": [112, 112],  # height, width
        "mean": [0.0, 0.0, 0.0],  # in the net's channel order
        "std": [1.0, 1.0, 1.0],
        "rgb": True,  # False feeds OpenCV's BGR order
        # extract compares mean/std/rgb with the standard normalizations on the first images:
        # warn (one line naming the better one and its --set flags) | strict (refuse) | off
        "check": "warn",
    },
    "extract": {
        "out": "runs/demo",
        "batch_size": 0,  # images per forward pass; 0 = 64 on the CPU, 512 on a GPU
        # the subset kept for clustering: "auto" = 2 % of the list but at least min_subset lines (the whole list
        # when shorter); a number = exactly that share (the reference's rule: pipelines/reference.toml sets 0.02)
        "fraction": "auto",
        "min_subset": 2000,  # with fraction "auto": the fewest lines the subset keeps
        "seed": 2463426724,  # the reference's: same list -> same subset
        "full": True,  # False keeps only the subset (and runs the net only on it)
        "chunk_size": 4096,  # list lines per resumable unit and per shard unit
        "workers": 0,  # decoding threads; 0 = one per core
        "device": "auto",  # auto | cpu | cuda
        "engine": "local",  # local | ray (extract and label on a Ray cluster: the `distributed` extra)
        "address": "",  # the Ray cluster; "" = RAY_ADDRESS, else a local cluster on this machine
        "actors": 0,  # ray: inference actors; 0 = one per GPU, else half the CPUs
        "dtype": "float32",  # float32 | float16: how prefacen, prefacen_mean and facen are stored (float16: half)
    },
    "tsne": {  # see introspect/tsne.py for how each backend takes these
        "backend": "auto",  # auto | opentsne | cuml | tsnecuda | sklearn
        "perplexity": 30.0,  # the reference: 200 on 342 k points
        "n_iter": 750,  # the reference: 4000
        "learning_rate": "auto",  # "auto" or a number (the reference: 2000)
        "num_neighbors": 0,  # 0 = 3 x perplexity (the reference: 1000)
        "pca": 50,  # components before t-SNE; 0 = none
        "seed": 0,
    },
    "cluster": {  # introspect/science/clustering.py ClusterSettings, introspect/science/discovery.py
        "space": "pca",  # pca: the activations' whitened PCA space | map: the t-SNE map (the reference's)
        "settings": "auto",  # auto: a rule chooses without labels (pca: method, k; map: the sweep's) | fixed
        "method": "auto",  # pca: auto, kmeans, ward; map: auto (knn-dbscan), knn-dbscan, dbscan, hdbscan, optics
        "k": 0,  # pca, settings fixed: the number of clusters
        "k_grid": [2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40],  # pca, settings auto: the k the rule compares
        "components": 50,  # pca: whitened components the partition sees
        "refits": 3,  # pca: subsample refits the stability rule compares
        "facets": 10,  # at most this many facets (groups of clusters named once); 0 = none
        "unknown": 0.01,  # share of held-out rows below the calibrated threshold: label -1; 0 = off (the reference)
        "eps": 0.05,  # map: z-units of the map (the reference's)
        "min_samples": 120,  # map: on the subsample (the reference's; scale it with the subset's size)
        "subsample": 0.5,  # map: share of the map DBSCAN sees
        "n_neighbors": 5,  # map: of the KNN that labels every point
        "min_cluster_size": 500,  # map: hdbscan / optics only
        "seed": 42,
        "views": ["center", "mean", "noid"],  # clusterings side by side (science/views.py); ["center"] = the reference
        "same_person": 10,  # noid: same-person neighbours looked for per row among all extracted rows
        # pca, settings auto: the stability rule's refits see at most this many rows (a seeded sample); the
        # partition at the chosen k is fitted on every row; 0 = every row
        "rule_rows": 50_000,
        # noid: rows of the subset whose same-person photos are searched (a seeded sample); the view partitions
        # them and learns its head on them, and the head labels the other rows (as it labels every image); 0 = all
        "noid_rows": 50_000,
    },
    "classifier": {
        "class_weight": "balanced",  # balanced | none (the reference's)
        "test_size": 0.2,  # held-out share for the honest figures
        "max_iter": 1000,
        "cv": 5,  # LogisticRegressionCV folds
        "pca": 64,  # whitened PCA components the classifier is fitted on (folded into the graft); 0 = raw
        "cv_rows": 50_000,  # the C search (cv folds x 10 Cs) sees at most this many training rows; fits at C use all
        "seed": 0,
    },
    "merge": {  # introspect merge (introspect/merge.py)
        "sample": 256,  # images of data.list the merged model is checked on before it is written
    },
    "label": {  # introspect label: the merged model over data.list (introspect/label.py)
        "model": "",  # "" = <extract.out>/merged.onnx
        "all_scores": False,  # also store every cluster's raw score per image
        "fast": True,  # classify full.h5's stored activations when they are this net's, for this list
        "drift": 1.5,  # flag a cluster whose labelled share differs from its subset share by this factor
    },
    "report": {  # introspect report (introspect/report.py)
        "gallery": 32,  # thumbnails per cluster
        "hover_max": 100000,  # map points with a hover thumbnail (a seeded sample beyond)
        "seed": 0,
        "compare": "",  # another labels.h5 made with this run's merged model (new data): drawn over the map
    },
    "sweep": {  # introspect sweep: the grid and the rule's limits (introspect/sweep.py)
        "perplexity": [30.0, 100.0],
        "eps": [0.05, 0.1, 0.15, 0.2],
        "min_samples": [5, 10, 20, 40],
        "seeds": 2,  # t-SNE runs per perplexity, for stability
        "max_clusters": 40,
        "max_noise": 0.5,
        "min_accuracy": 0.8,  # of the sweep's quick classifier, which reads lower than the stage's
    },
    "align": {  # introspect align: detect and align faces in raw photos (introspect/stages/align.py)
        "root": "data/aligned",  # where the 112 x 112 crops go
        "list": "lists/aligned.txt",  # one line per kept face, relative to root (+ .faces.csv, .failures.csv)
        "model": "models/face_detection_yunet_2023mar_int8bq.onnx",  # YuNet; fetched from the SFace wheel
        "score_threshold": 0.7,  # a detection below this is no face
        "nms_threshold": 0.3,
        "faces": "largest",  # largest (within 0.1 of the best score, the largest box) | all (every face a row)
        "rotations": "always",  # always | fallback | never: also detect on the photo turned 90, 180, 270 degrees
        "max_side": 640,  # photos are shrunk to this longer side for detection (the warp reads full size)
        "quality": 95,  # JPEG quality of the crops
        "workers": 0,  # threads; 0 = one per core
    },
    "synth": {
        "n": 3000,
        "seed": 0,
        "root": "data/synth",
        "list": "lists/synth.txt",
    },
}


def load(path: str | Path | None, overrides: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Defaults, then the pipeline file, then overrides keyed 'section.key'."""
    cfg = copy.deepcopy(DEFAULTS)
    for dotted, value in _read(path).items():
        _set(cfg, dotted, value, str(path))
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set(cfg, dotted, value, "command line")
    return cfg


def explicit(path: str | Path | None, overrides: dict[str, Any] | None = None) -> set[str]:
    """The keys the user set ('section.key'): in the pipeline file or on the command line, not left at a default.

    A later stage takes the run folder's records for every other key (`stages.remembered`).
    """
    return set(_read(path)) | {k for k, v in (overrides or {}).items() if v is not None}


def _read(path: str | Path | None) -> dict[str, Any]:
    """The pipeline file's keys as {'section.key': value}; {} without a file."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pipeline file {path} does not exist; pass --pipeline PATH of a pipeline TOML file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"pipeline file {path} is not valid TOML: {e}") from None
    out: dict[str, Any] = {}
    for section, values in data.items():
        if section not in DEFAULTS:
            raise UserError(f"{path}: unknown section [{section}]; known: {', '.join(DEFAULTS)}")
        if not isinstance(values, dict):
            raise UserError(f"{path}: {section} = {values!r} should be a section [{section}] with keys")
        out.update({f"{section}.{key}": value for key, value in values.items()})
    return out


def _set(cfg: dict, dotted: str, value: Any, where: str) -> None:
    section, _, key = dotted.partition(".")
    if section not in cfg or key not in cfg[section]:
        known = ", ".join(f"{section}.{k}" for k in cfg.get(section, {})) or ", ".join(cfg)
        raise UserError(f"{where}: unknown key {dotted!r}; known: {known}")
    default = cfg[section][key]
    if isinstance(default, bool) != isinstance(value, bool) or (
        not isinstance(default, bool) and not _same_kind(default, value, dotted)
    ):
        raise UserError(f"{where}: {dotted} = {value!r} should be a {type(default).__name__} like {default!r}")
    if (isinstance(default, float) or dotted in AUTO_OR_NUMBER) and isinstance(value, int):
        value = float(value)
    cfg[section][key] = value


#: Keys that take "auto" or a number; every other "auto" key takes text (a tensor named 680).
AUTO_OR_NUMBER = {"tsne.learning_rate", "extract.fraction"}


def _same_kind(default: Any, value: Any, dotted: str = "") -> bool:
    if dotted in AUTO_OR_NUMBER and isinstance(value, (int, float)) and not isinstance(value, bool):
        return True
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def from_text(dotted: str, text: str) -> Any:
    """A `--set` value: kept as text for a text key (a tensor named 680), else read as TOML."""
    section, _, key = dotted.partition(".")
    default = DEFAULTS.get(section, {}).get(key)
    if isinstance(default, str) and dotted not in AUTO_OR_NUMBER:
        return text
    return parse_value(text)


def parse_value(text: str) -> Any:
    """A `--set key=value` value, read as TOML so `--set extract.full=false` is a bool."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
