"""bench/gpu.py, the run prepared for a GPU machine, kept working here on the CPU, and its projection."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import scale  # noqa: E402


@pytest.fixture(scope="module")
def figures(sface_model, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu") / "gpu.json"
    cmd = [sys.executable, str(REPO / "bench" / "gpu.py"), "--quick", "--device", "cpu", "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True, timeout=600)
    return json.loads(out.read_text())


def test_gpu_bench_measures_every_part(figures):
    assert figures["device"] == "cpu" and figures["providers"] == ["CPUExecutionProvider"] and figures["images"] == 256
    assert figures["decode"]["images_per_s"] > 0
    assert {(r["batch"], r["binding"]) for r in figures["net"]} == {(32, False), (64, False), (32, True), (64, True)}
    assert all(r["images_per_s"] > 0 and not r["gpu"] for r in figures["net"])
    assert [r["batch"] for r in figures["extract"]] == [32, 64] and all(
        r["images_per_s"] > 0 for r in figures["extract"]
    )
    assert figures["label"]["images_per_s"] > 0 and "tsne" not in figures


def test_projection_splits_extract_and_label_over_eight_machines(figures):
    fits = {"cluster": {"projected_seconds": 36.0}, "classify": {"projected_seconds": 3600.0}}
    g = scale.gpu_projection(figures | {"tsne": {"seconds": 60.0, "points": 300_000, "backend": "cuml"}}, fits)
    rows = {r["stage"]: r for r in g["rows"]}
    assert list(rows) == ["extract", "label", "tsne", "cluster", "classify"]
    best = max(r["images_per_s"] for r in figures["extract"])
    assert rows["extract"]["hours_1"] == pytest.approx(17_100_000 / best / 3600)
    assert rows["extract"]["hours_8"] == pytest.approx(rows["extract"]["hours_1"] / 8)
    assert rows["tsne"]["hours_1"] == pytest.approx(60.0 * 342_000 / 300_000 / 3600) == rows["tsne"]["hours_8"]
    assert rows["classify"]["hours_8"] == 1.0 and "no GPU path" in rows["classify"]["measured"]
