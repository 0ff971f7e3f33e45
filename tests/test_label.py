"""`introspect label`: the merged model over a list, its lists and distribution, the fast path, shards."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import onnx
import pytest
from conftest import kmeans_run, make_config, write_images

from introspect import cli
from introspect.engine import runtime, stream
from introspect.engine.merged import load_merged, read_metadata
from introspect.errors import UserError
from introspect.stages import extract, label, merge


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory, tiny_model):
    """Extract (full + subset) with the tiny ResNet, 3 clusters learned on the subset, merged: a run ready to label."""
    tmp = tmp_path_factory.mktemp("label")
    root = tmp / "data"
    rel = write_images(root, 150, seed=3)
    lines = rel[:70] + ["missing.jpg", ""] + rel[70:]  # an unreadable image and an empty line
    lst = tmp / "list.txt"
    lst.write_text("".join(p + "\n" for p in lines))
    cfg = make_config(lst, root, tiny_model, tmp / "run", fraction=0.5)
    kmeans_run(cfg)
    merge.run(cfg)
    return cfg, lines


def _read(path):
    with h5py.File(path) as f:
        rows = {k: f[k][:] for k in ("index", "label", "score", "scores") if k in f}
        rows["failures"] = [(int(i), r.decode()) for i, r in zip(f["failures/index"][:], f["failures/reason"][:])]
        rows["attrs"] = dict(f.attrs)
    return rows


def _two_step(cfg):
    """Labels and top probabilities from full.h5's activations through classifier.onnx, outside the stage."""
    out = cfg["extract"]["out"]
    with h5py.File(f"{out}/full.h5") as f:
        X = f["prefacen"][:]
    sess = runtime.session(onnx.load(f"{out}/classifier.onnx"), "cpu")
    lab, raw = sess.run(None, {sess.get_inputs()[0].name: X})
    p = np.exp(raw - raw.max(axis=1, keepdims=True))
    return lab.ravel(), (p / p.sum(axis=1, keepdims=True)).max(axis=1), raw


def _fresh(cfg, tmp_path):
    """A copy of the run folder, so each test labels from scratch."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(cfg["extract"]["out"], out)
    for p in ("labels.h5", "clusters", "distribution.csv"):
        (out / p).unlink() if (out / p).is_file() else shutil.rmtree(out / p, ignore_errors=True)
    return {**cfg, "extract": {**cfg["extract"], "out": str(out)}, "label": dict(cfg["label"])}


def test_merged_model_labels_match_the_two_step_path(labelled_run, tmp_path):
    cfg = _fresh(labelled_run[0], tmp_path)
    cfg["label"].update(fast=False, all_scores=True)
    result = label.run(cfg, progress=False)
    assert not result.fast
    got = _read(result.labels)
    lab, top, raw = _two_step(cfg)
    assert np.array_equal(got["label"], lab)
    np.testing.assert_allclose(got["score"], top, atol=1e-5)
    np.testing.assert_allclose(got["scores"], raw, atol=1e-4)
    assert [r for _, r in got["failures"]] == ["missing", "empty line in list"]
    assert got["attrs"]["path"] == "merged model"


def test_fast_path_gives_the_merged_models_rows(labelled_run, tmp_path):
    cfg = _fresh(labelled_run[0], tmp_path)
    cfg["label"]["fast"] = False
    slow = _read(label.run(cfg, progress=False).labels)
    cfg = _fresh(labelled_run[0], tmp_path / "again")
    result = label.run(cfg, progress=False)
    assert result.fast
    fast = _read(result.labels)
    assert np.array_equal(fast["index"], slow["index"]) and np.array_equal(fast["label"], slow["label"])
    np.testing.assert_allclose(fast["score"], slow["score"], atol=1e-6)
    assert fast["failures"] == slow["failures"] and fast["attrs"]["path"] == "fast"


def test_lists_hold_the_lists_own_lines_per_cluster(labelled_run, tmp_path):
    base, lines = labelled_run
    cfg = _fresh(base, tmp_path)
    result = label.run(cfg, progress=False)
    got = _read(result.labels)
    names = {c["id"]: c["name"] for c in read_metadata(onnx.load(f"{cfg['extract']['out']}/merged.onnx"))["clusters"]}
    folder = tmp_path / "run" / "clusters"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.txt" for n in names.values())
    for k, name in names.items():
        expect = [lines[i] for i, lab in zip(got["index"], got["label"]) if lab == k]
        assert (folder / f"{name}.txt").read_text().splitlines() == expect
    total = sum(len((folder / f"{n}.txt").read_text().splitlines()) for n in names.values())
    assert total == len(lines) - 2  # all but the missing image and the empty line
    with open(tmp_path / "run" / "distribution.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["cluster"]) for r in rows] == sorted(names)
    assert sum(float(r["labelled_share"]) for r in rows) == pytest.approx(1.0)
    assert sum(float(r["subset_share"]) for r in rows) == pytest.approx(1.0)
    assert "cluster" in result.text()


def test_renamed_cluster_names_its_list(labelled_run, tmp_path):
    cfg = _fresh(labelled_run[0], tmp_path)
    names = tmp_path / "run" / "cluster_names.toml"
    names.write_text(names.read_text().replace('"cluster_1"', '"blurry faces"'))
    merge.run(cfg)
    label.run(cfg, progress=False)
    assert (tmp_path / "run" / "clusters" / "blurry faces.txt").exists()
    assert not (tmp_path / "run" / "clusters" / "cluster_1.txt").exists()


def test_shards_and_join_equal_one_run(labelled_run, tmp_path):
    cfg = _fresh(labelled_run[0], tmp_path)
    cfg["label"]["fast"] = False
    cfg["extract"]["chunk_size"] = 40
    for i in range(3):
        result = label.run(cfg, stream.Shard(i, 3), progress=False)
        assert result.shard and "join" in result.text()
    extract.join(tmp_path / "run")
    joined = label.run(cfg, progress=False)  # labels.h5 is complete: writes the lists
    single = _fresh(labelled_run[0], tmp_path / "single")
    single["label"]["fast"] = False
    single["extract"]["chunk_size"] = 40
    one = _read(label.run(single, progress=False).labels)
    got = _read(joined.labels)
    for k in ("index", "label", "score"):
        assert np.array_equal(got[k], one[k])
    assert got["failures"] == one["failures"]


def test_killed_label_run_resumes(labelled_run, tmp_path, monkeypatch):
    cfg = _fresh(labelled_run[0], tmp_path)
    cfg["label"]["fast"] = False
    cfg["extract"]["chunk_size"] = 40

    class Crash(Exception):
        pass

    with monkeypatch.context() as m:
        m.setattr(stream, "_finalize", lambda *a, **k: (_ for _ in ()).throw(Crash))
        with pytest.raises(Crash):
            label.run(cfg, progress=False)
    assert len(list((tmp_path / "run" / "parts-label").glob("c*.h5"))) == 4
    result = label.run(cfg, progress=False)
    assert result.summary.resumed_chunks == 4 and result.summary.processed == 0
    lab, _, _ = _two_step(cfg)
    assert np.array_equal(_read(result.labels)["label"], lab)


def test_label_mistakes_are_one_line(labelled_run, tmp_path, tiny_model, capsys):
    cfg = _fresh(labelled_run[0], tmp_path)
    out = cfg["extract"]["out"]
    args = ["label", "--out", out, "--list", cfg["data"]["list"], "--root", cfg["data"]["root"]]
    assert cli.main([*args, "--merged", str(tmp_path / "nope.onnx")]) == 2
    assert "make merge" in capsys.readouterr().err
    assert cli.main([*args, "--merged", str(tiny_model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cluster_scores" in err[0]
    with pytest.raises(UserError, match="make merge"):
        load_merged(tmp_path / "none.onnx")


def _with_map(cfg):
    """clusters.h5 gains the placement datasets the cluster stage writes (the map: the first two PCA axes, scaled);
    merged again, as the merged model records the clusters.h5 it was made from."""
    from introspect.science import tsne

    out = cfg["extract"]["out"]
    with h5py.File(f"{out}/subset.h5") as f:
        X = f["prefacen"][:]
    rows, _, mean, comps = tsne.pca_fit(X, 5, seed=0)
    Y = (rows[:, :2] * 3).astype(np.float32)
    with h5py.File(f"{out}/clusters.h5", "a") as f:
        del f["tsne"]
        f["tsne"], f["map_pca_mean"], f["map_pca_components"], f["map_pca_rows"] = Y, mean, comps, rows
    merge.run(cfg)
    return Y


def test_labelled_images_are_placed_on_the_map_by_both_paths(labelled_run, tmp_path):
    from introspect.science import placement

    slow_cfg = _fresh(labelled_run[0], tmp_path)
    Y = _with_map(slow_cfg)
    slow_cfg["label"]["fast"] = False
    slow = label.run(slow_cfg, progress=False)
    fast_cfg = _fresh(labelled_run[0], tmp_path / "again")
    _with_map(fast_cfg)
    fast = label.run(fast_cfg, progress=False)
    assert fast.fast and not slow.fast
    with h5py.File(slow.labels) as a, h5py.File(fast.labels) as b:
        assert a["map"].shape == (len(a["index"]), 2) and a["map"].dtype == np.float32
        np.testing.assert_allclose(a["map"][:], b["map"][:], atol=1e-4)
        index, where = b["index"][:], b["map"][:]
    with h5py.File(f"{fast_cfg['extract']['out']}/clusters.h5") as f:
        own = dict(zip(f["index"][:].tolist(), Y))
    mine = np.array([i in own for i in index.tolist()])
    assert mine.sum() > 10
    dist = np.linalg.norm(where[mine] - np.array([own[i] for i in index[mine].tolist()]), axis=1)
    assert dist.max() < placement.neighbour_spacing(Y)


def test_labels_without_a_map_projection_have_no_map(labelled_run, tmp_path):
    for fast in (True, False):
        cfg = _fresh(labelled_run[0], tmp_path / str(fast))
        cfg["label"]["fast"] = fast
        result = label.run(cfg, progress=False)
        assert result.fast == fast
        with h5py.File(result.labels) as f:
            assert "map" not in f and len(f["label"])
