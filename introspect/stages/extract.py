"""The extract stage: run the net over a list of images, keep the layer's center pixel and the embedding.

One pass writes `full.h5` (every readable image) and `subset.h5` (the reference's random 2 %),
with `prefacen` (the center pixel) and `facen` (the embedding) per image, and `prefacen_mean`
(the layer's spatial mean) when `model.pool` has "mean" (the default; the reference's is
["center"]). The streaming, resuming and sharding are `stream`'s; this module says what to fetch.
"""

from __future__ import annotations

from pathlib import Path

from ..engine import nets, store, stream
from ..engine.extractor import MEAN, Extractor, check_pool, check_preprocessing
from ..engine.images import Preprocess
from ..engine.rundir import RunDir, Shard
from ..engine.stream import Inputs, StreamSettings, Summary


def identity(
    model_sha: str,
    ex: Extractor,
    info: stream.ListInfo,
    pre: Preprocess,
    s: StreamSettings,
    fmt: str = "files",
    dtype: str = "float32",
) -> dict:
    """Everything that decides the rows: a resume or join only mixes files that agree on all of it.

    Paths are not part of it (a moved list or model is the same run); they are recorded beside.
    """
    return {
        "model_sha256": model_sha,
        "layer": ex.layer.name,
        "embedding": ex.embedding,
        "preprocess": store.dumps(pre.as_dict()),
        "list_sha256": info.sha256,
        "list_lines": info.lines,
        "fraction": float(s.fraction),
        "seed": int(s.seed),
        "chunk_size": int(s.chunk_size),
        "full": bool(s.full),
        "format": fmt,
        "pool": store.dumps(list(ex.pool)),  # JSON list: a resume with another pool must not mix chunks
        "dtype": dtype,  # a resume in float16 must not mix with float32 chunks
    }


def job(
    ex: Extractor, pre: Preprocess, s: StreamSettings, ident: dict, provenance: dict, dtype: str = "float32"
) -> stream.Job:
    """The stream for this net: (center pixel, embedding[, spatial mean]) into full.h5 and/or subset.h5,
    stored as `dtype` (`extract.dtype`: float16 halves the files; readers widen to float32)."""
    results = ({"full": False} if s.full else {}) | {"subset": True}
    fetch = ex.outputs
    widths = {"prefacen": ex.layer.channels, "facen": ex.dim, MEAN: ex.layer.channels}
    schema = {name: ((widths[name],), store.check_dtype(dtype)) for name in fetch}
    return stream.Job(
        "extract", ex.model, ex.input, fetch, schema, ident, results, pre, provenance, removes=("full", "subset")
    )


def run(cfg: dict, shard: Shard = Shard(), overwrite: bool = False, progress: bool = True) -> Summary:
    """Extract per the pipeline config; resumes a killed run, refuses to mix with another run."""
    settings = StreamSettings.from_config(cfg["extract"])
    dtype = cfg["extract"]["dtype"]
    store.check_dtype(dtype)
    pre = Preprocess.from_config(cfg["preprocess"])
    model_path = Path(cfg["model"]["path"])
    net = nets.load(model_path, hint="run `make model` or set model.path")
    pool = check_pool(cfg["model"]["pool"])
    ex = Extractor.build(net, cfg["model"]["layer"], cfg["model"]["embedding"], pre, pool)
    root, fmt = Path(cfg["data"]["root"]), cfg["data"]["format"]
    run_dir = RunDir(cfg["extract"]["out"])
    inputs = Inputs.from_config(cfg["data"], run_dir, enumerate=True)
    info = inputs.list
    provenance = {"model_path": str(model_path), "list_path": str(info.path), "data_root": str(root)}
    provenance["sanity"] = store.dumps(check_preprocessing(ex, pre, info.path, inputs.source, inputs.limits))
    ident = identity(nets.sha256_file(model_path), ex, info, pre, settings, fmt, dtype)
    with run_dir.stage("extract", shard) as timing:
        summary = stream.run(
            job(ex, pre, settings, ident, provenance, dtype),
            inputs,
            settings,
            run_dir,
            shard,
            overwrite=overwrite,
            progress=progress,
        )
        timing.extra["images"] = summary.processed
        timing.record &= summary.processed > 0
    return summary


def join(out: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """`introspect join`: the shards' files into the run folder's results."""
    run_dir = RunDir(out)
    with run_dir.lock("join"):
        return stream.join(run_dir, overwrite=overwrite)
