"""Labelling throughput: the head's cost in the merged model, and `introspect label` vs inference alone.

In one run, on the same synthetic 112 x 112 JPEG faces and SFace:
  (a) bare net: the prepared SFace fetching its embedding, on batches decoded beforehand;
  (b) merged: `merged.onnx` (net + center pixel + classifier) fetching embedding, cluster and
      scores, on the same batches; b/a is the head's cost (target >= 0.95);
  (c) label: `introspect label` with the merged model (decoding threads, parts, labels.h5,
      per-cluster lists), the fast path off;
  (d) ceiling: the label stage's own session on batches decoded beforehand; c/d is what the
      stage's streaming keeps of inference alone (target >= 0.9).
Also printed, not a target: the fast path (`full.h5` exists: the classifier alone on stored
activations) in rows/s. The classifier is fitted on KMeans clusters of the images' own
activations, as `make cluster` would on a real subset.

    .venv/bin/python bench/label.py [--images 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from introspect import config, synth
from introspect.engine import graph, nets, runtime
from introspect.engine.images import Preprocess
from introspect.engine.merged import CLUSTER, CLUSTER_SCORES, TOP, load_merged
from introspect.science import classifier
from introspect.stages import extract, label, merge


def setup(tmp: Path, n: int, batch: int) -> tuple[dict, list[np.ndarray]]:
    """Images, their activations (full.h5), a classifier on 8 KMeans clusters, the merged model."""
    from sklearn.cluster import KMeans

    root, lst = tmp / "faces", tmp / "faces.txt"
    synth.synthesize(n, 0, root, lst, progress=False)
    cfg = config.load(None)
    cfg["data"].update(list=str(lst), root=str(root))
    cfg["model"]["path"] = str(nets.sface(REPO / "models"))
    cfg["extract"].update(out=str(tmp / "run"), batch_size=batch, device="cpu", fraction=1.0)
    extract.run(cfg, progress=False)
    with h5py.File(tmp / "run" / "full.h5") as f:
        X = f["prefacen"][:]
    y = KMeans(8, n_init=4, random_state=0).fit_predict(X)
    est, _ = classifier.fit_validated(X, y, cv=2, Cs=[1.0])
    head = classifier.match_net(classifier.to_onnx(est, X.shape[1]), onnx.load(cfg["model"]["path"]))
    onnx.save(head, tmp / "run" / "classifier.onnx")
    merge.run(cfg)
    pre = Preprocess()
    files = lst.read_text().splitlines()
    blobs = [pre.blob(np.stack([cv2.imread(str(root / p)) for p in files[i : i + batch]])) for i in range(0, n, batch)]
    return cfg, blobs


def infer(model: onnx.ModelProto, fetch: list[str], blobs: list[np.ndarray]) -> float:
    sess = runtime.session(model, "cpu")
    inp = graph.data_input(model).name
    sess.run(fetch, {inp: blobs[0]})  # warm-up, as the stage pays it too
    t = time.perf_counter()
    for b in blobs:
        sess.run(fetch, {inp: b})
    return sum(len(b) for b in blobs) / (time.perf_counter() - t)


def stage(cfg: dict, fast: bool) -> float:
    cfg = {**cfg, "label": {**cfg["label"], "fast": fast}}
    t = time.perf_counter()
    result = label.run(cfg, overwrite=True, progress=False)
    return result.summary.images / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the best of each method counts")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        cfg, blobs = setup(Path(d), args.images, args.batch)
        out = Path(cfg["extract"]["out"])
        net = onnx.load(cfg["model"]["path"])
        emb = graph.embedding_output(net)
        merged, meta = load_merged(out / "merged.onnx")
        stage_model = graph.add_top_probability(merged, CLUSTER_SCORES, TOP)
        a = b = c = dd = fast = 0.0
        for _ in range(args.repeat):
            a = max(a, infer(net, [emb], blobs))
            b = max(b, infer(merged, [emb, CLUSTER, CLUSTER_SCORES], blobs))
            c = max(c, stage(cfg, fast=False))
            dd = max(dd, infer(stage_model, [CLUSTER, TOP], blobs))
            fast = max(fast, stage(cfg, fast=True))
    print(
        f"cores: {len(os.sched_getaffinity(0))}; SFace, batch {args.batch}, {args.images} synthetic "
        "112 x 112 JPEG faces, "
        f"{len(meta['clusters'])} clusters; best of {args.repeat}"
    )
    print(f"bare net {a:8.1f}  merged {b:8.1f} images/s   merged/bare {b / a:5.3f} (target >= 0.95)")
    print(f"label    {c:8.1f}  ceiling {dd:7.1f} images/s   label/ceiling {c / dd:5.3f} (target >= 0.9)")
    print(f"label, fast path from full.h5: {fast:,.0f} images/s ({fast / c:,.0f}x the merged model's pass)")


if __name__ == "__main__":
    main()
