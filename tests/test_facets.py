"""Facets and "unknown" as outputs of the merged model: the graft, its metadata and names, merge, label."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import onnx
import pytest
from conftest import kmeans_run, make_config, softmax, write_images
from test_merge import fit_head, small_net

from introspect.engine import graph, runtime
from introspect.engine.merged import (
    FACETS,
    add_facets,
    add_heads,
    add_unknown,
    cluster_ids,
    graft,
    load_facet_names,
    load_merged,
    load_names,
    read_metadata,
    with_metadata,
    write_names,
)
from introspect.errors import UserError
from introspect.science import classifier
from introspect.stages import label, merge

MEMBERS = [[0, 2], [1], [0, 1, 2]]


pytestmark = pytest.mark.usefixtures("one_blas_thread")


def small(opset: int):
    """small_net at `opset` grafted with a 3-cluster head on its 6 x 6 map, and 24 inputs."""
    net = small_net(opset=opset, ir=8 if opset >= 18 else 7)
    layer = graph.resolve_layer(net, "map6")
    x = np.random.default_rng(4).normal(size=(24, 3, 32, 32)).astype(np.float32)
    exposed = onnx.ModelProto()
    exposed.CopyFrom(net)
    exposed.graph.output.append(onnx.helper.make_tensor_value_info("map6", onnx.TensorProto.FLOAT, list(layer.shape)))
    center = np.ascontiguousarray(runtime.session(exposed, "cpu").run(["map6"], {"x": x})[0][:, :, 3, 3])
    head = fit_head(center, net)
    return graft(net, head, layer, "auto"), head, x, center


# --------------------------------------------------------------------------- the graft


@pytest.mark.parametrize("opset", [13, 18])  # ReduceMax's axes: an attribute, then an input
def test_facets_and_unknown_match_numpy(opset):
    merged, head, x, center = small(opset)
    ids = cluster_ids(head)
    label0, scores0 = runtime.session(head, "cpu").run(None, {classifier.INPUT: center})
    top = softmax(scores0).max(axis=1)
    threshold = float(np.median(top))
    model = add_heads(merged, ids, MEMBERS, threshold)
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == ["emb", "cluster", "cluster_scores", "facets"]
    assert graph.default_opset(model) == opset
    ops = {n.op_type for n in model.graph.node}
    assert {"Softmax", "ReduceMax", "Less", "Where", "MatMul"} <= ops
    emb, lab, scores, facets = runtime.session(model, "cpu").run(None, {"x": x})
    _, lab1, scores1 = runtime.session(merged, "cpu").run(None, {"x": x})
    assert np.array_equal(scores, scores1)
    m = np.zeros((3, 3))
    for f, cl in enumerate(MEMBERS):
        m[cl, f] = 1
    assert facets.dtype == np.float32 and facets.shape == (24, 3)
    np.testing.assert_allclose(facets, softmax(scores1) @ m, atol=1e-6)
    np.testing.assert_allclose(facets[:, 2], 1.0, atol=1e-6)
    want = np.where(top < threshold, -1, label0.ravel())
    assert lab.dtype == np.int64 and np.array_equal(lab, want)
    assert 0 < (lab == -1).sum() < len(lab)  # the comparison is not trivial


def test_unknown_off_and_no_facets_leave_the_model_alone():
    merged, head, x, _ = small(13)
    same = add_heads(merged, cluster_ids(head), [], None)
    assert same.SerializeToString() == merged.SerializeToString()
    lab = runtime.session(add_unknown(merged, 1e-9), "cpu").run(["cluster"], {"x": x})[0]
    assert np.array_equal(lab, runtime.session(merged, "cpu").run(["cluster"], {"x": x})[0])


def test_facets_name_taken_and_unknown_cluster_refused():
    merged, head, _, _ = small(13)
    with pytest.raises(UserError, match="cluster 7"):
        add_facets(merged, [[0, 7]], cluster_ids(head))
    with pytest.raises(UserError, match="already has a tensor named 'facets'"):
        add_facets(add_facets(merged, [[0]], [0, 1, 2]), [[1]], [0, 1, 2])


# --------------------------------------------------------------------------- metadata


def _info(facets, threshold):
    return {
        "clusters": [{"id": 0, "name": "glasses"}, {"id": 1, "name": "hat"}, {"id": 2, "name": "cluster_2"}],
        "facets": facets,
        "unknown_threshold": threshold,
        "outputs": merge.describe_outputs("emb", [0, 1, 2], "x", facets, threshold),
    }


def test_metadata_round_trip():
    merged, head, _, _ = small(13)
    facets = [{"id": 0, "name": "eyewear", "clusters": [0, 2]}, {"id": 3, "name": "headwear", "clusters": [1]}]
    model = with_metadata(add_heads(merged, [0, 1, 2], [[0, 2], [1]], 0.4), _info(facets, 0.4))
    back = read_metadata(onnx.load_from_string(model.SerializeToString()))
    assert back["facets"] == facets and back["unknown_threshold"] == 0.4
    assert "facets" in back["outputs"] and "-1" in back["outputs"]
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["introspect.facets"]) == facets and props["introspect.unknown_threshold"] == "0.4"
    off = read_metadata(with_metadata(merged, _info([], None)))
    assert off["facets"] == [] and off["unknown_threshold"] is None
    assert {p.key: p.value for p in with_metadata(merged, _info([], None)).metadata_props}[
        "introspect.unknown_threshold"
    ] == ""


@pytest.mark.parametrize(
    "facets, threshold, message",
    [
        ([{"id": 0, "name": "Hat", "clusters": [1]}], None, "named 'Hat' like cluster 1"),
        ([{"id": 0, "name": "Unknown", "clusters": [1]}], None, "reserved"),
        ([{"id": 0, "name": "a", "clusters": [1]}, {"id": 0, "name": "b", "clusters": [2]}], None, "appears twice"),
        ([{"id": 0, "name": "a", "clusters": [5]}], None, "not some of the model's clusters"),
        ([{"id": 0, "name": "a/b", "clusters": [1]}], None, "not usable as a file name"),
        ([{"id": 0, "name": "a", "clusters": [1]}, {"id": 1, "name": "A", "clusters": [2]}], None, "both named"),
        ({"id": 0}, None, "should be a list"),
        ([], "lots", "not a probability"),
        ([], "1.5", "not a probability"),
    ],
)
def test_bad_metadata_is_refused(facets, threshold, message):
    merged, _, _, _ = small(13)
    model = with_metadata(merged, _info([], None))
    props = {p.key: p.value for p in model.metadata_props}
    props["introspect.facets"] = json.dumps(facets)
    props["introspect.unknown_threshold"] = threshold or ""
    onnx.helper.set_model_props(model, props)
    with pytest.raises(UserError, match=message):
        read_metadata(model)


# --------------------------------------------------------------------------- the names file


def test_names_file_with_facets(tmp_path):
    path = tmp_path / "cluster_names.toml"
    clusters = {0: "a", 1: "b"}
    write_names(path, clusters, {0: "eyewear", 4: "facet_4"})
    text = path.read_text()
    assert "[facets]" in text and '4 = "facet_4"' in text
    assert load_names(path, [0, 1]) == clusters
    assert load_facet_names(path, [0, 4], clusters) == {0: "eyewear", 4: "facet_4"}
    with pytest.raises(UserError, match=r"missing \[5\]"):
        load_facet_names(path, [0, 4, 5], clusters)
    write_names(path, clusters)  # an older file: no [facets] table
    assert "[facets]" not in path.read_text()
    assert load_facet_names(path, [0, 4], clusters) == {0: "facet_0", 4: "facet_4"}
    assert load_facet_names(tmp_path / "none.toml", [1], clusters) == {1: "facet_1"}


@pytest.mark.parametrize(
    "body, message",
    [
        ('[facets]\n0 = "B"\n', "facet 0 is named 'B' like cluster 1"),
        ('[facets]\n0 = "unknown"\n', "reserved"),
        ('[facets]\n0 = "x"\n1 = "X"\n', "facets 0 and 1 are both named 'X'"),
        ('[facets]\nzero = "x"\n', "'zero' is not a facet id"),
    ],
)
def test_bad_facet_names(tmp_path, body, message):
    path = tmp_path / "cluster_names.toml"
    path.write_text('[names]\n0 = "a"\n1 = "b"\n' + body)
    with pytest.raises(UserError, match=message):
        load_facet_names(path, [0, 1] if "1 =" in body else [0], load_names(path, [0, 1]))


def test_cluster_named_unknown_is_refused(tmp_path):
    path = tmp_path / "cluster_names.toml"
    path.write_text('[names]\n0 = "UNKNOWN"\n1 = "b"\n')
    with pytest.raises(UserError, match="reserved"):
        load_names(path, [0, 1])


# --------------------------------------------------------------------------- the stages


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, tiny_model):
    """Extracted (full + subset), 3 clusters, classifier.onnx: a run ready to merge; no metrics.json yet."""
    tmp = tmp_path_factory.mktemp("facets")
    root = tmp / "data"
    rel = write_images(root, 90, seed=5)
    lines = rel[:40] + ["missing.jpg"] + rel[40:]
    lst = tmp / "list.txt"
    lst.write_text("".join(p + "\n" for p in lines))
    out = tmp / "run"
    cfg = make_config(lst, root, tiny_model, out, fraction=0.5)
    kmeans_run(cfg)
    with h5py.File(out / "full.h5") as f:
        Xall = f["prefacen"][:]
    sess = runtime.session(onnx.load(out / "classifier.onnx"), "cpu")
    top = softmax(sess.run(None, {classifier.INPUT: Xall})[1]).max(axis=1)
    return cfg, lines, float(np.quantile(top, 0.3))


def _copy(cfg, dest, metrics=None, names=None):
    out = dest / "run"
    shutil.copytree(cfg["extract"]["out"], out)
    if metrics is not None:
        (out / "metrics.json").write_text(json.dumps(metrics))
    if names is not None:
        (out / "cluster_names.toml").write_text(names)
    return {**cfg, "extract": {**cfg["extract"], "out": str(out)}, "label": dict(cfg["label"])}


def _metrics(threshold):
    return {
        "facets": [{"id": 0, "clusters": [0, 2]}, {"id": 1, "clusters": [1]}],
        "unknown": {"quantile": 0.3, "threshold": threshold},
        "identity": [{"cluster": 1, "score": 0.9, "flagged": True}],
    }


def _rows(path):
    with h5py.File(path) as f:
        return {k: f[k][:] for k in ("index", "label", "score", "facets") if k in f}


@pytest.fixture(scope="module")
def faceted(base_run, tmp_path_factory):
    """The run merged with facets (one named in the names file) and an unknown threshold."""
    cfg, lines, threshold = base_run
    names = '[names]\n0 = "c0"\n1 = "c1"\n2 = "c2"\n[facets]\n0 = "eyewear"\n1 = "facet_1"\n'
    cfg = _copy(cfg, tmp_path_factory.mktemp("faceted"), _metrics(threshold), names)
    result = merge.run(cfg)
    return cfg, lines, threshold, result


def test_merge_grafts_facets_and_unknown(faceted):
    cfg, _, threshold, r = faceted
    assert r.outputs == ["embedding", "cluster", "cluster_scores", "facets"]
    v = r.verification
    assert v["label_mismatches"] == 0 and v["max_facet_diff"] <= 1e-5 and "unknown" in v
    assert "eyewear" in r.text() and "facets" in r.text() and f"{threshold:.4g}" in r.text()
    model, meta = load_merged(f"{cfg['extract']['out']}/merged.onnx")
    assert meta["facets"] == [
        {"id": 0, "name": "eyewear", "clusters": [0, 2]},
        {"id": 1, "name": "facet_1", "clusters": [1]},
    ]
    assert meta["unknown_threshold"] == pytest.approx(threshold)
    assert model.graph.output[3].name == FACETS


def test_label_fast_equals_merged_with_facets_and_unknown(faceted, tmp_path):
    cfg, lines, threshold, _ = faceted
    slow_cfg = _copy(cfg, tmp_path / "slow")
    slow_cfg["label"]["fast"] = False
    slow = label.run(slow_cfg, progress=False)
    fast_cfg = _copy(cfg, tmp_path / "fast")
    fast = label.run(fast_cfg, progress=False)
    assert fast.fast and not slow.fast
    a, b = _rows(slow.labels), _rows(fast.labels)
    assert np.array_equal(a["index"], b["index"]) and np.array_equal(a["label"], b["label"])
    np.testing.assert_allclose(a["facets"], b["facets"], atol=1e-6)
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-6)
    assert a["facets"].shape == (len(a["index"]), 2) and a["facets"].dtype == np.float32
    unknown = a["label"] == -1
    assert 0 < unknown.sum() < len(unknown)
    assert np.all(a["score"][unknown] < threshold) and np.all(a["score"][~unknown] >= threshold)

    out = tmp_path / "slow" / "run"
    assert (out / "clusters" / "unknown.txt").read_text().splitlines() == [lines[i] for i in a["index"][unknown]]
    assert sorted(p.name for p in (out / "facets").iterdir()) == ["eyewear.txt", "facet_1.txt"]
    for j, name in enumerate(["eyewear", "facet_1"]):
        want = [lines[i] for i in a["index"][a["facets"][:, j] >= 0.5]]
        assert (out / "facets" / f"{name}.txt").read_text().splitlines() == want
        assert (tmp_path / "fast" / "run" / "facets" / f"{name}.txt").read_text().splitlines() == want
    rows = json.loads((out / "distribution.json").read_text())
    assert [r["cluster"] for r in rows] == [0, 1, 2, -1]
    assert rows[-1]["name"] == "unknown" and rows[-1]["images"] == int(unknown.sum())
    assert rows[-1]["subset_share"] is None and not rows[-1]["flagged"]
    assert sum(r["labelled_share"] for r in rows) == pytest.approx(1.0)
    known = len(unknown) - int(unknown.sum())
    for r in rows[:-1]:  # drift compares the share among the images with a cluster
        assert r["ratio"] == pytest.approx(r["images"] / known / r["subset_share"])
    assert "unknown" in (out / "distribution.csv").read_text()
    assert "eyewear" in slow.text()


def test_unknown_off_reproduces_todays_outputs(base_run, tmp_path):
    cfg, _, _ = base_run
    plain = _copy(cfg, tmp_path / "plain")
    merge.run(plain)
    plain["label"]["fast"] = False
    before = _rows(label.run(plain, progress=False).labels)
    off = _copy(cfg, tmp_path / "off", {"facets": [], "unknown": None, "identity": []})
    r = merge.run(off)
    assert r.outputs == ["embedding", "cluster", "cluster_scores"] and "unknown: off" in r.text()
    _, meta = load_merged(f"{off['extract']['out']}/merged.onnx")
    assert meta["facets"] == [] and meta["unknown_threshold"] is None
    off["label"]["fast"] = False
    after = _rows(label.run(off, progress=False).labels)
    assert "facets" not in after and not (tmp_path / "off" / "run" / "facets").exists()
    assert np.array_equal(before["label"], after["label"]) and np.array_equal(before["score"], after["score"])
    assert (after["label"] >= 0).all()
    assert not (tmp_path / "off" / "run" / "clusters" / "unknown.txt").exists()
    text = (tmp_path / "off" / "run" / "cluster_names.toml").read_text()
    assert "[facets]" not in text


def test_new_names_file_gets_facet_defaults(base_run, tmp_path):
    cfg, _, threshold = base_run
    cfg = _copy(cfg, tmp_path, _metrics(threshold))
    r = merge.run(cfg, sample=4)
    assert r.names_created and [f["name"] for f in r.facets] == ["facet_0", "facet_1"]
    assert '[facets]\n0 = "facet_0"\n1 = "facet_1"' in (tmp_path / "run" / "cluster_names.toml").read_text()


@pytest.mark.parametrize(
    "facets, message",
    [('[facets]\n0 = "C2"\n1 = "x"\n', "like cluster 2"), ('[facets]\n0 = "unknown"\n1 = "x"\n', "reserved")],
)
def test_merge_refuses_a_facet_named_like_a_cluster(base_run, tmp_path, facets, message):
    cfg, _, threshold = base_run
    cfg = _copy(cfg, tmp_path, _metrics(threshold), '[names]\n0 = "c0"\n1 = "c1"\n2 = "c2"\n' + facets)
    with pytest.raises(UserError, match=message):
        merge.run(cfg, sample=4)
    assert not (tmp_path / "run" / "merged.onnx").exists()


@pytest.mark.parametrize(
    "metrics, message",
    [
        ({"facets": [{"id": 0, "clusters": [9]}]}, "not some of classifier.onnx's clusters"),
        ({"facets": [{"id": 0, "clusters": [1]}, {"id": 0, "clusters": [2]}]}, "appears twice"),
        ({"unknown": {"quantile": 0.1, "threshold": 2.0}}, "threshold in"),
    ],
)
def test_merge_refuses_bad_contract_keys(base_run, tmp_path, metrics, message):
    cfg = _copy(base_run[0], tmp_path, metrics)
    with pytest.raises(UserError, match=message):
        merge.run(cfg, sample=4)


def test_heads_on_sface(sface_model):
    """The real net's opset: facets and unknown graft, check and match numpy."""
    from introspect.engine.extractor import Extractor
    from introspect.engine.images import Preprocess

    net = onnx.load(sface_model)
    ex = Extractor.build(net, "auto", "auto", Preprocess(size=(112, 112)))
    X = np.random.default_rng(0).normal(size=(12, 1024)).astype(np.float32)
    head = fit_head(X, net)
    merged = graft(net, head, ex.layer, "auto")
    x = np.random.default_rng(1).normal(size=(6, 3, 112, 112)).astype(np.float32)
    _, lab0, scores0 = runtime.session(merged, "cpu").run(None, {ex.input: x})
    threshold = float(np.median(softmax(scores0).max(axis=1)))
    model = add_heads(merged, [0, 1, 2], MEMBERS, threshold)
    assert [o.name for o in model.graph.output] == [ex.embedding, "cluster", "cluster_scores", "facets"]
    _, lab, scores, facets = runtime.session(model, "cpu").run(None, {ex.input: x})
    assert np.array_equal(scores, scores0)
    assert np.array_equal(lab, np.where(softmax(scores0).max(axis=1) < threshold, -1, lab0))
    np.testing.assert_allclose(facets[:, :2], softmax(scores0) @ np.array([[1, 0], [0, 1], [1, 0]]), atol=1e-6)
