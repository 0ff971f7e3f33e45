"""The label stage: one forward pass of the merged model labels every image of a list.

Streams `<out>/merged.onnx` (or `label.model`) over the list with the extract stage's engine
(`stream`: decoding threads, failures recorded, resume after a kill, `--shard i/n` + join) and
writes:

- `<out>/labels.h5`: `index` (list line), `label` (cluster id), `score` (the softmax
  probability of that cluster over the classifier's raw scores), and with `label.all_scores`
  `scores` (N x K raw scores, column j = the j-th cluster id); failures as in extract.
- `<out>/clusters/<name>.txt`: the list's own lines, one file per cluster, in list order, so
  `cat` gives a new training list.
- `<out>/distribution.csv`: each cluster's share of the clustered subset vs of the labelled
  list; a cluster whose share moves by more than `label.drift` times is flagged.

Fast path: when `<out>/full.h5` holds this very net's `prefacen` for this very list (same net,
layer, preprocessing and list, checked by hash), the classifier runs on the stored rows and no
image is decoded again; the rows are the merged model's (tested).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import onnx

from ..engine import graph, runtime, store, stream
from ..engine.images import Preprocess
from ..engine.nets import sha256_file
from ..errors import UserError
from . import merge

log = logging.getLogger(__name__)

CLUSTER, SCORES = "cluster", "cluster_scores"
TOP = "cluster_probability"
#: Rows per block when reading labels or activations back.
BLOCK = 1 << 16


# --------------------------------------------------------------------------- the model


def load_merged(path: Path) -> tuple[onnx.ModelProto, dict]:
    """The merged model and its metadata, or one clear line on what is wrong."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; run `make merge` (or `introspect merge`) first")
    model = onnx.load(path)
    names = [o.name for o in model.graph.output]
    if CLUSTER not in names or SCORES not in names:
        raise UserError(
            f"{path} has outputs {names}, not `{CLUSTER}` and `{SCORES}`: give the model `make merge` wrote"
        )
    meta = merge.read_metadata(model)
    if "clusters" not in meta or "preprocess" not in meta:
        raise UserError(f"{path} carries no introspect metadata (clusters, preprocessing); run `make merge` again")
    return model, meta


def _schema(k: int, all_scores: bool) -> store.Schema:
    schema: store.Schema = {"label": ((), np.int64), "score": ((), np.float32)}
    if all_scores:
        schema["scores"] = ((k,), np.float32)
    return schema


# --------------------------------------------------------------------------- the stage


def run(cfg: dict, shard: stream.Shard = stream.Shard(), overwrite: bool = False, progress: bool = True) -> dict:
    """Label the list; then the per-cluster lists and the distribution (not for a single shard)."""
    started = time.perf_counter()
    out, lab = Path(cfg["extract"]["out"]), cfg["label"]
    path = Path(lab["model"]) if lab["model"] else out / "merged.onnx"
    model, meta = load_merged(path)
    ids = [c["id"] for c in meta["clusters"]]
    pre = Preprocess.from_config(meta["preprocess"])
    list_path, root = Path(cfg["data"]["list"]), Path(cfg["data"]["root"])
    info = stream.scan_list(list_path)
    settings = {**cfg["extract"], "full": True}
    ident = {
        "stage": "label",
        "model_sha256": sha256_file(path),
        "preprocess": store.dumps(pre.as_dict()),
        "list_sha256": info.sha256,
        "list_lines": info.lines,
        "chunk_size": int(settings["chunk_size"]),
        "all_scores": bool(lab["all_scores"]),
    }
    schema = _schema(len(ids), bool(lab["all_scores"]))
    fetch = {"label": CLUSTER, "score": TOP} | ({"scores": SCORES} if lab["all_scores"] else {})
    job = stream.Job(
        "label",
        graph.add_top_probability(model, SCORES, TOP),
        meta["input"],
        fetch,
        schema,
        ident,
        {"labels": False},
        parts="parts-label",
    )
    provenance = {"model_path": str(path), "list_path": str(list_path), "data_root": str(root)}
    dest = stream.outputs(out, shard, ["labels"])["labels"]
    if overwrite:
        dest.unlink(missing_ok=True)
    fast = lab["fast"] and shard.count == 1 and not dest.exists() and _fast_source(out, meta, info, ident, overwrite)
    if fast:
        _label_stored(
            fast,
            out / "classifier.onnx",
            dest,
            schema,
            dict(ident, **provenance, kind="labels", path="fast"),
            settings["device"],
            progress,
        )
        summary = stream.summarize({"labels": dest}, stream.Summary())
        summary.processed = summary.images
    else:
        summary = stream.run(
            job,
            settings,
            list_path,
            root,
            out,
            pre,
            shard=shard,
            overwrite=overwrite,
            progress=progress,
            provenance=dict(provenance, path="merged model"),
        )
    summary.seconds = time.perf_counter() - started
    result = {"summary": summary, "labels": str(dest), "fast": bool(fast), "shard": shard.count > 1}
    if shard.count == 1:
        names = {c["id"]: c["name"] for c in meta["clusters"]}
        counts = write_lists(dest, list_path, names, out / "clusters")
        result["distribution"] = distribution(out / "clusters.h5", counts, names, float(lab["drift"]))
        _write_distribution(out / "distribution.csv", result["distribution"])
        result["files"] = [str(dest), str(out / "clusters"), str(out / "distribution.csv")]
    return result


def _fast_source(out: Path, meta: dict, info: stream.ListInfo, ident: dict, overwrite: bool) -> Path | None:
    """`<out>/full.h5` when it holds this net's activations for this list, else None (logged why)."""
    full, clf = out / "full.h5", out / "classifier.onnx"
    if not full.is_file() or not clf.is_file():
        return None
    a = store.read_attrs(full)
    checks = {
        "net": a.get("model_sha256") == meta.get("net_sha256"),
        "layer": a.get("layer") == meta.get("layer"),
        "preprocessing": a.get("preprocess") == ident["preprocess"],
        "list": a.get("list_sha256") == info.sha256,
        "classifier": sha256_file(clf) == meta.get("classifier_sha256"),
    }
    differ = [k for k, ok in checks.items() if not ok]
    if differ:
        log.info("label: %s was made with another %s; running the merged model", full, " and ".join(differ))
        return None
    log.info("label: fast path, classifying the activations stored in %s", full)
    return full


def _label_stored(
    full: Path, classifier_path: Path, dest: Path, schema: store.Schema, attrs: dict, device: str, progress: bool
) -> None:
    """Classify full.h5's `prefacen` block by block into labels.h5 (with its failures), atomically."""
    from tqdm import tqdm

    head = graph.rename_tensors(onnx.load(classifier_path), {"label": CLUSTER, "probabilities": SCORES})
    head = graph.add_top_probability(head, SCORES, TOP)
    sess = runtime.session(head, device)
    inp = sess.get_inputs()[0].name
    fetch = {"label": CLUSTER, "score": TOP, "scores": SCORES}
    tmp = dest.with_name(dest.name + ".tmp")
    with h5py.File(full, "r") as src, h5py.File(tmp, "w") as f:
        n = len(src["index"])
        ds = {
            k: f.create_dataset(k, (n, *shape), dtype, chunks=(max(1, min(n, BLOCK)), *shape) if n else None)
            for k, (shape, dtype) in schema.items()
        }
        f.create_dataset("index", data=src["index"][:], dtype=np.int64)
        for lo in tqdm(range(0, n, BLOCK), disable=not progress, desc="label (stored activations)", unit="block"):
            got = dict(zip(fetch, sess.run(list(fetch.values()), {inp: src["prefacen"][lo : lo + BLOCK]})))
            for k, d in ds.items():
                d[lo : lo + BLOCK] = got[k]
        src.copy(src["failures"], f, "failures")
        for k, v in attrs.items():
            f.attrs[k] = v
    os.replace(tmp, dest)


# --------------------------------------------------------------------------- lists and distribution


def write_lists(labels: Path, list_path: Path, names: dict[int, str], folder: Path) -> dict[int, int]:
    """`folder/<name>.txt` per cluster with the list's own lines, in order; returns the counts.

    Streams the list and the labels together (both in list order), so memory stays flat;
    written into a fresh folder that replaces the old one at the end, so the lists are never
    half written or mixed with a previous run's.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".clusters-", dir=folder.parent))
    files = {
        k: open(tmp / f"{name}.txt", "w", encoding="utf-8", errors="surrogateescape", newline="\n")
        for k, name in names.items()
    }
    counts = dict.fromkeys(names, 0)
    try:
        with (
            h5py.File(labels, "r") as f,
            open(list_path, encoding="utf-8", errors="surrogateescape", newline="\n") as lines,
        ):
            index, label = f["index"], f["label"]
            line_no, line = -1, ""
            for lo in range(0, len(index), BLOCK):
                for i, k in zip(index[lo : lo + BLOCK].tolist(), label[lo : lo + BLOCK].tolist()):
                    while line_no < i:
                        line, line_no = next(lines), line_no + 1
                    files[k].write(line.rstrip("\r\n") + "\n")
                    counts[k] += 1
    finally:
        for fh in files.values():
            fh.close()
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return counts


def distribution(clusters_h5: Path, counts: dict[int, int], names: dict[int, str], drift: float) -> list[dict]:
    """Each cluster's share of the clustered subset (noise left out, as in training) vs of the labelling."""
    subset = {}
    if clusters_h5.is_file():
        with h5py.File(clusters_h5, "r") as f:
            lab = f["label"][:]
        lab = lab[lab >= 0]
        subset = {k: float(np.mean(lab == k)) if len(lab) else 0.0 for k in names}
    total = max(1, sum(counts.values()))
    rows = []
    for k, name in names.items():
        share = counts[k] / total
        before = subset.get(k)
        ratio = share / before if before else None
        flagged = before is not None and (ratio is None or not 1 / drift <= ratio <= drift)
        rows.append(
            {
                "cluster": k,
                "name": name,
                "subset_share": before,
                "labelled_share": share,
                "difference": None if before is None else share - before,
                "ratio": ratio,
                "images": counts[k],
                "flagged": flagged,
            }
        )
    return rows


def _write_distribution(path: Path, rows: list[dict]) -> None:
    """The rows as CSV (for people) and, beside it, as JSON with their types (`.json`, for the report)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["cluster"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    store.atomic_write(path, buf.getvalue().encode())
    store.atomic_write(path.with_suffix(".json"), json.dumps(rows, indent=1).encode())


def summary(result: dict) -> str:
    s = result["summary"]
    how = "from the activations in full.h5 (no image decoded)" if result["fast"] else "with the merged model"
    lines = [f"label: {s.line()}, {how}", f"  -> {result['labels']}"]
    if result["shard"]:
        lines.append(
            "  shard done; when every shard is, run `introspect join`, then `introspect label` again for the lists"
        )
        return "\n".join(lines)
    lines.append(f"  {'cluster':<24} {'images':>9} {'subset':>8} {'labelled':>9}")
    for r in result["distribution"]:
        before = "-" if r["subset_share"] is None else f"{r['subset_share']:.2%}"
        flag = "  <- share drifted" if r["flagged"] else ""
        lines.append(f"  {r['name']:<24} {r['images']:>9} {before:>8} {r['labelled_share']:>9.2%}{flag}")
    lines += [f"  -> {f}" for f in result["files"][1:]]
    return "\n".join(lines)
