"""The label stage: one forward pass of the merged model labels every image of a list.

Streams `<out>/merged.onnx` (or `label.model`) over the list with the extract stage's engine
(`stream`: decoding threads, failures recorded, resume after a kill, `--shard i/n` + join) and
writes:

- `<out>/labels.h5`: `index` (list line), `label` (cluster id), `score` (the softmax
  probability of that cluster over the classifier's raw scores), and with `label.all_scores`
  `scores` (N x K raw scores, column j = the j-th cluster id); failures as in extract; the
  list, root and model it was made from as attributes (the report shows that list's images).
- `<out>/clusters/<name>.txt`: the list's own lines, one file per cluster, in list order, so
  `cat` gives a new training list.
- `<out>/distribution.csv`: each cluster's share of the clustered subset vs of the labelled
  list; a cluster whose share moves by more than `label.drift` times is flagged.
- in labels.h5, `map` (N x 2): each image's position on the run's t-SNE map.

The map and the subset's shares come from the clusters.h5 the model was merged from, found by
its recorded path and sha256 from any `--out` (`label_map`): new data labelled into a new folder
lands on the run's map. When that file is gone or changed, one line says so, and labels.h5
records why in its `unplaced` attribute (the report repeats it).

When the merged model has an unknown threshold, images below it get label -1, are listed in
`<out>/clusters/unknown.txt` and counted in an `unknown` row of the distribution. When it has
facets, labels.h5 also holds `facets` (N x F, each facet's probability) and
`<out>/facets/<name>.txt` lists the images whose facet probability is at least 0.5.
Each further view V of the model (`introspect.views`) adds `label_V`, `score_V`[, `facets_V`]
and the same lists and distribution under `<out>/views/V/`.

Fast path: when `<out>/full.h5` holds this very net's `prefacen` (and `prefacen_mean` when a
view is fed the spatial mean) for this very list (same net, layer, preprocessing and list,
checked by hash), the merged model's own heads run on the stored rows and no image is decoded
again; the rows are the merged model's (tested).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..engine import graph, nets, records, runtime, source_names, store, stream
from ..engine.images import Preprocess
from ..engine.merged import (
    CENTER,
    CLUSTER,
    CLUSTER_SCORES,
    FACETS,
    FEATURES,
    TOP,
    UNKNOWN,
    UNKNOWN_NAME,
    center_tensor,
    feed_tensor,
    load_merged,
    unknown_threshold,
    view_heads,
    views_of,
    with_center,
)
from ..engine.rundir import ARTIFACTS, RunDir, Shard, ensure_space, write_bytes, writing, writing_dir
from ..engine.stream import Inputs, StreamSettings, Summary
from ..errors import UserError
from ..science import placement
from .label_map import distribution, find_clusters, map_placer
from .settings import LabelSettings

log = logging.getLogger(__name__)

#: Rows per block when reading labels or activations back.
BLOCK = 1 << 16
#: An image is in a facet's list when the facet's probability is at least this.
FACET_MIN = 0.5


def _schema(k: int, all_scores: bool, facets: int = 0, on_map: bool = False, views: list[dict] = ()) -> store.Schema:
    """labels.h5's columns: the center's as ever, then `label_V`, `score_V`[, `facets_V`] per further view."""
    schema: store.Schema = {"label": ((), np.int64), "score": ((), np.float32)}
    if all_scores:
        schema["scores"] = ((k,), np.float32)
    if facets:
        schema["facets"] = ((facets,), np.float32)
    if on_map:
        schema["map"] = ((2,), np.float32)
    for v in views:
        if v["name"] == CENTER:
            continue
        schema[f"label_{v['name']}"] = ((), np.int64)
        schema[f"score_{v['name']}"] = ((), np.float32)
        if v["facets"]:
            schema[f"facets_{v['name']}"] = ((len(v["facets"]),), np.float32)
    return schema


def _top(view: str) -> str:
    """The output `label` adds for a view's top softmax probability."""
    return TOP if view == CENTER else f"{CLUSTER}_{view}_probability"


def _with_tops(model, views: list[dict]):
    """The model with each view's top probability as an output (`add_top_probability`)."""
    for v in views:
        model = graph.add_top_probability(model, v["scores"], _top(v["name"]))
    return model


def _fetch(views: list[dict], all_scores: bool) -> dict[str, str]:
    """labels.h5 dataset -> model output, for every view."""
    fetch = {"label": CLUSTER, "score": TOP} | ({"scores": CLUSTER_SCORES} if all_scores else {})
    fetch |= {"facets": FACETS} if views[0]["facets"] else {}
    for v in views[1:]:
        fetch[f"label_{v['name']}"] = v["label"]
        fetch[f"score_{v['name']}"] = _top(v["name"])
        if v["facets"]:
            fetch[f"facets_{v['name']}"] = v["facets_output"]
    return fetch


# --------------------------------------------------------------------------- the stage


@dataclass
class LabelResult:
    summary: Summary
    labels: Path
    fast: bool
    shard: bool
    distribution: list[dict] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    facets: list[dict] = field(default_factory=list)
    #: Per further view: {name, distribution, facets, folder}.
    views: list[dict] = field(default_factory=list)

    def text(self) -> str:
        s = self.summary
        how = "from the activations in full.h5 (no image decoded)" if self.fast else "with the merged model"
        lines = [f"label: {s.line()}, {how}", f"  -> {self.labels}"]
        if self.shard:
            lines.append(
                "  shard done; when every shard is, run `introspect join`, then `introspect label` again for the lists"
            )
            return "\n".join(lines)
        lines += _table("cluster", self.distribution, self.facets)
        lines += [f"  -> {f}" for f in self.files[1:]]
        for v in self.views:
            lines += _table(f"view {v['name']}", v["distribution"], v["facets"]) + [f"  -> {v['folder']}"]
        return "\n".join(lines)


def _table(title: str, distribution: list[dict], facets: list[dict]) -> list[str]:
    """One view's clusters (and facets): images, subset share, labelled share, drift flag."""
    lines = [f"  {title:<24} {'images':>9} {'subset':>8} {'labelled':>9}"]
    for r in distribution:
        before = "-" if r["subset_share"] is None else f"{r['subset_share']:.2%}"
        flag = "  <- share drifted" if r["flagged"] else ""
        lines.append(f"  {r['name']:<24} {r['images']:>9} {before:>8} {r['labelled_share']:>9.2%}{flag}")
    for r in facets:
        lines.append(f"  facet {r['name']:<18} {r['images']:>9} {'':>8} {r['labelled_share']:>9.2%}")
    return lines


def run(
    cfg: dict, shard: Shard = Shard(), overwrite: bool = False, progress: bool = True, force: bool = False
) -> LabelResult:
    """Label the list; then the per-cluster lists and the distribution (not for a single shard)."""
    started = time.perf_counter()
    run_dir = RunDir(cfg["extract"]["out"])
    lab = LabelSettings.from_config(cfg["label"])
    settings = StreamSettings.for_every_line(cfg["extract"])
    with run_dir.stage("label", shard) as timing:
        path = Path(lab.model) if lab.model else run_dir.path("merged")
        model, meta = load_merged(path)
        if not force:
            _check_same_clustering(run_dir, path, meta)
        pre = Preprocess.from_config(meta["preprocess"])
        inputs = Inputs.from_config(cfg["data"], run_dir)
        clusters, why = find_clusters(run_dir, path, meta)
        if why:
            log.warning(
                "label: no map positions and no subset shares: %s; put that file back or merge again, then label again",
                why,
            )
        place = map_placer(clusters)
        unplaced = why or ("" if place is not None else f"{clusters} holds no map projection")
        job = _job(model, path, meta, pre, inputs, settings, lab.all_scores, place, unplaced)
        dest = run_dir.result("labels", shard)
        if overwrite:
            runtime.providers(settings.device)  # a wrong device is one line, before anything is removed
            stream.probe(inputs, pre.size)  # so is a mistyped root or list
            _loads(job.model, path)
            dest.unlink(missing_ok=True)
        full = lab.fast and shard.count == 1 and not dest.exists() and _fast_source(run_dir, meta, inputs.list, job)
        if full:
            attrs = {**job.identity, **job.provenance, "kind": "labels", "path": "fast", "shard": ""}
            _label_stored(full, model, dest, job.schema, attrs, settings.device, progress, meta, place)
            summary = stream.summarize({"labels": dest}, Summary())
            summary.processed = summary.images
        else:
            summary = stream.run(job, inputs, settings, run_dir, shard, overwrite=overwrite, progress=progress)
        summary.seconds = time.perf_counter() - started
        timing.extra.update(images=summary.processed, fast=bool(full))
        timing.record &= summary.processed > 0
        result = LabelResult(summary, dest, bool(full), shard.count > 1)
        if shard.count == 1:
            names = {c["id"]: c["name"] for c in meta["clusters"]}
            if unknown_threshold(meta) is not None:
                names[UNKNOWN] = UNKNOWN_NAME
            counts = write_lists(dest, inputs.list.path, names, run_dir.path("lists"))
            result.distribution = distribution(clusters, counts, names, lab.drift)
            _write_distribution(run_dir.path("distribution"), result.distribution)
            result.files = [dest, run_dir.path("lists"), run_dir.path("distribution")]
            if source_names.write_source_lists(dest, inputs.list.path, names, run_dir.path("source_lists")):
                result.files.append(run_dir.path("source_lists"))
            facets = meta.get("facets") or []
            folder = run_dir.path("facet_lists")
            if facets:
                fcounts = write_facet_lists(dest, inputs.list.path, [f["name"] for f in facets], folder)
                total = max(1, sum(counts.values()))
                result.facets = [
                    {**f, "images": n, "labelled_share": n / total} for f, n in zip(facets, fcounts, strict=True)
                ]
                result.files.append(folder)
            elif folder.is_dir():  # a previous merge's facets, gone from this model
                shutil.rmtree(folder)
            for v in views_of(meta)[1:]:
                result.views.append(_view_lists(run_dir, clusters, dest, inputs.list.path, v, lab.drift))
    return result


def _view_lists(run_dir: RunDir, clusters: Path | None, labels: Path, list_path: Path, v: dict, drift: float) -> dict:
    """A further view's lists (`views/V/clusters/`, `views/V/facets/`) and distribution (`views/V/distribution.csv`).

    Its subset shares come from clusters.h5's `views/V/label` (none when the run lacks it).
    """
    name, where = v["name"], run_dir.root / "views" / v["name"]
    names = {c["id"]: c["name"] for c in v["clusters"]}
    if v["unknown_threshold"] is not None:
        names[UNKNOWN] = UNKNOWN_NAME
    counts = write_lists(labels, list_path, names, where / "clusters", f"label_{name}")
    rows = distribution(clusters, counts, names, drift, f"views/{name}/label")
    _write_distribution(where / ARTIFACTS["distribution"], rows)
    out = {"name": name, "distribution": rows, "facets": [], "folder": where}
    if v["facets"]:
        fcounts = write_facet_lists(
            labels, list_path, [f["name"] for f in v["facets"]], where / "facets", f"facets_{name}"
        )
        total = max(1, sum(counts.values()))
        out["facets"] = [{**f, "images": n, "labelled_share": n / total} for f, n in zip(v["facets"], fcounts)]
    elif (where / "facets").is_dir():
        shutil.rmtree(where / "facets")
    return out


def _job(
    model,
    path: Path,
    meta: dict,
    pre: Preprocess,
    inputs: Inputs,
    s: StreamSettings,
    all_scores: bool,
    place: placement.PlaceOnMap | None = None,
    unplaced: str = "",
):
    """The merged model streamed over the list: (cluster, top probability[, raw scores][, facets][, map]) per image.

    With `place`, the model's center pixel is fetched too and becomes the image's map position
    (the job's transform), so the center pixel is never stored.
    """
    ident = {
        "stage": "label",
        "model_sha256": nets.sha256_file(path),
        "preprocess": store.dumps(pre.as_dict()),
        "list_sha256": inputs.list.sha256,
        "list_lines": inputs.list.lines,
        "chunk_size": int(s.chunk_size),
        "all_scores": all_scores,
        "format": inputs.format,
    }
    facets = len(meta.get("facets") or [])
    views = views_of(meta)
    fetch = _fetch(views, all_scores)
    center = center_tensor(model) if place is not None else None
    if place is not None and center is None:
        log.warning("label: %s has no center-pixel tensor to place images on the map; no map positions", path)
        place, unplaced = None, f"{path} has no center-pixel tensor"
    if place is not None:
        model = with_center(model, center, place.components.shape[1])
        fetch[place.key] = center
        ident["map"] = True
    provenance = records.paths(path, inputs.list.path, inputs.root)
    provenance |= source_names.record(inputs.list.path)
    provenance["unplaced"] = unplaced  # why there is no `map` when clusters.h5 was not found (report says it)
    return stream.Job(
        "label",
        _with_tops(model, views),
        meta["input"],
        fetch,
        _schema(len(meta["clusters"]), all_scores, facets, place is not None, views),
        ident,
        {"labels": False},
        pre,
        dict(provenance, path="merged model"),
        parts="parts-label",
        transform=place,
    )


def _loads(model, path: Path) -> None:
    """onnxruntime takes the model (an op it lacks is one line), checked before `--overwrite` removes anything."""
    runtime.create(model, None, [runtime.CPU], str(path))


def _check_same_clustering(run_dir: RunDir, path: Path, meta: dict) -> None:
    """A merged model from another clustering would mix its labels with this run's subset shares and report."""
    clf = run_dir.path("classifier")
    if clf.is_file() and nets.sha256_file(clf) != meta.get("classifier_sha256"):
        raise UserError(
            f"{path} grafts another classifier than {clf} (another run's clustering); label into that run's "
            "folder (--out), or pass --force to label with it here anyway"
        )


def _fast_source(run_dir: RunDir, meta: dict, info: stream.ListInfo, job: stream.Job) -> Path | None:
    """`<out>/full.h5` when it holds this net's activations for this list, else None (logged why)."""
    full, clf = run_dir.path("full"), run_dir.path("classifier")
    if not full.is_file() or not clf.is_file():
        return None
    a = store.read_attrs(full)
    checks = {
        "net": a.get("model_sha256") == meta.get("net_sha256"),
        "layer": a.get("layer") == meta.get("layer"),
        "preprocessing": a.get("preprocess") == job.identity["preprocess"],
        "list": a.get("list_sha256") == info.sha256 and a.get("format", "files") == job.identity["format"],
        "classifier": nets.sha256_file(clf) == meta.get("classifier_sha256"),
    }
    differ = [k for k, ok in checks.items() if not ok]
    if differ:
        log.info("label: %s was made with another %s; running the merged model", full, " and ".join(differ))
        return None
    needs = {store.DATASETS[v["feature"]] for v in views_of(meta)}
    with store.open_h5(full) as f:
        lacks = sorted(k for k in needs if k not in f)
    if lacks:
        log.info("label: %s has no %s (the views need it); running the merged model", full, ", ".join(lacks))
        return None
    log.info("label: fast path, classifying the activations stored in %s", full)
    return full


def _label_stored(
    full: Path,
    model,
    dest: Path,
    schema: store.Schema,
    attrs: dict,
    device: str,
    progress: bool,
    meta: dict,
    place: placement.PlaceOnMap | None = None,
) -> None:
    """Run the merged model's heads (`view_heads`) on full.h5's stored features block by block into labels.h5.

    The heads are cut out of the merged model itself (unknown thresholds and facets included),
    so the rows are the merged model's; `prefacen` feeds the center-pixel heads, `prefacen_mean`
    the spatial-mean ones. With `place` (and `map` in the schema) each block's map positions come
    from the same block of `prefacen`. Written atomically, with full.h5's failures.
    """
    from tqdm import tqdm

    views = views_of(meta)
    heads = _with_tops(view_heads(model), views)
    feeds = {store.DATASETS[f]: t for f in FEATURES if (t := feed_tensor(model, f))}
    sess = runtime.session(heads, device)
    fetch = {k: v for k, v in _fetch(views, True).items() if k in schema}
    dest.parent.mkdir(parents=True, exist_ok=True)
    ensure_space(dest.parent, store.count_rows(full) * (16 + 4 * len(schema)) * 2, dest)
    with store.open_h5(full) as src, writing(dest) as tmp, h5py.File(tmp, "w") as f:
        n = len(src["index"])
        ds = {
            k: f.create_dataset(k, (n, *shape), dtype, chunks=(max(1, min(n, BLOCK)), *shape) if n else None)
            for k, (shape, dtype) in schema.items()
        }
        f.create_dataset("index", data=src["index"][:], dtype=np.int64)
        for lo in tqdm(range(0, n, BLOCK), disable=not progress, desc="label (stored activations)", unit="block"):
            blocks = {k: store.as_float32(src[k][lo : lo + BLOCK]) for k in feeds}  # the heads take float32
            got = dict(zip(fetch, sess.run(list(fetch.values()), {t: blocks[k] for k, t in feeds.items()})))
            if place is not None and "map" in ds:
                got = place(got | {place.key: blocks["prefacen"]})
            for k, d in ds.items():
                d[lo : lo + BLOCK] = got[k]
        src.copy(src["failures"], f, "failures")
        for k, v in attrs.items():
            f.attrs[k] = v


# --------------------------------------------------------------------------- lists and distribution


def write_lists(
    labels: Path, list_path: Path, names: dict[int, str], folder: Path, dataset: str = "label"
) -> dict[int, int]:
    """`folder/<name>.txt` per cluster with the list's own lines, in order; returns the counts.

    Streams the list and the labels together (both in list order), so memory stays flat;
    written into a fresh folder that replaces the old one at the end, so the lists are never
    half written or mixed with a previous run's.
    """
    keys = list(names)
    column = {k: j for j, k in enumerate(keys)}

    def pick(f: h5py.File, lo: int, hi: int):
        if dataset not in f:
            raise UserError(f"{labels} holds no {dataset!r} for the model's views; label again (--overwrite)")
        for k in f[dataset][lo:hi].tolist():
            if k not in names:
                raise UserError(f"{labels} holds cluster {k}, which the model does not name; label again")
            yield (column[k],)

    counts = _write_lists(labels, list_path, list(names.values()), folder, pick)
    return dict(zip(keys, counts))


def write_facet_lists(
    labels: Path, list_path: Path, names: list[str], folder: Path, dataset: str = "facets"
) -> list[int]:
    """`folder/<name>.txt` per facet: the lines whose facet probability is at least FACET_MIN; the counts.

    An image may be in several facets, or in none."""

    def pick(f: h5py.File, lo: int, hi: int):
        if dataset not in f or f[dataset].shape[1:] != (len(names),):
            raise UserError(
                f"{labels} holds no {dataset} for the model's {len(names)} facets; label again (--overwrite)"
            )
        for row in f[dataset][lo:hi] >= FACET_MIN:
            yield np.flatnonzero(row).tolist()

    return _write_lists(labels, list_path, names, folder, pick)


def _write_lists(labels: Path, list_path: Path, names: list[str], folder: Path, pick) -> list[int]:
    """The list's lines into `folder/<names[j]>.txt` for each j that `pick(h5, lo, hi)` yields per row."""
    counts = [0] * len(names)
    with writing_dir(folder) as tmp:
        files = [
            open(tmp / f"{name}.txt", "w", encoding="utf-8", errors="surrogateescape", newline="\n") for name in names
        ]
        try:
            with store.open_h5(labels) as f, stream.open_list(list_path) as lines:
                index = f["index"]
                line_no, line = -1, ""
                for lo in range(0, len(index), BLOCK):
                    hi = lo + BLOCK
                    for i, js in zip(index[lo:hi].tolist(), pick(f, lo, hi)):
                        while line_no < i:
                            line, line_no = next(lines), line_no + 1
                        for j in js:
                            files[j].write(line.rstrip("\r\n") + "\n")
                            counts[j] += 1
        finally:
            for fh in files:
                fh.close()
    return counts


def _write_distribution(path: Path, rows: list[dict]) -> None:
    """The rows as CSV (for people) and, beside it, as JSON with their types (`.json`, for the report)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["cluster"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_bytes(path, buf.getvalue().encode())
    write_bytes(path.with_name(ARTIFACTS["distribution_json"]), json.dumps(rows, indent=1).encode())
