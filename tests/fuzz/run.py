"""`make fuzz`: kill -9 every stage at every file write, rename and delete, rerun, compare with an uninterrupted run.

For each stage of a small pipeline (the tiny net, generated images with a few unreadable ones):
count the stage's file-system events (`killer.py 0`), then for every k: restore the folder as it
was before the stage, run the stage killed at its k-th event, run it again normally, and compare
every result with the uninterrupted run's (HDF5 datasets, ONNX bytes, JSON/CSV/text files;
timings excepted). Prints a line per stage: kill points tried, reruns that succeeded, results equal.

    .venv/bin/python tests/fuzz/run.py [--stages extract,cluster,merge,label,report] [--every 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from conftest import write_images  # noqa: E402

from introspect.engine import nets  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
IGNORED = {"timings.json", ".lock"}


def introspect(argv: list[str], kill_at: int = 0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(HERE / "killer.py"), str(kill_at), *argv]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)


def digest(folder: Path) -> dict[str, str]:
    """What each result holds, by relative path: HDF5 by dataset contents, other files by bytes."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_dir() or p.name in IGNORED or "report" in p.parts:
            continue
        if p.suffix == ".h5":
            out[rel] = _h5_digest(p)
        elif p.suffix == ".json":  # what was measured, not how long it took
            out[rel] = hashlib.sha256(
                json.dumps(_timeless(json.loads(p.read_text())), sort_keys=True).encode()
            ).hexdigest()
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _timeless(data):
    if isinstance(data, dict):
        return {k: _timeless(v) for k, v in data.items() if k != "seconds"}
    if isinstance(data, list):
        return [_timeless(v) for v in data]
    return data


def _h5_digest(path: Path) -> str:
    h = hashlib.sha256()

    def add(name: str, item) -> None:
        if isinstance(item, h5py.Dataset):
            v = np.asarray(item[()])
            data = "\0".join(map(str, v.ravel().tolist())).encode() if v.dtype.kind in "OSU" else v.tobytes()
            h.update(name.encode() + data)

    with h5py.File(path) as f:
        f.visititems(add)
    return h.hexdigest()


def setup(tmp: Path) -> tuple[list[str], Path]:
    root = tmp / "data"
    rel = write_images(root, 90, seed=1)
    (root / "empty.jpg").write_bytes(b"")
    lst = tmp / "list.txt"
    lst.write_text("".join(p + "\n" for p in rel[:40] + ["empty.jpg", "missing.jpg"] + rel[40:]))
    model = tmp / "tiny.onnx"
    import onnx

    onnx.save(nets.tiny_resnet(seed=0), model)
    common = ["-q", "--out", str(tmp / "run"), "--list", str(lst), "--root", str(root)]
    return common, model


def stage_args(stage: str, common: list[str], model: Path) -> list[str]:
    net = ["--model", str(model)]
    if stage == "extract":
        return ["extract", *common, *net, "--batch-size", "8", "--chunk-size", "16", "--fraction", "0.5"]
    if stage == "cluster":
        return [
            "cluster",
            common[0],
            *common[1:3],
            *net,
            "--perplexity",
            "10",
            "--n-iter",
            "300",
            "--eps",
            "0.4",
            "--min-samples",
            "3",
            "--set",
            "cluster.subsample=1.0",
            "--set",
            "classifier.cv=2",
            "--set",
            "tsne.pca=10",
            "--backend",
            "opentsne",
        ]
    if stage == "merge":
        return ["merge", *common, *net]
    if stage == "label":
        return ["label", *common, "--batch-size", "8", "--chunk-size", "16", "--no-fast"]
    return ["report", *common]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default="extract,cluster,merge,label,report")
    ap.add_argument("--every", type=int, default=1, help="try every n-th kill point (1: all)")
    args = ap.parse_args()
    failed = 0
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        common, model = setup(tmp)
        run = tmp / "run"
        for stage in ["extract", "cluster", "merge", "label", "report"]:
            argv = stage_args(stage, common, model)
            before = tmp / f"before-{stage}"
            shutil.copytree(run, before) if run.exists() else before.mkdir()
            r = introspect(argv)
            if r.returncode != 0:
                sys.exit(f"{stage}: the uninterrupted run failed: {r.stderr.strip()}")
            events = int(r.stderr.strip().splitlines()[-1].split()[-1])
            reference = digest(run)
            if stage not in args.stages.split(","):
                continue
            tried = rerun_ok = equal = 0
            for k in range(1, events + 1, args.every):
                shutil.rmtree(run)
                shutil.copytree(before, run)
                killed = introspect(argv, kill_at=k)
                if killed.returncode != -9:
                    continue  # this run made fewer events (a resumed step skipped): no kill at k
                tried += 1
                again = introspect(argv)
                ok = again.returncode == 0 and "Traceback" not in again.stderr
                rerun_ok += ok
                same = ok and digest(run) == reference
                equal += same
                if not same:
                    failed += 1
                    print(f"  {stage}: kill at event {k}: rerun rc {again.returncode}: {again.stderr.strip()[-300:]}")
            shutil.rmtree(run)
            shutil.copytree(before, run)
            introspect(argv)  # leave the stage's results for the next stage
            print(
                f"{stage:8} {events:4} events, {tried:4} kills, {rerun_ok:4} reruns succeeded, {equal:4} equal results"
            )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
