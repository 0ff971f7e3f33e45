"""The GPU path, measured on one machine, in one go: what bench/scale.py needs to project 1 and 8 GPUs.

On the same synthetic 112 x 112 JPEG faces and SFace, in one run:
  decode    the decoding side alone: `workers` threads reading and decoding into uint8 batches
            (the CPU work a GPU run cannot hand over), images/s;
  net       the net alone (normalization in the graph) on batches decoded beforehand, per batch
            size, with and without I/O binding, images/s;
  extract   `introspect extract` end to end (full + 2 % subset written), per batch size, images/s,
            with the GPU's utilisation sampled by nvidia-smi while it runs; then at the best batch
            with `--engine ray` on a local Ray cluster (decoding in processes, free of the GIL
            the local engine's threads share), where Ray imports;
  label     `introspect label` end to end with a merged model (the fast path off), images/s;
  tsne      cuML's t-SNE of a `--tsne-points` subset (real SFace activations tiled with a little
            noise), seconds; skipped where cuML does not import.
Written to `--out` (JSON); `bench/scale.py --gpu FILE` turns it into the projections. With
`--device cpu --quick` it runs anywhere, which is how tests/test_bench.py keeps it working.

How to install the `gpu` extra on your GPU host, an offline one included: bench/README.md.

    python bench/gpu.py [--images 50000] [--batches 256 512 1024] [--tsne-points 300000] [--out runs/gpu.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import scale  # noqa: E402  (bench/scale.py: the same tiled activations)

from introspect import config, synth
from introspect.engine import nets, runtime
from introspect.engine.extractor import Extractor
from introspect.engine.images import Preprocess, read_batch
from introspect.errors import UserError
from introspect.science import classifier, tsne
from introspect.stages import extract, label, merge


class GPUSampler:
    """nvidia-smi's utilisation and memory every 200 ms while a stage runs; nothing where there is no nvidia-smi."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.proc = None
        if shutil.which("nvidia-smi"):
            cmd = [
                "nvidia-smi",
                "--query-gpu=utilization.gpu,memory.used",
                "--format=csv,noheader,nounits",
                "-lms",
                "200",
            ]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                util, mem = (float(x) for x in line.split(",")[:2])
            except ValueError:
                continue
            self.samples.append((util, mem))

    def stop(self) -> dict:
        if self.proc is None:
            return {}
        self.proc.terminate()
        self.proc.wait()
        if not self.samples:
            return {}
        util = np.array([s[0] for s in self.samples])
        return {
            "gpu_util_mean": float(util.mean()),
            "gpu_util_p90": float(np.percentile(util, 90)),
            "gpu_mem_max_mb": float(max(s[1] for s in self.samples)),
        }


def gpu_name() -> str:
    if not shutil.which("nvidia-smi"):
        return ""
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""


def measured(fn, images: int, batch: int) -> dict:
    """One stage's run: its time, images/s and the GPU's utilisation meanwhile."""
    sampler = GPUSampler()
    t = time.perf_counter()
    try:
        fn()
    finally:
        seconds = time.perf_counter() - t
        util = sampler.stop()
    return {"batch": batch, "seconds": seconds, "images_per_s": images / seconds, **util}


def decode_rate(paths: list[str], pre: Preprocess, batch: int, workers: int) -> float:
    """Images/s of `workers` threads decoding batches into reused uint8 buffers, as the stream does."""
    buffers = [np.empty((batch, *pre.size, 3), np.uint8) for _ in range(workers)]
    batches = [paths[i : i + batch] for i in range(0, len(paths), batch)]
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(
            pool.map(lambda ib: read_batch(ib[1], pre.size, buffers[ib[0] % workers][: len(ib[1])]), enumerate(batches))
        )
    return len(paths) / (time.perf_counter() - t)


def net_rates(
    ex: Extractor, paths: list[str], pre: Preprocess, batches: list[int], device: str, seconds: float = 3.0
) -> list[dict]:
    """The net alone on decoded batches, per batch size, with and without I/O binding."""
    fed = pre.in_graph(ex.model, ex.input)
    name = fed.graph.input[0].name
    images, ok, _ = read_batch(paths[: max(batches)], pre.size)
    rows = []
    for binding in (False, True):
        runner = runtime.Runner(fed, [ex.center, ex.embedding], device, binding=binding)
        for b in batches:
            x = np.resize(images, (b, *images.shape[1:]))  # the decoded images, repeated to fill the batch
            runner.run({name: x})  # warm-up: kernels chosen for this shape
            n, t = 0, time.perf_counter()
            while time.perf_counter() - t < seconds:
                runner.run({name: x})
                n += b
            rows.append(
                {"batch": b, "binding": binding, "images_per_s": n / (time.perf_counter() - t), "gpu": runner.gpu}
            )
    return rows


def head_for(cfg: dict, out: Path, k: int = 8) -> None:
    """A classifier of k equal groups of the activations (along their first principal axis), grafted
    into the net: label's input. The groups mean nothing; label's cost does not depend on them."""
    import h5py

    with h5py.File(out / "full.h5") as f:
        X = f["prefacen"][:]
    axis = tsne.pca(X, 1)[0][:, 0]
    y = np.searchsorted(np.quantile(axis, np.linspace(0, 1, k + 1)[1:-1]), axis)
    logging.getLogger("introspect.science.classifier").setLevel(logging.ERROR)  # meaningless groups: no held-out advice
    est, _ = classifier.fit_validated(X, y, cv=2, Cs=[1.0])
    head = classifier.match_net(classifier.to_onnx(est, X.shape[1]), onnx.load(cfg["model"]["path"]))
    onnx.save(head, out / "classifier.onnx")
    merge.run(cfg, sample=64)


def ray_extract(cfg: dict, images: int) -> dict:
    try:
        import ray  # noqa: F401
    except ModuleNotFoundError:
        return {"skipped": "Ray does not import here"}
    ray_cfg = dict(cfg, extract=dict(cfg["extract"], engine="ray"))
    return measured(lambda: extract.run(ray_cfg, overwrite=True, progress=False), images, cfg["extract"]["batch_size"])


def tsne_seconds(full: Path, n: int) -> dict:
    import h5py

    if "cuml" not in tsne.available_backends():
        return {"skipped": "cuML does not import here"}
    with h5py.File(full) as f:
        Z, _ = tsne.pca(scale.tile(f["prefacen"][:], n), 50)
    t = time.perf_counter()
    Y, backend = tsne.embed(Z, tsne.TSNEParams(perplexity=30, seed=0), "cuml")
    return {"points": n, "seconds": time.perf_counter() - t, "backend": backend, "finite": bool(np.isfinite(Y).all())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--batches", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--tsne-points", type=int, default=300_000, help="0 skips the t-SNE")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run")
    ap.add_argument("--workers", type=int, default=0, help="decoding threads (0: one per core)")
    ap.add_argument("--no-ray", dest="ray", action="store_false", help="skip extract on a local Ray cluster")
    ap.add_argument("--quick", action="store_true", help="256 images, batches 32 and 64, no Ray, no t-SNE")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "gpu.json")
    ap.add_argument("--tmp", type=Path, default=None, help="where the faces and runs go (default: a temporary folder)")
    args = ap.parse_args()
    if args.quick:
        args.images, args.batches, args.tsne_points, args.ray = 256, [32, 64], 0, False
    workers = args.workers or len(os.sched_getaffinity(0))
    providers = runtime.providers(args.device)  # no CUDA provider: one line now, not after the faces are made
    pre = Preprocess()
    with tempfile.TemporaryDirectory(dir=args.tmp) as d:
        tmp = Path(d)
        t = time.perf_counter()
        synth.synthesize(args.images, 0, tmp / "faces", tmp / "faces.txt", workers=workers, progress=False)
        print(f"{args.images} faces in {time.perf_counter() - t:.1f} s", flush=True)
        cfg = config.load(None)
        cfg["data"].update(list=str(tmp / "faces.txt"), root=str(tmp / "faces"))
        cfg["model"]["path"] = str(nets.sface(REPO / "models"))
        cfg["extract"].update(out=str(tmp / "run"), device=args.device, workers=workers)
        paths = [str(tmp / "faces" / p) for p in (tmp / "faces.txt").read_text().splitlines()]
        ex = Extractor.build(onnx.load(cfg["model"]["path"]), "auto", "auto", pre)
        result = {
            "gpu": gpu_name(),
            "device": args.device,
            "cores": workers,
            "images": args.images,
            "providers": providers,
        }
        result["decode"] = {"workers": workers, "images_per_s": decode_rate(paths, pre, max(args.batches), workers)}
        print(f"decode   {workers} threads: {result['decode']['images_per_s']:10.0f} images/s", flush=True)
        result["net"] = net_rates(ex, paths, pre, args.batches, args.device, 0.5 if args.quick else 3.0)
        for r in result["net"]:
            print(
                f"net      batch {r['batch']:5d} binding {r['binding']!s:5}: {r['images_per_s']:10.0f} images/s",
                flush=True,
            )
        result["extract"] = []
        for b in args.batches:
            cfg["extract"]["batch_size"] = b
            result["extract"].append(measured(lambda: extract.run(cfg, overwrite=True, progress=False), args.images, b))
            print(f"extract  batch {b:5d}: {result['extract'][-1]}", flush=True)
        best = max(result["extract"], key=lambda r: r["images_per_s"])
        cfg["extract"]["batch_size"] = best["batch"]
        if args.ray:
            result["extract_ray"] = ray_extract(cfg, args.images)
            print(f"extract  ray, batch {best['batch']:5d}: {result['extract_ray']}", flush=True)
        head_for(cfg, tmp / "run")
        cfg["label"]["fast"] = False
        result["label"] = measured(lambda: label.run(cfg, overwrite=True, progress=False), args.images, best["batch"])
        print(f"label    batch {best['batch']:5d}: {result['label']}", flush=True)
        if args.tsne_points:
            result["tsne"] = tsne_seconds(tmp / "run" / "full.h5", args.tsne_points)
            print(f"tsne     {result['tsne']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # no CUDA provider, no model, ...: one line
        sys.exit(f"gpu.py: {e}")
