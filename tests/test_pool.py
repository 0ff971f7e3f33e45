"""`model.pool`: extract keeps the layer's spatial mean (`prefacen_mean`) beside its centre pixel, when asked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import extract_interrupted, make_config, write_images

from introspect import cli, config
from introspect.engine import store, stream
from introspect.engine.extractor import Extractor, check_pool
from introspect.engine.images import Preprocess
from introspect.errors import UserError
from introspect.stages import extract, settings

SEED = 2463426724


def layer_maps(model_path: Path, layer: str, paths: list[Path]) -> np.ndarray:
    """The whole N x C x H x W feature map by plain onnxruntime + OpenCV (no introspect code)."""
    model = onnx.load(model_path)
    model.graph.output.append(onnx.helper.make_tensor_value_info(layer, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    imgs = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]
    blob = cv2.dnn.blobFromImages(imgs, 1.0, (112, 112), (0, 0, 0), swapRB=True)
    return sess.run([layer], {sess.get_inputs()[0].name: blob})[0]


def datasets(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][:] for k in f if k != "failures"}


def with_pool(cfg: dict, pool: list[str]) -> dict:
    cfg["model"]["pool"] = pool
    return cfg


# --------------------------------------------------------------------------- the files


def test_mean_in_full_and_subset_equals_numpy(dataset, tiny_model, tmp_path):
    lst, root, rel = dataset
    out = tmp_path / "out"
    extract.run(make_config(lst, root, tiny_model, out), progress=False)  # the default pool
    full, sub = datasets(out / "full.h5"), datasets(out / "subset.h5")
    for r, path in ((full, out / "full.h5"), (sub, out / "subset.h5")):
        assert sorted(r) == ["facen", "index", "prefacen", "prefacen_mean"]
        assert r["prefacen_mean"].dtype == np.float32 and r["prefacen_mean"].shape == r["prefacen"].shape
        assert json.loads(store.read_attrs(path)["pool"]) == ["center", "mean"]
        assert store.has_mean(path) and store.pool_of(path) == ["center", "mean"]
    assert full["prefacen_mean"].shape == (120, 512)
    fmap = layer_maps(tiny_model, "features_map", [root / p for p in rel])
    np.testing.assert_allclose(full["prefacen_mean"], fmap.mean(axis=(2, 3)), rtol=1e-5, atol=1e-5)
    h, w = fmap.shape[2:]
    np.testing.assert_allclose(full["prefacen"], fmap[:, :, h // 2, w // 2], rtol=0, atol=1e-5)
    want = np.flatnonzero(stream.subset_mask(120, 0.2, SEED))
    np.testing.assert_array_equal(sub["index"], want)
    np.testing.assert_array_equal(sub["prefacen_mean"], full["prefacen_mean"][want])
    np.testing.assert_array_equal(store.rows_at(out / "full.h5", want, "prefacen_mean"), sub["prefacen_mean"])


def test_center_only_writes_no_mean_and_the_same_prefacen(dataset, tiny_model, tmp_path):
    """pool ["center"] is the reference's file; the centre and embedding do not change with the pool, bit for bit."""
    lst, root, _ = dataset
    both, centre = tmp_path / "both", tmp_path / "centre"
    extract.run(make_config(lst, root, tiny_model, both), progress=False)
    extract.run(with_pool(make_config(lst, root, tiny_model, centre), ["center"]), progress=False)
    for name in ("full.h5", "subset.h5"):
        a, b = datasets(both / name), datasets(centre / name)
        assert "prefacen_mean" not in b and not store.has_mean(centre / name)
        assert json.loads(store.read_attrs(centre / name)["pool"]) == ["center"]
        for k in ("prefacen", "facen", "index"):
            assert a[k].tobytes() == b[k].tobytes(), k


def test_pool_order_does_not_matter(small_list, tiny_model, tmp_path):
    lst, root = small_list
    out = tmp_path / "out"
    extract.run(with_pool(make_config(lst, root, tiny_model, out), ["mean", "center"]), progress=False)
    assert store.pool_of(out / "full.h5") == ["center", "mean"]
    assert extract.run(make_config(lst, root, tiny_model, out), progress=False).processed == 0  # the same run


def test_old_files_without_the_mean_still_read(small_list, tiny_model, tmp_path):
    """A file from before `pool` (no attr, no dataset): every reader still works; it just lacks the view."""
    lst, root = small_list
    out = tmp_path / "out"
    extract.run(with_pool(make_config(lst, root, tiny_model, out), ["center"]), progress=False)
    for name in ("full.h5", "subset.h5"):
        with h5py.File(out / name, "a") as f:
            del f.attrs["pool"]
        assert not store.has_mean(out / name) and store.pool_of(out / name) == ["center"]
    X, index = store.load_activations(out / "subset.h5", min_rows=1)
    assert X.shape[1] == 512 and len(index) == len(X)
    assert store.rows_at(out / "subset.h5", index, "facen").shape == (len(index), 128)


# --------------------------------------------------------------------------- resume and join


@pytest.mark.parametrize("first, then", [(["center", "mean"], ["center"]), (["center"], ["center", "mean"])])
def test_resume_with_another_pool_restarts_rather_than_mixing(
    small_list, tiny_model, tmp_path, monkeypatch, first, then
):
    lst, root = small_list
    out = tmp_path / "out"

    extract_interrupted(with_pool(make_config(lst, root, tiny_model, out), first), monkeypatch)
    assert any(out.glob("parts*/c*.h5"))
    cfg = with_pool(make_config(lst, root, tiny_model, out), then)
    with pytest.raises(UserError, match="pool"):
        extract.run(cfg, progress=False)
    summary = extract.run(cfg, overwrite=True, progress=False)
    assert summary.processed == 40 and summary.resumed_chunks == 0
    assert store.has_mean(out / "full.h5") == ("mean" in then)
    # and a complete run is not silently taken for the other pool either
    with pytest.raises(UserError, match="pool"):
        extract.run(with_pool(make_config(lst, root, tiny_model, out), first), progress=False)


def test_join_carries_the_mean(small_list, tiny_model, tmp_path):
    lst, root = small_list
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    extract.run(make_config(lst, root, tiny_model, single), progress=False)
    for i in range(2):
        extract.run(make_config(lst, root, tiny_model, sharded), stream.Shard(i, 2), progress=False)
    extract.join(sharded)
    for name in ("full.h5", "subset.h5"):
        a, b = datasets(single / name), datasets(sharded / name)
        assert sorted(a) == sorted(b) and "prefacen_mean" in b
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
        assert store.read_attrs(sharded / name)["pool"] == store.read_attrs(single / name)["pool"]


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("pool", [["mean"], [], ["center", "max"], ["center", "center"], "center", [1]])
def test_bad_pool_is_one_line(pool):
    cfg = config.load(None, {"model.pool": pool} if isinstance(pool, list) else None)
    if not isinstance(pool, list):
        cfg["model"]["pool"] = pool
    with pytest.raises(UserError, match="model.pool") as e:
        settings.check(cfg)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="model.pool"):
        check_pool(pool)


@pytest.mark.parametrize("args", [["--pool", "center,max"], ["--pool", "mean"], ["--set", "model.pool=['gap']"]])
def test_bad_pool_on_the_command_line_exits_2(small_list, tiny_model, tmp_path, capsys, args):
    lst, root = small_list
    rc = cli.main(["extract", "--list", str(lst), "--root", str(root), "--model", str(tiny_model)] + args)
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and "model.pool" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_pool_flag_and_pipelines(small_list, tiny_model, tmp_path):
    lst, root = small_list
    out = tmp_path / "out"
    argv = ["extract", "-q", "--list", str(lst), "--root", str(root), "--model", str(tiny_model), "--out", str(out)]
    assert cli.main(argv + ["--pool", "center"]) == 0
    assert not store.has_mean(out / "full.h5")
    repo = Path(__file__).resolve().parents[1]
    assert config.load(repo / "pipelines" / "reference.toml")["model"]["pool"] == ["center"]
    assert config.load(repo / "pipelines" / "demo.toml")["model"]["pool"] == ["center", "mean"]


def test_extractor_defaults_to_the_centre_only(tiny_model):
    """Merge and the benches build the cut without a pool: exactly the reference's two outputs."""
    net = onnx.load(tiny_model)
    ex = Extractor.build(net, "auto", "auto", Preprocess((112, 112)))
    assert ex.mean is None and [o.name for o in ex.model.graph.output] == [ex.center, ex.embedding]
    both = Extractor.build(net, "auto", "auto", Preprocess((112, 112)), ["center", "mean"])
    assert list(both.outputs) == ["prefacen", "facen", "prefacen_mean"]
    assert len([n for n in both.model.graph.node if n.op_type == "ReduceMean"]) == 1


# --------------------------------------------------------------------------- the real net


def test_sface_mean_is_bn1_averaged_over_7x7(sface_model, tmp_path):
    root = tmp_path / "data"
    rel = write_images(root, 3, seed=5)
    lst = tmp_path / "list.txt"
    lst.write_text("".join(p + "\n" for p in rel))
    out = tmp_path / "out"
    extract.run(make_config(lst, root, sface_model, out, batch_size=2, chunk_size=2, fraction=0.5), progress=False)
    full = datasets(out / "full.h5")
    fmap = layer_maps(sface_model, "bn1", [root / p for p in rel])
    assert fmap.shape == (3, 1024, 7, 7) and full["prefacen_mean"].shape == (3, 1024)
    np.testing.assert_allclose(full["prefacen_mean"], fmap.mean(axis=(2, 3)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(full["prefacen"], fmap[:, :, 3, 3], rtol=0, atol=1e-5)


@pytest.fixture
def small_list(dataset) -> tuple[Path, Path]:
    """The dataset's first 40 images: (list, root)."""
    lst, root, rel = dataset
    lst.write_text("".join(p + "\n" for p in rel[:40]))
    return lst, root


def test_removed_mean_dataset_is_not_has_mean(small_list, tiny_model, tmp_path):
    """`has_mean` looks at the rows, not only the attr: a file whose dataset went missing has no mean."""
    lst, root = small_list
    out = tmp_path / "out"
    extract.run(make_config(lst, root, tiny_model, out), progress=False)
    copy = tmp_path / "copy.h5"
    shutil.copy(out / "subset.h5", copy)
    with h5py.File(copy, "a") as f:
        del f["prefacen_mean"]
    assert store.has_mean(out / "subset.h5") and not store.has_mean(copy)
