"""`extract.dtype = "float16"`: half the bytes on disk, the same labels, no mixing with float32 chunks."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from conftest import kmeans_run, make_config, write_images

from introspect.engine import store
from introspect.errors import UserError
from introspect.stages import extract, label, merge, settings

ROWS = 2000  # enough that 99.9 % agreement means at most 2 rows differ


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model):
    """The same 2,000 images extracted in float32 (clustered, merged, labelled) and in float16 (labelled with
    the float32 run's merged model, by the fast path: its stored float16 activations)."""
    tmp = tmp_path_factory.mktemp("dtype")
    root = tmp / "data"
    lst = tmp / "list.txt"
    lst.write_text("".join(p + "\n" for p in write_images(root, ROWS, seed=5, size=32)))
    runs = {}
    for dtype in ("float32", "float16"):
        cfg = make_config(lst, root, tiny_model, tmp / dtype, dtype=dtype, chunk_size=512, batch_size=256)
        if dtype == "float32":
            kmeans_run(cfg, k=4)
            merge.run(cfg)
        else:
            extract.run(cfg, progress=False)
            for name in ("clusters.h5", "classifier.onnx", "merged.onnx"):
                shutil.copy(tmp / "float32" / name, tmp / dtype / name)
        result = label.run(cfg, progress=False)
        assert result.fast  # the stored activations were classified, float16 ones included
        with h5py.File(result.labels) as f:
            runs[dtype] = (cfg, f["label"][:], f["score"][:])
    return runs


def test_float16_labels_agree_with_float32(two_runs):
    (_, a, sa), (_, b, sb) = two_runs["float32"], two_runs["float16"]
    assert len(a) == ROWS and len(np.unique(a)) > 1
    assert np.mean(a == b) >= 0.999
    assert np.max(np.abs(sa - sb)) < 0.05


def test_float16_halves_the_stored_activations(two_runs):
    sizes = {}
    for dtype, (cfg, _, _) in two_runs.items():
        with h5py.File(f"{cfg['extract']['out']}/full.h5") as f:
            ds = [f[k] for k in ("prefacen", "prefacen_mean", "facen")]
            assert all(d.dtype == np.dtype(dtype) and len(d) == ROWS for d in ds)
            sizes[dtype] = sum(d.nbytes for d in ds)
            # on disk: the rows plus at most the unfilled end of each dataset's last chunk
            padding = sum(d.chunks[0] * d.dtype.itemsize * d.shape[1] for d in ds)
            assert sizes[dtype] <= sum(d.id.get_storage_size() for d in ds) <= sizes[dtype] + padding
            assert f.attrs.get("dtype", "float32") == dtype  # float32 unrecorded, as before the key existed
    assert sizes["float16"] * 2 == sizes["float32"]


def test_readers_get_float32(two_runs):
    out = two_runs["float16"][0]["extract"]["out"]
    X, index = store.load_activations(f"{out}/subset.h5")
    E = store.rows_at(f"{out}/subset.h5", index, "facen")
    assert X.dtype == np.float32 and E.dtype == np.float32 and np.isfinite(X).all()


def test_a_resume_in_another_dtype_is_refused(two_runs):
    cfg = two_runs["float32"][0]
    other = {**cfg, "extract": {**cfg["extract"], "dtype": "float16"}}
    with pytest.raises(UserError, match="dtype"):
        extract.run(other, progress=False)


def test_a_float32_run_made_before_the_key_existed_resumes(two_runs, tmp_path):
    """Runs made before extract.dtype have no `dtype` attribute: float32 ones still resume (nothing to redo)."""
    import shutil

    cfg = two_runs["float32"][0]
    out = tmp_path / "old"
    shutil.copytree(cfg["extract"]["out"], out)
    s = extract.run({**cfg, "extract": {**cfg["extract"], "out": str(out)}}, progress=False)
    assert s.processed == 0


def test_an_unknown_dtype_is_one_line(two_runs):
    cfg = two_runs["float32"][0]
    with pytest.raises(UserError, match="extract.dtype"):
        settings.check({**cfg, "extract": {**cfg["extract"], "dtype": "float64"}})


def test_the_report_states_the_disk_for_the_list():
    from introspect.stages.report import _cost_model

    source = {"kind": "full", "rows": 1000, "bytes": 5_000_000, "list_lines": 17_100_000, "dtype": "float32"}
    html = _cost_model(None, source)
    assert "5,000 bytes a row" in html and "85.5 GB" in html and "float16" in html
    scale = {"disk": {"rows_measured": 8192, "rows": 100, "per_row": {"float16": {"prefacen": 2048.0, "facen": 256.0}}}}
    scale["disk"]["needed_gb"] = {"float16": {"center": 2304 * 100 / 1e9}}
    assert "2,048 B" in _cost_model(scale, {})
