"""The cluster stage at the reference's scale, with every default view: wall time, peak memory, breakdown.

What it builds (one run folder per size, under --work): `full.h5` and `subset.h5` with
`prefacen`, `prefacen_mean`, `facen` and `index`, made of REAL SFace rows (a base extraction: by
default the demo run's full.h5, 10,000 synthetic faces through models/sface.onnx) tiled to the
size wanted. Copy 0 is the base rows as they are; every further copy adds independent Gaussian
noise of `--noise` (0.5) times each channel's standard deviation to each of the three datasets.
Why 0.5: a copy must not be set aside as "the same photo" by the identity-removed view's copy
rule (`identity.COPY_SHARE`: closer than 0.25 of the median distance between random rows in
z-scored activations; 0.5 sd per channel puts a copy at ~0.36 of it), so every step of that view
runs as on real data, the noisy copies playing a person's other photos (embedding cosine ~0.95).
`full.h5` holds `--full-factor` (1) times the subset's rows and the subset is every
`--full-factor`-th row of it, so the identity search looks among at least as many rows as it queries.

How it measures: `introspect cluster` with the defaults (every default view) runs in its own
process; wall time is that process's, peak memory its `ru_maxrss` (os.wait4: that child only, the
builder runs in another child so its memory is not counted). The breakdown is the stage's own
`metrics.json` `seconds` (PCA, t-SNE, the center view's partition and head, the further views) and
each view's `steps` (identity search, partition by the stability rule, head, facets, identity flags).

    .venv/bin/python bench/views_scale.py --rows 342000            # the reference's subset: ~10 min
    .venv/bin/python bench/views_scale.py --rows 20000,50000,100000 # where each view's cost grows

Each size's summary is also written to `<work>/views_scale.json`. The run folders are kept (about
13 KB a row: subset + full) under --work (default: a temporary folder, removed).
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

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("prefacen", "prefacen_mean", "facen")


def build(base: Path, out: Path, rows: int, full_factor: int, noise: float, seed: int = 0) -> None:
    """full.h5 (rows x full_factor) and subset.h5 (every full_factor-th row) of tiled real rows (module doc)."""
    import h5py
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    n_full = rows * full_factor
    with h5py.File(base, "r") as f:
        src = {k: f[k][:] for k in DATASETS}
        attrs = dict(f.attrs)
    n_base = len(src["prefacen"])
    sd = {k: v.std(axis=0).astype(np.float32) for k, v in src.items()}
    rng = np.random.default_rng(seed)
    subset_rows = np.arange(0, n_full, full_factor)
    files = {"full": h5py.File(out / "full.h5", "w"), "subset": h5py.File(out / "subset.h5", "w")}
    try:
        for kind, f in files.items():
            n = n_full if kind == "full" else len(subset_rows)
            for k, v in src.items():
                f.create_dataset(
                    k, (n, v.shape[1]), np.float32, chunks=(min(n, max(1, (1 << 20) // (4 * v.shape[1]))), v.shape[1])
                )
            f["index"] = np.arange(n_full, dtype=np.int64) if kind == "full" else subset_rows.astype(np.int64)
            for k in ("index", "path", "reason"):
                f.create_dataset(f"failures/{k}", (0,), np.int64 if k == "index" else h5py.string_dtype())
            f.attrs.update(attrs)
            f.attrs.update(kind=kind, fraction=1.0 / full_factor, list_lines=n_full)
        for a in range(0, n_full, n_base):  # one copy of the base at a time: memory stays at the base's size
            b = min(n_full, a + n_base)
            copy = a // n_base
            at = subset_rows[(subset_rows >= a) & (subset_rows < b)]
            for k, v in src.items():
                block = v[: b - a]
                if copy:
                    block = block + rng.normal(0.0, noise, block.shape).astype(np.float32) * sd[k]
                files["full"][k][a:b] = block
                files["subset"][k][np.searchsorted(subset_rows, at[0]) : np.searchsorted(subset_rows, at[-1]) + 1] = (
                    block[at - a]
                )
    finally:
        for f in files.values():
            f.close()


def run_cluster(run: Path, extra: list[str]) -> dict:
    """`introspect cluster` on the run folder in its own process: wall seconds, peak RSS (MB), its breakdown."""
    pipeline = run / "pipeline.toml"
    pipeline.write_text(f'[model]\npath = "{REPO / "models" / "sface.onnx"}"\n[extract]\nout = "{run}"\n')
    cmd = [sys.executable, "-m", "introspect.cli", "cluster", "--pipeline", str(pipeline), *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = (run / "cluster.log").open("w")
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    log.close()
    if status != 0:
        sys.exit(
            f"cluster failed (status {status}); see {run / 'cluster.log'}:\n{(run / 'cluster.log').read_text()[-3000:]}"
        )
    m = json.loads((run / "metrics.json").read_text())
    views = {
        v["name"]: {
            "skipped": v.get("skipped"),
            "seconds": v.get("seconds"),
            "steps": v.get("steps", {}),
            "k": (v.get("discovery") or {}).get("k"),
            "rule_rows": (v.get("discovery") or {}).get("rule_rows"),
            "searched": (v.get("identity_removed") or {}).get("rows_searched"),
        }
        for v in m["views"]
    }
    cpu = usage.ru_utime + usage.ru_stime  # on a shared machine, what the stage itself used
    return {"wall_s": wall, "cpu_s": cpu, "peak_mb": usage.ru_maxrss / 1024, "seconds": m["seconds"], "views": views}


def _load() -> str:
    return open("/proc/loadavg").read().split()[0] if Path("/proc/loadavg").exists() else "?"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--build":  # the builder's own process (its memory is not the stage's)
        build(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="342000", help="subset rows, comma-separated sizes (default 342000)")
    ap.add_argument("--base", type=Path, default=REPO / "runs" / "demo" / "full.h5", help="real extracted rows to tile")
    ap.add_argument("--full-factor", type=int, default=1, help="full.h5 rows per subset row (>= 1)")
    ap.add_argument("--noise", type=float, default=0.5, help="per-copy noise, in each channel's standard deviations")
    ap.add_argument("--work", type=Path, help="keep the run folders here (default: a temporary folder)")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE passed to `introspect cluster --set`")
    ap.add_argument("--wall", type=float, default=600.0, help="target wall seconds (printed against)")
    ap.add_argument("--peak", type=float, default=8192.0, help="target peak MB (printed against)")
    args = ap.parse_args()
    if not args.base.is_file():
        sys.exit(f"{args.base} does not exist: run the demo's extract first (make demo) or pass --base full.h5")
    extra = [a for s in args.set for a in ("--set", s)]
    with tempfile.TemporaryDirectory(dir=args.work.parent if args.work else None) as d:
        work = args.work or Path(d)
        results = []
        for rows in [int(r) for r in args.rows.split(",")]:
            run = work / f"rows{rows}"
            if not (run / "subset.h5").is_file() or not (run / "full.h5").is_file():
                t = time.perf_counter()
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--build",
                        str(args.base),
                        str(run),
                        str(rows),
                        str(args.full_factor),
                        str(args.noise),
                    ],
                    check=True,
                )
                took = time.perf_counter() - t
                print(
                    f"built {run} ({rows:,} rows, {rows * args.full_factor:,} in full.h5) in {took:.0f} s", flush=True
                )
            load0 = _load()
            r = {
                "rows": rows,
                "full_rows": rows * args.full_factor,
                "load_before": load0,
                **run_cluster(run, extra),
                "load_after": _load(),
            }
            r["cores"] = len(os.sched_getaffinity(0))
            results.append(r)
            _print(r, args.wall, args.peak)
        if args.work:
            (work / "views_scale.json").write_text(json.dumps(results, indent=1))


def _print(r: dict, wall: float, peak: float) -> None:
    ok = lambda v, lim: "within" if v <= lim else "OVER"  # noqa: E731
    print(
        f"\n== cluster stage, {r['rows']:,} rows (full.h5 {r['full_rows']:,}), every default view, {r['cores']} cores, "
        f"load {r['load_before']} -> {r['load_after']}\n"
        f"   wall {r['wall_s']:.0f} s ({ok(r['wall_s'], wall)} {wall:.0f} s), "
        f"peak {r['peak_mb']:.0f} MB ({ok(r['peak_mb'], peak)} {peak:.0f} MB); CPU time {r['cpu_s']:.0f} s"
    )
    print("   stage: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["seconds"].items()))
    for name, v in r["views"].items():
        if v["skipped"]:
            print(f"   view {name}: SKIPPED: {v['skipped']}")
            continue
        steps = ", ".join(f"{k} {s:.1f}" for k, s in v["steps"].items())
        rule = f", rule on {v['rule_rows']:,} rows" if v.get("rule_rows") else ""
        searched = f", {v['searched']:,} rows searched" if v.get("searched") else ""
        print(f"   view {name}: {v['seconds']:.1f} s (k = {v['k']}{rule}{searched}): {steps}")


if __name__ == "__main__":
    main()
