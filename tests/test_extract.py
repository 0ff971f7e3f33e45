"""The extract stage on the tiny net (and once on SFace): layout, values, failures, resume rules, shards."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import extract_interrupted, make_config, write_images

from introspect.engine import nets, store, stream
from introspect.errors import UserError
from introspect.stages import extract

SEED = 2463426724  # the reference's, the default
FRACTION = 0.2  # make_config's

# --------------------------------------------------------------------------- helpers


def read(path: Path) -> dict:
    """Everything in a result file, as numpy arrays and plain attrs."""
    with h5py.File(path, "r") as f:
        rows = [k for k in ("prefacen", "facen", "index", "prefacen_mean") if k in f]  # the mean: when pooled
        out = {k: f[k][:] for k in rows}
        out["dtypes"] = {k: f[k].dtype for k in rows}
        g = f["failures"]
        out["fail_index"] = g["index"][:]
        out["fail_path"] = list(g["path"].asstr()[:])
        out["fail_reason"] = list(g["reason"].asstr()[:])
        out["datasets"] = sorted(f.keys())
        out["failure_datasets"] = sorted(g.keys())
    out["attrs"] = store.read_attrs(path)
    return out


def assert_same_results(a_dir, b_dir) -> None:
    """Both runs' full.h5 and subset.h5: the same rows exactly, the same attributes."""
    for name in ("full.h5", "subset.h5"):
        a, b = read(a_dir / name), read(b_dir / name)
        assert_same_rows(a, b, atol=0)
        assert a["attrs"] == b["attrs"]


def assert_same_rows(a: dict, b: dict, atol: float = 1e-5) -> None:
    """Same rows in the same order, same failures; activations within atol."""
    np.testing.assert_array_equal(a["index"], b["index"])
    assert a["prefacen"].shape == b["prefacen"].shape and a["facen"].shape == b["facen"].shape
    np.testing.assert_allclose(a["prefacen"], b["prefacen"], rtol=0, atol=atol)
    np.testing.assert_allclose(a["facen"], b["facen"], rtol=0, atol=atol)
    assert ("prefacen_mean" in a) == ("prefacen_mean" in b)
    if "prefacen_mean" in a:
        np.testing.assert_allclose(a["prefacen_mean"], b["prefacen_mean"], rtol=0, atol=atol)
    np.testing.assert_array_equal(a["fail_index"], b["fail_index"])
    assert a["fail_path"] == b["fail_path"]
    assert a["fail_reason"] == b["fail_reason"]
    assert a["dtypes"] == b["dtypes"]


def direct(model_path: Path, layer: str, paths: list[Path], batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The layer's center pixel and the embedding, by plain onnxruntime + numpy (no introspect code)."""
    model = onnx.load(model_path)
    model.graph.output.append(onnx.helper.make_tensor_value_info(layer, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    emb_name, inp = model.graph.output[0].name, sess.get_inputs()[0].name
    centers, embs = [], []
    for lo in range(0, len(paths), batch):
        imgs = []
        for p in paths[lo : lo + batch]:
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            assert img is not None, p
            if img.shape[:2] != (112, 112):
                img = cv2.resize(img, (112, 112), interpolation=cv2.INTER_LINEAR)
            imgs.append(img)
        blob = cv2.dnn.blobFromImages(imgs, 1.0, (112, 112), (0, 0, 0), swapRB=True)
        fmap, emb = sess.run([layer, emb_name], {inp: blob})
        h, w = fmap.shape[2:]
        centers.append(fmap[:, :, h // 2, w // 2])
        embs.append(emb)
    return np.concatenate(centers), np.concatenate(embs)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def mask_of(n: int, fraction: float = FRACTION, seed: int = SEED) -> np.ndarray:
    return np.random.RandomState(seed).random(n) < fraction


class Mixed:
    """A list with bad and unusual images at known lines, some inside the subset and some outside."""

    BAD = {  # relative path -> word expected in the reason
        "missing/nope.jpg": "missing",
        "bad/empty.jpg": "empty",
        "bad/truncated.jpg": "truncated",
        "bad/text.jpg": "decodable",
        "": "empty line",
        "bad/folder.jpg": "directory",
        "missing/also_missing.jpg": "missing",
        "bad/text2.jpg": "decodable",
    }
    ODD = ["odd/gray.jpg", "odd/alpha.png", "odd/big.jpg", "odd/deep.png", "odd/plain.png"]

    def __init__(self, tmp: Path, n: int = 130):
        self.root = tmp / "data"
        good = write_images(self.root, n)
        b = self.root / "bad"
        b.mkdir()
        data = (self.root / good[0]).read_bytes()
        (b / "empty.jpg").write_bytes(b"")
        (b / "truncated.jpg").write_bytes(data[: len(data) // 2])
        (b / "text.jpg").write_text("not an image\n")
        (b / "text2.jpg").write_bytes(b"GIF89a garbage")
        (b / "folder.jpg").mkdir()
        o = self.root / "odd"
        o.mkdir()
        src = cv2.imread(str(self.root / good[1]))
        cv2.imwrite(str(o / "gray.jpg"), src[..., 0])
        cv2.imwrite(str(o / "alpha.png"), np.dstack([src, np.full(src.shape[:2], 200, np.uint8)]))
        cv2.imwrite(str(o / "big.jpg"), cv2.resize(src, (200, 150)))
        cv2.imwrite(str(o / "deep.png"), src.astype(np.uint16) * 257)
        cv2.imwrite(str(o / "plain.png"), src)
        mask = mask_of(n)
        ins, outs = list(np.flatnonzero(mask)), list(np.flatnonzero(~mask))
        lines = list(good)
        self.bad_at: dict[int, str] = {}
        special = list(self.BAD) + self.ODD
        for k, rel in enumerate(special):
            pos = int((ins if k % 2 == 0 else outs).pop(1))
            lines[pos] = rel
            if rel in self.BAD:
                self.bad_at[pos] = rel
        self.lines = lines
        self.mask = mask
        self.list = tmp / "mixed.txt"
        self.list.write_text("".join(ln + "\n" for ln in lines))
        self.good = np.array([i for i in range(n) if i not in self.bad_at], np.int64)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Mixed:
    """Read-only data: tests write only under their own out folders."""
    return Mixed(tmp_path_factory.mktemp("mixed"))


@pytest.fixture(scope="module")
def mixed_ref(mixed, tiny_model, tmp_path_factory) -> dict:
    """The plain single run over `mixed` (make_config's settings), read back, with its summary."""
    out = tmp_path_factory.mktemp("mixed_ref")
    summary = extract.run(make_config(mixed.list, mixed.root, tiny_model, out), progress=False)
    return {"summary": summary, **{name: read(out / name) for name in ("full.h5", "subset.h5")}}


@pytest.fixture
def small(dataset):
    """The dataset cut to its first 40 lines (runs that only need to exist)."""
    lst, root, rel = dataset
    lst.write_text("".join(p + "\n" for p in rel[:40]))
    return lst, root, rel[:40]


# --------------------------------------------------------------------------- the subset rule


@pytest.mark.parametrize(
    "lines, chunk",
    [(lines, chunk) for lines in (1, 31, 32, 33, 130, 10007) for chunk in (1, 7, 32, 4096) if chunk > 1 or lines < 200],
)
def test_chunk_masks_concatenate_to_subset_mask(lines, chunk):
    whole = stream.subset_mask(lines, 0.02, SEED)
    np.testing.assert_array_equal(whole, np.random.RandomState(SEED).random(lines) < 0.02)
    parts = list(stream.chunk_masks(lines, chunk, 0.02, SEED))
    assert [len(p) for p in parts[:-1]] == [chunk] * (len(parts) - 1) and 1 <= len(parts[-1]) <= chunk
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_subset_mask_depends_on_seed_and_fraction():
    a = stream.subset_mask(5000, 0.02, SEED)
    assert 50 < a.sum() < 150
    assert not np.array_equal(a, stream.subset_mask(5000, 0.02, SEED + 1))
    assert stream.subset_mask(100, 1.0, SEED).all()


# --------------------------------------------------------------------------- layout and values


def test_full_and_subset_files(dataset, tiny_model, tmp_path):
    lst, root, rel = dataset
    out = tmp_path / "out"
    summary = extract.run(make_config(lst, root, tiny_model, out), progress=False)
    assert summary.images == 120 and summary.failures == 0 and summary.processed == 120
    assert sorted(set(os.listdir(out)) - {"timings.json"}) == ["full.h5", "subset.h5"]  # parts are gone
    full, sub = read(out / "full.h5"), read(out / "subset.h5")
    for r in (full, sub):
        assert r["datasets"] == ["facen", "failures", "index", "prefacen", "prefacen_mean"]  # the default pool
        assert r["failure_datasets"] == ["index", "path", "reason"]
        assert r["dtypes"] == {
            "prefacen": np.float32,
            "facen": np.float32,
            "index": np.int64,
            "prefacen_mean": np.float32,
        }
        assert len(r["fail_index"]) == 0
    assert full["prefacen"].shape == (120, 512) and full["facen"].shape == (120, 128)
    np.testing.assert_array_equal(full["index"], np.arange(120))

    want = np.flatnonzero(np.random.RandomState(SEED).random(120) < FRACTION)
    np.testing.assert_array_equal(want, np.flatnonzero(stream.subset_mask(120, FRACTION, SEED)))
    assert 0 < len(want) < 120
    np.testing.assert_array_equal(sub["index"], want)
    assert sub["prefacen"].shape == (len(want), 512) and sub["facen"].shape == (len(want), 128)
    np.testing.assert_array_equal(sub["prefacen"], full["prefacen"][want])
    np.testing.assert_array_equal(sub["facen"], full["facen"][want])

    pre = {"size": [112, 112], "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "rgb": True}
    for r, kind in ((full, "full"), (sub, "subset")):
        a = r["attrs"]
        assert a["model_sha256"] == sha256(tiny_model)
        assert a["layer"] == "features_map"
        assert a["embedding"] == "embedding"
        assert json.loads(a["preprocess"]) == pre
        assert a["list_sha256"] == sha256(lst)
        assert a["list_lines"] == 120
        assert a["fraction"] == FRACTION and isinstance(a["fraction"], float)
        assert a["seed"] == SEED
        assert a["chunk_size"] == 32
        assert a["kind"] == kind
        assert a["shard"] == ""
        assert a["full"] is True
        assert json.loads(a["pool"]) == ["center", "mean"]


def test_values_equal_direct_onnxruntime(dataset, tiny_model, tmp_path):
    lst, root, rel = dataset
    extract.run(make_config(lst, root, tiny_model, tmp_path / "out"), progress=False)
    full = read(tmp_path / "out" / "full.h5")
    center, emb = direct(tiny_model, "features_map", [root / p for p in rel])
    np.testing.assert_allclose(full["prefacen"], center, rtol=0, atol=1e-5)
    np.testing.assert_allclose(full["facen"], emb, rtol=0, atol=1e-5)
    assert np.abs(center[0] - center[1]).max() > 1e-3  # rows are not all the same


def test_named_layer_and_node_index(dataset, tiny_model, tmp_path):
    lst, root, rel = dataset
    rel = rel[:20]
    lst.write_text("".join(p + "\n" for p in rel))
    cfg = make_config(lst, root, tiny_model, tmp_path / "a")
    cfg["model"]["layer"] = "s2.out"
    extract.run(cfg, progress=False)
    got = read(tmp_path / "a" / "full.h5")
    assert got["prefacen"].shape == (20, 64) and got["attrs"]["layer"] == "s2.out"
    center, emb = direct(tiny_model, "s2.out", [root / p for p in rel])
    np.testing.assert_allclose(got["prefacen"], center, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["facen"], emb, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- bad images


def test_bad_images_are_recorded_not_fatal(mixed, mixed_ref, tiny_model):
    summary = mixed_ref["summary"]
    n = len(mixed.lines)
    assert summary.images == n - len(mixed.bad_at) and summary.failures == len(mixed.bad_at)
    assert summary.reasons["missing"] == 2 and sum(summary.reasons.values()) == len(mixed.bad_at)
    full, sub = mixed_ref["full.h5"], mixed_ref["subset.h5"]

    bad = sorted(mixed.bad_at)
    np.testing.assert_array_equal(full["fail_index"], bad)
    assert full["fail_path"] == [mixed.bad_at[i] for i in bad]
    for i, reason in zip(bad, full["fail_reason"]):
        assert Mixed.BAD[mixed.bad_at[i]] in reason, (mixed.bad_at[i], reason)
    np.testing.assert_array_equal(full["index"], mixed.good)  # no row for a failure

    sub_bad = [i for i in bad if mixed.mask[i]]
    assert 0 < len(sub_bad) < len(bad)
    np.testing.assert_array_equal(sub["fail_index"], sub_bad)
    assert sub["fail_path"] == [mixed.bad_at[i] for i in sub_bad]
    assert sub["fail_reason"] == [r for i, r in zip(bad, full["fail_reason"]) if mixed.mask[i]]
    np.testing.assert_array_equal(sub["index"], [i for i in mixed.good if mixed.mask[i]])

    # converted images (grayscale, RGBA / 16-bit PNG, 200 x 150) are rows, with the right values
    odd = [mixed.lines.index(p) for p in Mixed.ODD]
    assert set(odd) <= set(full["index"].tolist())
    center, emb = direct(tiny_model, "features_map", [mixed.root / mixed.lines[i] for i in mixed.good])
    np.testing.assert_allclose(full["prefacen"], center, rtol=0, atol=1e-5)
    np.testing.assert_allclose(full["facen"], emb, rtol=0, atol=1e-5)


def test_non_utf8_name_of_a_good_image(dataset, tiny_model, tmp_path):
    lst, root, rel = dataset
    name = b"caf\xe9.jpg"  # Latin-1, not UTF-8: common in old crawls
    with open(os.path.join(os.fsencode(root), name), "wb") as f:
        f.write((root / rel[0]).read_bytes())
    lst.write_bytes(b"".join(p.encode() + b"\n" for p in rel[:10]) + name + b"\n")
    summary = extract.run(make_config(lst, root, tiny_model, tmp_path / "out"), progress=False)
    assert summary.images == 11 and summary.failures == 0
    full = read(tmp_path / "out" / "full.h5")
    np.testing.assert_array_equal(full["facen"][10], full["facen"][0])


def test_non_utf8_name_of_a_missing_image_is_a_failure(dataset, tiny_model, tmp_path):
    lst, root, rel = dataset
    lst.write_bytes(b"".join(p.encode() + b"\n" for p in rel[:10]) + b"gone/caf\xe9.jpg\n")
    summary = extract.run(make_config(lst, root, tiny_model, tmp_path / "out"), progress=False)
    assert summary.images == 10 and summary.failures == 1
    full = read(tmp_path / "out" / "full.h5")
    assert full["fail_index"].tolist() == [10] and "caf" in full["fail_path"][0]


def test_carriage_return_inside_a_line(dataset, tiny_model, tmp_path):
    lst, root, rel = dataset
    lines = [p.encode() for p in rel[:40]]
    lines[3] = b"odd\rname.jpg"
    lst.write_bytes(b"".join(ln + b"\n" for ln in lines))
    extract.run(make_config(lst, root, tiny_model, tmp_path / "out"), progress=False)
    full = read(tmp_path / "out" / "full.h5")
    assert full["fail_index"].tolist() == [3]
    np.testing.assert_array_equal(full["index"], [i for i in range(40) if i != 3])
    center, emb = direct(tiny_model, "features_map", [root / rel[i] for i in full["index"]])
    np.testing.assert_allclose(full["facen"], emb, rtol=0, atol=1e-5)


def test_empty_list_is_a_user_error(tmp_path, tiny_model):
    lst = tmp_path / "empty.txt"
    lst.write_text("")
    with pytest.raises(UserError, match="empty"):
        extract.run(make_config(lst, tmp_path, tiny_model, tmp_path / "out"), progress=False)
    with pytest.raises(UserError, match="does not exist"):
        extract.run(make_config(tmp_path / "nope.txt", tmp_path, tiny_model, tmp_path / "out"), progress=False)


@pytest.mark.parametrize("content", ["a.jpg\nb.jpg\nc/d.jpg\n", "\n\n\n", "x.jpg"])
def test_no_readable_image_is_one_user_error(tmp_path, tiny_model, content):
    lst = tmp_path / "list.txt"
    lst.write_text(content)
    out = tmp_path / "out"
    with pytest.raises(UserError) as err:
        extract.run(make_config(lst, tmp_path / "data", tiny_model, out), progress=False)
    assert "\n" not in str(err.value)
    assert not (out / "full.h5").exists() and not (out / "subset.h5").exists()


def test_blank_lines_error_says_so(tmp_path, tiny_model):
    lst = tmp_path / "list.txt"
    lst.write_text("\n\n\n")
    with pytest.raises(UserError, match="empty line"):
        extract.run(make_config(lst, tmp_path, tiny_model, tmp_path / "out"), progress=False)


def test_wrong_root_fails_then_fixed_root_runs(dataset, tiny_model, tmp_path):
    lst, root, rel = dataset
    lst.write_text("".join(p + "\n" for p in rel * 3))  # 360 lines, more than one give-up window
    out = tmp_path / "out"
    with pytest.raises(UserError, match="could"):
        extract.run(make_config(lst, tmp_path / "wrong", tiny_model, out), progress=False)
    assert not (out / "full.h5").exists()
    summary = extract.run(make_config(lst, root, tiny_model, out), progress=False)
    assert summary.images == 360 and summary.failures == 0


# --------------------------------------------------------------------------- --no-full, batching


def test_no_full_writes_the_same_subset(mixed, mixed_ref, tiny_model, tmp_path):
    summary = extract.run(make_config(mixed.list, mixed.root, tiny_model, tmp_path / "sub", full=False), progress=False)
    assert sorted(set(os.listdir(tmp_path / "sub")) - {"timings.json"}) == ["subset.h5"]
    assert summary.processed == int(np.isin(mixed.good, np.flatnonzero(mixed.mask)).sum())
    a, b = mixed_ref["subset.h5"], read(tmp_path / "sub" / "subset.h5")
    assert_same_rows(a, b)
    assert b["attrs"]["full"] is False
    assert {k: v for k, v in a["attrs"].items() if k != "full"} == {k: v for k, v in b["attrs"].items() if k != "full"}


@pytest.mark.parametrize(
    "batch_size, workers, chunk_size",
    [(7, 1, 50), (64, 3, 1000), (5, 0, 3), (1, 2, 10), (16, 2, 130)],
)
def test_results_do_not_depend_on_batching(mixed, mixed_ref, tiny_model, tmp_path, batch_size, workers, chunk_size):
    cfg = make_config(
        mixed.list,
        mixed.root,
        tiny_model,
        tmp_path / "other",
        batch_size=batch_size,
        workers=workers,
        chunk_size=chunk_size,
    )
    extract.run(cfg, progress=False)
    for name in ("full.h5", "subset.h5"):
        assert_same_rows(mixed_ref[name], read(tmp_path / "other" / name))


# --------------------------------------------------------------------------- a second run


def test_second_run_is_already_complete(small, tiny_model, tmp_path, caplog):
    lst, root, _ = small
    out = tmp_path / "out"
    extract.run(make_config(lst, root, tiny_model, out), progress=False)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    caplog.set_level(logging.INFO, logger="introspect")
    summary = extract.run(make_config(lst, root, tiny_model, out, batch_size=3, workers=1), progress=False)
    assert "already complete" in caplog.text
    assert summary.processed == 0 and summary.images == 40
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before
    # the same layer named another way is the same run
    cfg = make_config(lst, root, tiny_model, out)
    cfg["model"]["layer"] = "node:-5"
    assert extract.run(cfg, progress=False).processed == 0
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before


def _other(what: str, lst: Path, root: Path, tiny_model: Path, tmp: Path, out: Path) -> dict:
    cfg = make_config(lst, root, tiny_model, out)
    if what == "model":
        other = tmp / "other.onnx"
        onnx.save(nets.tiny_resnet(seed=1), other)
        cfg["model"]["path"] = str(other)
    elif what == "list":
        other = tmp / "other.txt"
        other.write_text("".join(lst.read_text().splitlines(True)[:20]))
        cfg["data"]["list"] = str(other)
    elif what == "layer":
        cfg["model"]["layer"] = "s2.out"
    elif what == "seed":
        cfg["extract"]["seed"] = 1
    return cfg


@pytest.mark.parametrize("what", ["model", "list", "layer", "seed"])
def test_other_run_in_same_out_is_refused(small, tiny_model, tmp_path, what):
    lst, root, _ = small
    out = tmp_path / "out"
    extract.run(make_config(lst, root, tiny_model, out), progress=False)
    before = (out / "full.h5").read_bytes()
    cfg = _other(what, lst, root, tiny_model, tmp_path, out)
    with pytest.raises(UserError, match="overwrite"):
        extract.run(cfg, progress=False)
    assert (out / "full.h5").read_bytes() == before
    extract.run(cfg, overwrite=True, progress=False)
    assert extract.run(cfg, progress=False).processed == 0  # now that is the complete run
    fresh = tmp_path / "fresh"
    cfg["extract"]["out"] = str(fresh)
    extract.run(cfg, progress=False)
    assert_same_results(out, fresh)


def test_overwrite_no_full_discards_the_old_full_result(small, tiny_model, tmp_path):
    lst, root, _ = small
    out = tmp_path / "out"
    extract.run(make_config(lst, root, tiny_model, out), progress=False)
    cfg = _other("model", lst, root, tiny_model, tmp_path, out)
    cfg["extract"]["full"] = False
    extract.run(cfg, overwrite=True, progress=False)
    new = read(out / "subset.h5")["attrs"]["model_sha256"]
    assert not (out / "full.h5").exists() or read(out / "full.h5")["attrs"]["model_sha256"] == new


def test_moved_list_and_model_are_the_same_run(small, tiny_model, tmp_path):
    lst, root, _ = small
    out = tmp_path / "out"
    extract.run(make_config(lst, root, tiny_model, out), progress=False)
    moved_list, moved_model = tmp_path / "elsewhere" / "list.txt", tmp_path / "elsewhere" / "net.onnx"
    moved_list.parent.mkdir()
    shutil.copy(lst, moved_list)
    shutil.copy(tiny_model, moved_model)
    summary = extract.run(make_config(moved_list, root, moved_model, out), progress=False)
    assert summary.processed == 0 and summary.images == 40


@pytest.mark.parametrize("what", ["model", "layer"])
def test_other_run_over_interrupted_parts_is_refused(small, tiny_model, tmp_path, monkeypatch, what):
    lst, root, _ = small
    out = tmp_path / "out"

    extract_interrupted(make_config(lst, root, tiny_model, out), monkeypatch)
    assert any(out.glob("parts*/c*.h5"))
    cfg = _other(what, lst, root, tiny_model, tmp_path, out)
    with pytest.raises(UserError, match="overwrite"):
        extract.run(cfg, progress=False)
    summary = extract.run(cfg, overwrite=True, progress=False)
    assert summary.processed == 40 and summary.resumed_chunks == 0


# --------------------------------------------------------------------------- shards


@pytest.mark.parametrize("full", [True, False])
def test_shards_joined_equal_a_single_run(mixed, mixed_ref, tiny_model, tmp_path, full):
    sharded = tmp_path / "sharded"
    for i in range(3):
        s = extract.run(
            make_config(mixed.list, mixed.root, tiny_model, sharded, full=full), stream.Shard(i, 3), progress=False
        )
        assert s.processed > 0
    names = ["full.h5", "subset.h5"] if full else ["subset.h5"]
    shard_files = sorted(p.name for p in (sharded / "shards").iterdir())
    assert shard_files == sorted(f"{n[:-3]}.shard-{i}-of-3.h5" for n in names for i in range(3))
    assert not list(sharded.glob("*.h5"))
    joined = extract.join(sharded)
    assert sorted(p.name for p in joined.values()) == sorted(names)
    for name in names:
        a, b = mixed_ref[name], read(sharded / name)
        assert_same_rows(a, b, atol=0)
        assert a["attrs"] == dict(b["attrs"], full=True)  # what a single run with the same settings writes
        assert b["attrs"]["full"] is full
        assert a["datasets"] == b["datasets"] and a["failure_datasets"] == b["failure_datasets"]


def test_shards_on_machines_with_other_paths_join(mixed, mixed_ref, tiny_model, tmp_path):
    """Paths are local (each machine mounts the data where it likes); the rows decide."""
    other_root = tmp_path / "mnt" / "data"
    shutil.copytree(mixed.root, other_root)
    out = tmp_path / "out"
    for i in range(3):
        root = other_root if i == 1 else mixed.root
        extract.run(make_config(mixed.list, root, tiny_model, out), stream.Shard(i, 3), progress=False)
    extract.join(out)
    for name in ("full.h5", "subset.h5"):
        assert_same_rows(mixed_ref[name], read(out / name), atol=0)


def test_shard_files_hold_their_chunks(mixed, tiny_model, tmp_path):
    out = tmp_path / "out"
    extract.run(make_config(mixed.list, mixed.root, tiny_model, out), stream.Shard(1, 3), progress=False)
    got = read(out / "shards" / "full.shard-1-of-3.h5")
    assert got["attrs"]["shard"] == "1/3"
    owned = [i for i in range(len(mixed.lines)) if (i // 32) % 3 == 1]
    np.testing.assert_array_equal(got["index"], [i for i in owned if i not in mixed.bad_at])
    np.testing.assert_array_equal(got["fail_index"], [i for i in owned if i in mixed.bad_at])


def test_join_refuses_missing_shard_and_existing_result(mixed, tiny_model, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError, match="no shard"):
        extract.join(out)
    for i in (0, 2):
        extract.run(make_config(mixed.list, mixed.root, tiny_model, out), stream.Shard(i, 3), progress=False)
    with pytest.raises(UserError, match=r"\[1\]"):
        extract.join(out)
    assert not (out / "full.h5").exists() and not (out / "subset.h5").exists()
    extract.run(make_config(mixed.list, mixed.root, tiny_model, out), stream.Shard(1, 3), progress=False)
    extract.join(out)
    with pytest.raises(UserError, match="overwrite"):
        extract.join(out)
    extract.join(out, overwrite=True)


def test_join_refuses_shards_of_other_runs(mixed, tiny_model, tmp_path):
    out = tmp_path / "out"
    for i in range(3):
        seed = SEED if i != 1 else 5
        extract.run(make_config(mixed.list, mixed.root, tiny_model, out, seed=seed), stream.Shard(i, 3), progress=False)
    with pytest.raises(UserError, match="other settings"):
        extract.join(out)


@pytest.mark.parametrize("text", ["1/0", "3/3", "-1/2", "a/b", "1", "1/2/3", "0.5/2"])
def test_shard_parse_rejects(text):
    with pytest.raises(UserError):
        stream.Shard.parse(text)


def test_shard_parse():
    assert stream.Shard.parse(None) == stream.Shard(0, 1)
    assert stream.Shard.parse("2/4") == stream.Shard(2, 4)
    assert stream.Shard(2, 4).suffix == ".shard-2-of-4" and stream.Shard().suffix == ""


def test_shards_without_chunks_still_join(dataset, tiny_model, tmp_path):
    """6 shards of a 4-chunk list: shards 4 and 5 own nothing, write empty files, and the join works."""
    lst, root, _ = dataset  # 120 lines, chunk_size 32: chunks 0..3
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    extract.run(make_config(lst, root, tiny_model, single), progress=False)
    for i in range(6):
        extract.run(make_config(lst, root, tiny_model, sharded), stream.Shard(i, 6), progress=False)
    empty = read(sharded / "shards" / "full.shard-5-of-6.h5")
    assert empty["prefacen"].shape == (0, 512) and empty["facen"].shape == (0, 128) and len(empty["fail_index"]) == 0
    extract.join(sharded)
    assert_same_results(single, sharded)


def test_subset_that_selects_nothing_is_a_user_error(dataset, tiny_model, tmp_path):
    lst, root, _ = dataset
    lst.write_text("".join(lst.read_text().splitlines(True)[:3]))
    assert not stream.subset_mask(3, 0.01, SEED).any()
    with pytest.raises(UserError, match="fraction"):
        extract.run(make_config(lst, root, tiny_model, tmp_path / "out", fraction=0.01, full=False), progress=False)


# --------------------------------------------------------------------------- the real net


def test_sface_extract_matches_direct_run(sface_model, tmp_path):
    root = tmp_path / "data"
    rel = write_images(root, 10, seed=3)
    lst = tmp_path / "list.txt"
    lst.write_text("".join(p + "\n" for p in rel))
    out = tmp_path / "out"
    extract.run(make_config(lst, root, sface_model, out, batch_size=4, chunk_size=6, fraction=0.5), progress=False)
    full = read(out / "full.h5")
    assert full["prefacen"].shape == (10, 1024) and full["facen"].shape == (10, 128)
    assert full["attrs"]["layer"] == "bn1"
    center, emb = direct(sface_model, "bn1", [root / p for p in rel], batch=10)
    np.testing.assert_allclose(full["prefacen"], center, rtol=0, atol=1e-5)
    np.testing.assert_allclose(full["facen"], emb, rtol=0, atol=1e-5)
    sub = read(out / "subset.h5")
    want = np.flatnonzero(stream.subset_mask(10, 0.5, SEED))
    np.testing.assert_array_equal(sub["index"], want)
    np.testing.assert_array_equal(sub["facen"], full["facen"][want])
