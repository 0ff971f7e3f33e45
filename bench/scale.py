"""Cost model: each stage's time and peak memory at several sizes, how they grow, and the reference's job.

Each measurement runs in its own process (peak RSS = that process's high-water mark):
  extract   SFace over N synthetic JPEG faces (full + 2 % subset)          N images
  label     the merged model over the same faces (the fast path off)      N images
  tsne      openTSNE (PCA 50, perplexity 30, 750 iterations)               N points
  cluster   KNN-DBSCAN on the map (eps 0.05, min_samples scaled with N)    N points
  classify  fit_validated as the stage runs it: LogisticRegressionCV (5   N rows of 1024
            folds x 10 Cs) on 64 whitened PCA components, 1 BLAS thread
Activations for tsne / classify are real SFace `bn1` center pixels of synthetic faces, tiled
with a little noise beyond the rows extracted here. Growth is read as t ~ N^b (least squares
on logs: 1 linear, 0 flat) and projected with t = c + a N (a start-up cost plus a cost per
item) to the reference's job: 17.1 M images, a 342 k subset. One machine, this one; the
table goes to `--out` (default runs/demo/scale.json), which the report shows. With `--gpu FILE`
(bench/gpu.py's figures from a GPU machine) it adds the job on 1 and on 8 such machines.

    .venv/bin/python bench/scale.py [--quick] [--gpu runs/gpu.json] [--refit]

Disk (`--disk FULL_H5 [--rows N]`): bytes per row of full.h5 measured on real extracted rows,
each way extract can store them (`extract.dtype` float32 / float16) and, for comparison, with
the HDF5 filters h5py ships (gzip level 4, lzf; each with the byte shuffle), per `model.pool`
(["center"]: prefacen + facen; ["center", "mean"]: + prefacen_mean); then the disk full.h5 needs
at N rows (default the reference's 17.1 M). Added to --out's table as "disk" (the report shows it).

    .venv/bin/python bench/scale.py --disk runs/demo/full.h5 [--rows 17100000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REFERENCE = {"extract": 17_100_000, "label": 17_100_000, "tsne": 342_000, "cluster": 342_000, "classify": 342_000}


def _hwm_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def child(stage: str, n: int, tmp: Path) -> dict:
    """One measurement, in this (child) process.

    Peak memory is this process's VmHWM, reset to the current RSS at its start: ru_maxrss
    would carry the parent's peak across fork + exec.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    from introspect import config
    from introspect.science import classifier, clustering, tsne
    from introspect.stages import extract, label

    cfg = config.load(None)
    cfg["data"].update(list=str(tmp / "faces.txt"), root=str(tmp / "faces"))
    cfg["model"]["path"] = str(REPO / "models" / "sface.onnx")
    cfg["extract"].update(out=str(tmp / f"run{n}"), device="cpu")
    if stage in ("extract", "label"):
        lst = tmp / f"faces{n}.txt"
        lst.write_text("".join(tmp.joinpath("faces.txt").read_text().splitlines(keepends=True)[:n]))
        cfg["data"]["list"] = str(lst)
    t = time.perf_counter()
    if stage == "extract":
        extract.run(cfg, overwrite=True, progress=False)
    elif stage == "label":
        cfg["extract"]["out"] = str(tmp / "labelrun")
        cfg["label"]["fast"] = False
        label.run(cfg, overwrite=True, progress=False)
    else:
        X = activations(tmp, n)
        t = time.perf_counter()
        if stage == "tsne":
            Z, _ = tsne.pca(X, 50)
            t = time.perf_counter()
            tsne.embed(Z, tsne.TSNEParams(perplexity=30, n_iter=750, seed=0), "opentsne")
        elif stage == "cluster":
            Y = np.load(tmp / "map.npy")[:n] if (tmp / "map.npy").exists() else X[:, :2]
            t = time.perf_counter()
            clustering.KNNDBSCAN(eps=0.05, min_samples=max(2, round(120 * n / 342_000)), random_state=42).fit(Y)
        else:
            y = np.load(tmp / "clusters.npy")[:n]  # the same 10 clusters at every size: time is about N
            t = time.perf_counter()
            classifier.fit_validated(X, y)
    seconds = time.perf_counter() - t
    return {"stage": stage, "n": n, "seconds": seconds, "peak_mb": _hwm_mb()}


def activations(tmp: Path, n: int) -> np.ndarray:
    import h5py

    with h5py.File(tmp / "base" / "full.h5") as f:
        return tile(f["prefacen"][:], n)


def tile(base: np.ndarray, n: int) -> np.ndarray:
    """n rows from the extracted ones, each further copy with a little more noise.

    (Real activations beyond what was extracted.)
    """
    reps = -(-n // len(base))
    rng = np.random.default_rng(0)
    return np.concatenate([base + rng.normal(0, 0.05 * r, base.shape).astype(np.float32) for r in range(reps)])[:n]


def prepare(tmp: Path, faces: int, base_rows: int, map_points: int) -> None:
    """Faces, a base extraction (real activations), a classifier and merged model for label, one map."""
    import h5py
    import onnx

    from introspect import config, synth
    from introspect.engine import nets
    from introspect.science import classifier, clustering, tsne
    from introspect.stages import extract, merge

    synth.synthesize(max(faces, base_rows), 0, tmp / "faces", tmp / "faces.txt", progress=False)
    cfg = config.load(None)
    cfg["data"].update(list=str(tmp / "faces.txt"), root=str(tmp / "faces"))
    cfg["model"]["path"] = str(nets.sface(REPO / "models"))
    lst = tmp / "base.txt"
    lst.write_text("".join(tmp.joinpath("faces.txt").read_text().splitlines(keepends=True)[:base_rows]))
    cfg["data"]["list"] = str(lst)
    cfg["extract"].update(out=str(tmp / "base"), device="cpu")
    extract.run(cfg, progress=False)
    with h5py.File(tmp / "base" / "full.h5") as f:
        X = f["prefacen"][:]
    Y, _ = tsne.embed(tsne.pca(activations(tmp, map_points), 50)[0], tsne.TSNEParams(perplexity=30, seed=0), "opentsne")
    np.save(tmp / "map.npy", Y)
    from sklearn.cluster import KMeans

    np.save(tmp / "clusters.npy", KMeans(10, n_init=2, random_state=0).fit_predict(Y))
    y = clustering.KNNDBSCAN(eps=0.1, min_samples=5).fit_predict(Y[: len(X)])
    est, _ = classifier.fit_validated(X, y, cv=2, Cs=[1.0])
    (tmp / "labelrun").mkdir()
    onnx.save(
        classifier.match_net(classifier.to_onnx(est, X.shape[1]), onnx.load(cfg["model"]["path"])),
        tmp / "labelrun" / "classifier.onnx",
    )
    cfg["extract"]["out"] = str(tmp / "labelrun")
    cfg["data"]["list"] = str(tmp / "faces.txt")
    merge.run(cfg)


def growth(points: list[dict], key: str) -> float:
    """b in value ~ N^b (least squares on logs): 1 is linear, 0 is flat."""
    b, _ = np.polyfit(np.log([p["n"] for p in points]), np.log([max(p[key], 1e-9) for p in points]), 1)
    return float(b)


def affine(points: list[dict], key: str) -> tuple[float, float]:
    """(fixed cost, cost per item) of value = c + a N: the projection's model, since every stage has a
    start-up cost (loading the net, openTSNE's FFT grid) that a power law would stretch."""
    a, c = np.polyfit([p["n"] for p in points], [p[key] for p in points], 1)
    return float(max(c, 0.0)), float(max(a, 0.0))


#: What full.h5 holds per `model.pool`.
POOL_DATASETS = {"center": ("prefacen", "facen"), "center+mean": ("prefacen", "facen", "prefacen_mean")}
#: Storage compared: (extract.dtype, HDF5 filter or None).
STORAGE = [(d, c) for d in ("float32", "float16") for c in (None, "gzip", "lzf")]


def disk(full: Path, rows: int, tmp: Path) -> dict:
    """Bytes per row of each dataset, each storage, measured by writing `full`'s rows as extract's result does
    (same chunking: about 1 MB of rows; filters with the byte shuffle), and the disk needed at `rows` rows."""
    import h5py

    from introspect.engine import store

    out: dict = {"rows_measured": 0, "rows": rows, "per_row": {}, "needed_gb": {}}
    with h5py.File(full) as f:
        n = len(f["prefacen"])
        n = n - n % 4096 if n >= 4096 else n  # whole chunks of every layout: no unfilled last chunk in the figure
        data = {k: f[k][:n] for k in ("prefacen", "prefacen_mean", "facen") if k in f}
    for dtype, filt in STORAGE:
        name = dtype + (f"+{filt}" if filt else "")
        path = tmp / f"{name}.h5"
        with h5py.File(path, "w") as g:
            for k, v in data.items():
                a = v.astype(dtype)
                chunk = max(1, store.CHUNK_BYTES // (a.itemsize * a.shape[1]))
                kw = {"compression": filt, "shuffle": True} if filt else {}
                if filt == "gzip":
                    kw["compression_opts"] = 4
                g.create_dataset(k, data=a, chunks=(min(chunk, len(a)), a.shape[1]), **kw)
        with h5py.File(path) as g:
            per = {k: g[k].id.get_storage_size() / len(g[k]) for k in data}
        out["rows_measured"] = len(next(iter(data.values())))
        out["per_row"][name] = per
        out["needed_gb"][name] = {
            pool: sum(per[k] for k in ks) * rows / 1e9
            for pool, ks in POOL_DATASETS.items()
            if all(k in per for k in ks)
        }
    print(f"\nfull.h5 bytes per row, measured on {out['rows_measured']:,} real rows of {full}; disk at {rows:,} rows")
    print(f"  {'storage':<16}" + "".join(f"{k:>15}" for k in data) + "".join(f"{p:>16}" for p in POOL_DATASETS))
    for name, per in out["per_row"].items():
        gb = out["needed_gb"][name]
        print(
            f"  {name:<16}"
            + "".join(f"{per[k]:>13.0f} B" for k in data)
            + "".join(f"{gb[p]:>13.1f} GB" for p in POOL_DATASETS if p in gb)
        )
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--disk":
        ap = argparse.ArgumentParser()
        ap.add_argument("--disk", type=Path, required=True, help="a full.h5 of real extracted rows")
        ap.add_argument("--rows", type=int, default=REFERENCE["extract"], help="rows to size the disk for")
        ap.add_argument("--out", type=Path, default=REPO / "runs" / "demo" / "scale.json")
        args = ap.parse_args()
        with tempfile.TemporaryDirectory() as d:
            got = disk(args.disk, args.rows, Path(d))
        table = json.loads(args.out.read_text()) if args.out.is_file() else {}
        table["disk"] = got
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(table, indent=1))
        print(f"-> {args.out}")
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "demo" / "scale.json")
    ap.add_argument("--refit", action="store_true", help="recompute the fits of the rows already in --out")
    ap.add_argument("--gpu", type=Path, help="bench/gpu.py's figures: add projections for 1 and 8 GPUs")
    args = ap.parse_args()
    gpu = json.loads(args.gpu.read_text()) if args.gpu else None
    if args.refit:
        old = json.loads(args.out.read_text())
        report(old["rows"], old["cores"], args.out, gpu)
        return
    sizes = {
        "extract": [500, 1000, 2000],
        "label": [500, 1000, 2000],
        "tsne": [5000, 10000, 20000],
        "cluster": [5000, 10000, 20000],
        "classify": [2500, 5000, 10000],
    }
    if args.quick:
        sizes = {k: [v[0] // 5, v[0] // 2, v[0]] for k, v in sizes.items()}
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        prepare(
            tmp,
            max(sizes["extract"]),
            2000 if not args.quick else 300,
            max(sizes["tsne"] + sizes["cluster"] + sizes["classify"]),
        )
        for stage, ns in sizes.items():
            for n in ns:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", stage, str(n), str(tmp)],
                    capture_output=True,
                    text=True,
                    check=False,
                    cwd=REPO,
                )
                if out.returncode != 0:
                    sys.exit(f"{stage} {n} failed:\n{out.stderr[-2000:]}")
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(
                    f"  {stage:<9} {n:>7}  {rows[-1]['seconds']:8.2f} s  peak {rows[-1]['peak_mb']:7.0f} MB", flush=True
                )
    report(rows, len(os.sched_getaffinity(0)), args.out, gpu)


def gpu_projection(gpu: dict, fits: dict) -> dict:
    """The reference's job on 1 and on 8 machines like the measured one (each with its GPU and cores).

    Extract and label split by shards with nothing shared, so 8 machines take an eighth (plus
    `introspect join`, one sequential copy, not measured here); t-SNE runs on one GPU and is
    scaled linearly from the measured size; clustering and the classifier have no GPU path and
    keep this machine's CPU projection.
    """
    rows = []
    for stage in ("extract", "label"):
        entry = gpu.get(stage)
        best = max(entry, key=lambda r: r["images_per_s"]) if isinstance(entry, list) else entry
        if best:
            hours = REFERENCE[stage] / best["images_per_s"] / 3600
            rows.append(
                {
                    "stage": stage,
                    "measured": f"{best['images_per_s']:,.0f} images/s (batch {best['batch']})",
                    "hours_1": hours,
                    "hours_8": hours / 8,
                }
            )
    t = gpu.get("tsne") or {}
    if "seconds" in t:
        hours = t["seconds"] * REFERENCE["tsne"] / t["points"] / 3600
        rows.append(
            {
                "stage": "tsne",
                "measured": f"{t['seconds']:.0f} s for {t['points']:,} points ({t['backend']})",
                "hours_1": hours,
                "hours_8": hours,
            }
        )
    for stage in ("cluster", "classify"):
        if stage in fits:
            hours = fits[stage]["projected_seconds"] / 3600
            rows.append({"stage": stage, "measured": "CPU (no GPU path)", "hours_1": hours, "hours_8": hours})
    return {"gpu": gpu.get("gpu") or gpu.get("device", ""), "cores": gpu.get("cores"), "rows": rows}


def report(rows: list[dict], cores: int, out: Path, gpu: dict | None = None) -> None:
    """Growth, fits and projections of the measured rows; printed and written to `out`."""
    table = {"cores": cores, "rows": rows, "fits": {}}
    sizes = dict.fromkeys(r["stage"] for r in rows)
    print(
        f"\ncores: {table['cores']}; growth N^b, projection c + a N to the reference's job "
        "(17.1 M images, 342 k subset)"
    )
    for stage in sizes:
        pts = [r for r in rows if r["stage"] == stage]
        b, mb = growth(pts, "seconds"), growth(pts, "peak_mb")
        (c, a), (mc, ma) = affine(pts, "seconds"), affine(pts, "peak_mb")
        N = REFERENCE[stage]
        proj = c + a * N
        # flat memory (b < 0.1): bounded, so the most measured; a line through noise would not be
        mem = max(p["peak_mb"] for p in pts) if mb < 0.1 else mc + ma * N
        table["fits"][stage] = {
            "b": b,
            "fixed_seconds": c,
            "seconds_per_item": a,
            "reference_n": N,
            "projected_seconds": proj,
            "memory_b": mb,
            "projected_peak_mb": mem,
        }
        print(
            f"  {stage:<9} time ~ N^{b:.2f} ({c:.1f} s + {a * 1000:.2f} ms/item), memory ~ N^{mb:.2f}   "
            f"at {N:>10,}: {proj / 3600:8.2f} h, peak {mem:8.0f} MB"
        )
    if gpu:
        table["gpu"] = gpu_projection(gpu, table["fits"])
        print(f"\non {table['gpu']['gpu']} with {table['gpu']['cores']} cores (bench/gpu.py), to the reference's job:")
        for r in table["gpu"]["rows"]:
            print(f"  {r['stage']:<9} {r['measured']:<40} 1 GPU {r['hours_1']:8.2f} h   8 GPUs {r['hours_8']:8.2f} h")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, indent=1))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
