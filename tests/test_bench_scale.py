"""bench/views_scale.py's tiled run folder and bench/scale.py's disk figures, on generated rows."""

from __future__ import annotations

import sys

import h5py
import numpy as np
from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import scale  # noqa: E402
import views_scale  # noqa: E402


def _base(path, n=300):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for k, d in (("prefacen", 64), ("prefacen_mean", 64), ("facen", 16)):
            f[k] = rng.normal(0, 1, (n, d)).astype(np.float32)
        f["index"] = np.arange(n)
        f.attrs["layer"] = "bn1"


def test_the_tiled_run_keeps_the_real_rows_and_the_subset_is_rows_of_full(tmp_path):
    _base(tmp_path / "base.h5")
    views_scale.build(tmp_path / "base.h5", tmp_path / "run", rows=350, full_factor=2, noise=0.5)
    with h5py.File(tmp_path / "base.h5") as b, h5py.File(tmp_path / "run/full.h5") as f:
        with h5py.File(tmp_path / "run/subset.h5") as s:
            assert len(f["index"]) == 700 and np.array_equal(s["index"][:], np.arange(0, 700, 2))
            for k in ("prefacen", "prefacen_mean", "facen"):
                assert np.array_equal(f[k][:300], b[k][:])  # copy 0: the real rows as they are
                assert np.array_equal(s[k][:], f[k][:][::2])
                noise = (f[k][300:600] - b[k][:]).std() / b[k][:].std()
                assert 0.4 < noise < 0.6
            assert s.attrs["kind"] == "subset" and f.attrs["layer"] == "bn1"


def test_disk_figures_halve_in_float16(tmp_path):
    _base(tmp_path / "full.h5", n=4096)
    d = scale.disk(tmp_path / "full.h5", 1_000_000, tmp_path)
    per = d["per_row"]
    assert per["float32"]["prefacen"] == 256 and per["float16"]["prefacen"] == 128  # whole chunks: no padding
    assert d["needed_gb"]["float16"]["center+mean"] * 2 == d["needed_gb"]["float32"]["center+mean"]
    assert per["float32+gzip"]["prefacen"] < 256
