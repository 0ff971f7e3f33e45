"""Every linear view in the merged model: a head per view, fed the centre pixel or the spatial mean, equal to
its classifier; merge reads metrics.json's views; label writes each view's columns, lists and distribution."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
from conftest import kmeans_run, make_config, softmax, write_images
from onnx import helper
from sklearn.cluster import KMeans
from test_merge import fit_head, load_images

from introspect.engine import graph, runtime
from introspect.engine.extractor import Extractor
from introspect.engine.images import Preprocess
from introspect.engine.merged import META, Head, graft, load_merged, read_metadata, view_heads, views_of
from introspect.errors import UserError
from introspect.science import classifier
from introspect.stages import label, merge

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def layer_maps(net: onnx.ModelProto, layer: graph.FeatureMap, x: np.ndarray) -> np.ndarray:
    """The layer's whole N x C x H x W map, from the net itself (numpy takes the centre and the mean)."""
    exposed = graph.expose(net, layer.name)
    return runtime.session(exposed, "cpu").run([layer.name], {graph.data_input(net).name: x})[0]


def export(X: np.ndarray, y: np.ndarray, net: onnx.ModelProto) -> onnx.ModelProto:
    est, _ = classifier.fit_validated(X, y, cv=2, Cs=[1.0])
    return classifier.match_net(classifier.to_onnx(est, X.shape[1]), net)


# --------------------------------------------------------------------------- the graft


def test_spatial_mean_is_numpys_mean_at_both_opsets():
    from test_merge import small_net

    for opset in (13, 18):  # ReduceMean's axes: an attribute, then an input
        net = small_net(opset=opset, ir=8 if opset >= 18 else 7)
        layer = graph.resolve_layer(net, "map6")
        x = np.random.default_rng(0).normal(size=(5, 3, 32, 32)).astype(np.float32)
        got = runtime.session(graph.spatial_mean(net, layer, "m"), "cpu").run(["m"], {"x": x})[0]
        assert got.shape == (5, layer.channels) and got.dtype == np.float32
        np.testing.assert_allclose(got, layer_maps(net, layer, x).mean(axis=(2, 3)), atol=1e-5)


def test_sface_with_two_views_equals_net_and_classifiers(sface_model, tmp_path):
    net = onnx.load(sface_model)
    ex = Extractor.build(net, "auto", "auto", Preprocess(size=(112, 112)))
    rng = np.random.default_rng(0)
    head = fit_head(rng.normal(size=(12, 1024)).astype(np.float32), net)
    head_mean = fit_head(rng.normal(size=(12, 1024)).astype(np.float32), net, k=4, seed=1)
    merged = graft(net, head, ex.layer, "auto", [Head("mean", "mean", head_mean)])
    onnx.checker.check_model(merged, full_check=True)
    assert [o.name for o in merged.graph.output] == [
        ex.embedding,
        "cluster",
        "cluster_scores",
        "cluster_mean",
        "cluster_mean_scores",
    ]
    means = [n for n in merged.graph.node if n.op_type == "ReduceMean" and n.input[0] == ex.layer.name]
    assert len(means) == 1  # beside the centre Slice, on the same layer
    x = load_images(tmp_path, write_images(tmp_path, 4))
    _, lab, scores, lab_m, scores_m = runtime.session(merged, "cpu").run(None, {ex.input: x})
    maps = layer_maps(net, ex.layer, x)
    for h, feat, got_lab, got_scores in [
        (head, maps[:, :, maps.shape[2] // 2, maps.shape[3] // 2], lab, scores),
        (head_mean, maps.mean(axis=(2, 3)), lab_m, scores_m),
    ]:
        want_lab, want_scores = runtime.session(h, "cpu").run(None, {classifier.INPUT: feat.astype(np.float32)})
        assert np.array_equal(got_lab, want_lab) and np.abs(got_scores - want_scores).max() < 1e-4
    assert scores_m.shape == (4, 4)


def test_graft_refuses_bad_views(tiny_model):
    net = onnx.load(tiny_model)
    ex = Extractor.build(net, "auto", "auto", Preprocess(size=(112, 112)))
    X = np.random.default_rng(0).normal(size=(12, ex.layer.channels)).astype(np.float32)
    head = fit_head(X, net)
    with pytest.raises(UserError, match="view name"):
        graft(net, head, ex.layer, "auto", [Head("Mean/x", "mean", head)])
    with pytest.raises(UserError, match="feature"):
        graft(net, head, ex.layer, "auto", [Head("mean", "max", head)])
    with pytest.raises(UserError, match="twice"):
        graft(net, head, ex.layer, "auto", [Head("mean", "mean", head), Head("mean", "center", head)])
    wide = fit_head(np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32), net)
    with pytest.raises(UserError, match="classifier_mean.onnx takes 5 features"):
        graft(net, head, ex.layer, "auto", [Head("mean", "mean", wide)])


# --------------------------------------------------------------------------- a run with views


@pytest.fixture(scope="module")
def views_run(tmp_path_factory, tiny_model):
    """A clustered run with `prefacen_mean` in full.h5 / subset.h5 (ORT's ReduceMean, as extract computes it),
    the mean view (2 clusters, facets, unknown), an approximate noid view, a skipped view; ready to merge."""
    tmp = tmp_path_factory.mktemp("views")
    root = tmp / "data"
    rel = write_images(root, 90, seed=7)
    lines = rel[:30] + ["missing.jpg"] + rel[30:]
    lst = tmp / "list.txt"
    lst.write_text("".join(p + "\n" for p in lines))
    out = tmp / "run"
    cfg = make_config(lst, root, tiny_model, out, fraction=0.5)
    _, sub_index = kmeans_run(cfg)
    net = onnx.load(tiny_model)
    pre = Preprocess.from_config(cfg["preprocess"])
    ex = Extractor.build(net, cfg["model"]["layer"], cfg["model"]["embedding"], pre)
    cut = graph.keep_outputs(graph.spatial_mean(ex.model, ex.layer, "m"), ["m"])
    with h5py.File(out / "full.h5", "a") as f:
        index = f["index"][:]
        x = load_images(root, [lines[i] for i in index], pre)
        means = runtime.session(cut, "cpu").run(["m"], {ex.input: x})[0]
        if "prefacen_mean" in f:  # extract's model.pool stores it already: replaced by the same computation
            del f["prefacen_mean"]
        f["prefacen_mean"] = means
    row = {int(i): j for j, i in enumerate(index)}
    sub_means = means[[row[int(i)] for i in sub_index]]
    with h5py.File(out / "subset.h5", "a") as f:
        if "prefacen_mean" in f:
            del f["prefacen_mean"]
        f["prefacen_mean"] = sub_means
    y_mean = KMeans(2, n_init=4, random_state=0).fit_predict(sub_means)
    onnx.save(export(sub_means, y_mean, net), out / "classifier_mean.onnx")
    onnx.save(fit_head(sub_means, net, k=3, seed=2), out / "classifier_noid.onnx")
    noid = onnx.load(out / "classifier_noid.onnx")
    sess = runtime.session(noid, "cpu")
    y_noid = sess.run([classifier.LABEL], {classifier.INPUT: sub_means})[0].ravel()
    with h5py.File(out / "clusters.h5", "a") as f:
        f["views/center/label"] = f["label"][:]
        f["views/mean/label"] = y_mean.astype(np.int64)
        f["views/noid/label"] = y_noid.astype(np.int64)
    top = softmax(
        runtime.session(onnx.load(out / "classifier_mean.onnx"), "cpu").run(None, {classifier.INPUT: means})[1]
    )
    threshold = float(np.quantile(top.max(axis=1), 0.3))
    metrics = {
        "views": [
            {"name": "center", "feature": "center", "grafted": "exact", "skipped": None, "facets": [], "unknown": None},
            {
                "name": "mean",
                "feature": "mean",
                "grafted": "exact",
                "skipped": None,
                "classifier_file": "classifier_mean.onnx",
                "facets": [{"id": 0, "clusters": [0]}, {"id": 1, "clusters": [0, 1]}],
                "unknown": {"quantile": 0.3, "threshold": threshold},
                "classifier": {"accuracy": 0.97},
            },
            {
                "name": "noid",
                "feature": "mean",
                "grafted": "approximate",
                "skipped": None,
                "classifier_file": "classifier_noid.onnx",
                "facets": [],
                "unknown": None,
                "classifier": {"accuracy": 0.8},
            },
            {
                "name": "people",
                "feature": "mean",
                "grafted": None,
                "skipped": "too few rows with same-person neighbours",
            },
        ]
    }
    (out / "metrics.json").write_text(json.dumps(metrics))
    return cfg, lines, threshold, sub_index


def _copy(cfg, dest, names=None):
    out = dest / "run"
    shutil.copytree(cfg["extract"]["out"], out)
    if names is not None:
        (out / "cluster_names.toml").write_text(names)
    return {**cfg, "extract": {**cfg["extract"], "out": str(out)}, "label": dict(cfg["label"])}


@pytest.fixture(scope="module")
def merged_run(views_run, tmp_path_factory):
    cfg, lines, threshold, sub_index = views_run
    names = '[names]\n0 = "a"\n1 = "b"\n2 = "c"\n[views.mean.clusters]\n0 = "dark"\n1 = "light"\n'
    cfg = _copy(cfg, tmp_path_factory.mktemp("merged_views"), names)
    return cfg, lines, threshold, sub_index, merge.run(cfg)


OUTPUTS = [
    "embedding",
    "cluster",
    "cluster_scores",
    "cluster_mean",
    "cluster_mean_scores",
    "facets_mean",
    "cluster_noid",
    "cluster_noid_scores",
]


def test_merge_grafts_each_view_and_says_so(merged_run):
    cfg, _, threshold, _, r = merged_run
    assert r.outputs == OUTPUTS
    assert r.verification["label_mismatches"] == 0
    for name in ("mean", "noid"):
        v = r.verification["views"][name]
        assert v["label_mismatches"] == 0 and v["max_score_diff"] <= 1e-4
    assert r.verification["views"]["mean"]["max_facet_diff"] <= 1e-5 and "unknown" in r.verification["views"]["mean"]
    text = r.text()
    assert "view mean (exact; spatial mean -> classifier_mean.onnx)" in text and "0=dark, 1=light" in text
    assert "view noid (approximate, held-out accuracy 0.800" in text
    assert "view people: not grafted (too few rows with same-person neighbours)" in text
    model, meta = load_merged(f"{cfg['extract']['out']}/merged.onnx")
    views = views_of(meta)
    assert [v["name"] for v in views] == ["center", "mean", "noid"]
    assert [v["name"] for v in meta["views"]] == ["center", "mean", "noid"]
    mean = views[1]
    assert mean["clusters"] == [{"id": 0, "name": "dark"}, {"id": 1, "name": "light"}]
    assert [f["name"] for f in mean["facets"]] == ["mean-facet_0", "mean-facet_1"]
    assert mean["unknown_threshold"] == pytest.approx(threshold) and mean["grafted"] == "exact"
    assert views[2]["clusters"][0]["name"] == "noid-00" and views[2]["accuracy"] == pytest.approx(0.8)
    assert views[2]["grafted"] == "approximate" and views[2]["unknown_threshold"] is None
    assert "cluster_mean" in model.doc_string
    assert '[views.mean.clusters]\n0 = "dark"' in open(f"{cfg['extract']['out']}/cluster_names.toml").read()


def test_each_head_equals_its_classifier_on_held_out_rows(merged_run, tiny_model):
    cfg, lines, threshold, sub_index, _ = merged_run
    out = cfg["extract"]["out"]
    model, meta = load_merged(f"{out}/merged.onnx")
    with h5py.File(f"{out}/full.h5") as f:
        index = f["index"][:]
    held = [i for i in index if i not in set(sub_index.tolist())]
    assert len(held) > 10
    pre = Preprocess.from_config(meta["preprocess"])
    x = load_images(Path(cfg["data"]["root"]), [lines[i] for i in held], pre)
    got = dict(zip(OUTPUTS, runtime.session(model, "cpu").run(OUTPUTS, {meta["input"]: x})))
    net = onnx.load(tiny_model)
    layer = graph.resolve_layer(net, meta["layer"])
    maps = layer_maps(net, layer, x).astype(np.float64)
    features = {"center": maps[:, :, maps.shape[2] // 2, maps.shape[3] // 2], "mean": maps.mean(axis=(2, 3))}
    checked = 0
    for v in views_of(meta):
        sess = runtime.session(onnx.load(f"{out}/{merge.classifier_file(v['name'])}"), "cpu")
        lab, raw = sess.run(None, {classifier.INPUT: features[v["feature"]].astype(np.float32)})
        lab, p = lab.ravel().copy(), softmax(raw)
        np.testing.assert_allclose(got[v["scores"]], raw, atol=1e-4)
        near = np.zeros(len(lab), bool)
        if v["unknown_threshold"] is not None:
            top = p.max(axis=1)
            lab[top < v["unknown_threshold"]] = -1
            near = np.abs(top - v["unknown_threshold"]) < 1e-3  # numpy's features are float64, the model's float32
            assert 0 < (lab == -1).sum() < len(lab)
        assert np.array_equal(got[v["label"]][~near], lab[~near])
        if v["facets"]:
            m = np.array([[k in f["clusters"] for f in v["facets"]] for k in [c["id"] for c in v["clusters"]]], float)
            np.testing.assert_allclose(got[v["facets_output"]], softmax(got[v["scores"]]) @ m, atol=1e-5)
            np.testing.assert_allclose(got[v["facets_output"]], p @ m, atol=1e-3)
        checked += 1
    assert checked == 3


def _rows(path):
    with h5py.File(path) as f:
        return {k: f[k][:] for k in f if k not in ("failures",)}


def test_label_fast_equals_streamed_per_view(merged_run, tmp_path):
    cfg, lines, _, _, _ = merged_run
    slow_cfg = _copy(cfg, tmp_path / "slow")
    slow_cfg["label"]["fast"] = False
    slow = label.run(slow_cfg, progress=False)
    fast = label.run(_copy(cfg, tmp_path / "fast"), progress=False)
    assert fast.fast and not slow.fast
    a, b = _rows(slow.labels), _rows(fast.labels)
    want = {"index", "label", "score", "label_mean", "score_mean", "facets_mean", "label_noid", "score_noid"}
    assert want <= set(a) and set(a) == set(b)
    for k in want:
        assert a[k].dtype == b[k].dtype
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)
    assert a["facets_mean"].shape == (len(a["index"]), 2)
    unknown = a["label_mean"] == -1
    assert 0 < unknown.sum() < len(unknown)

    for run in ("slow", "fast"):
        views = tmp_path / run / "run" / "views"
        assert sorted(p.name for p in (views / "mean" / "clusters").iterdir()) == [
            "dark.txt",
            "light.txt",
            "unknown.txt",
        ]
        for k, name in [(0, "dark"), (1, "light"), (-1, "unknown")]:
            want_lines = [lines[i] for i in a["index"][a["label_mean"] == k]]
            assert (views / "mean" / "clusters" / f"{name}.txt").read_text().splitlines() == want_lines
        for j, name in enumerate(["mean-facet_0", "mean-facet_1"]):
            want_lines = [lines[i] for i in a["index"][a["facets_mean"][:, j] >= 0.5]]
            assert (views / "mean" / "facets" / f"{name}.txt").read_text().splitlines() == want_lines
        assert sorted(p.name for p in (views / "noid" / "clusters").iterdir()) == [f"noid-0{k}.txt" for k in range(3)]
        assert not (views / "noid" / "facets").exists()
    rows = json.loads((tmp_path / "slow" / "run" / "views" / "mean" / "distribution.json").read_text())
    assert [r["cluster"] for r in rows] == [0, 1, -1]
    with h5py.File(tmp_path / "slow" / "run" / "clusters.h5") as f:
        sub = f["views/mean/label"][:]
    assert rows[0]["subset_share"] == pytest.approx(np.mean(sub == 0))
    assert sum(r["images"] for r in rows) == len(a["index"])
    assert "view mean" in slow.text() and "dark" in slow.text()


def test_fast_path_needs_the_spatial_mean(merged_run, tmp_path):
    cfg, _, _, _, _ = merged_run
    slow_cfg = _copy(cfg, tmp_path / "slow")
    slow_cfg["label"]["fast"] = False
    a = _rows(label.run(slow_cfg, progress=False).labels)
    lacking = _copy(cfg, tmp_path / "lacking")
    with h5py.File(tmp_path / "lacking" / "run" / "full.h5", "a") as f:
        del f["prefacen_mean"]
    r = label.run(lacking, progress=False)
    assert not r.fast  # the merged model instead, with every view
    b = _rows(r.labels)
    assert np.array_equal(a["label_mean"], b["label_mean"]) and np.array_equal(a["label_noid"], b["label_noid"])


def test_view_heads_are_the_merged_models_own(merged_run):
    cfg, _, _, _, _ = merged_run
    model, _ = load_merged(f"{cfg['extract']['out']}/merged.onnx")
    heads = view_heads(model)
    assert [i.name for i in heads.graph.input] == ["prefacen", "prefacen_mean"]
    assert [o.name for o in heads.graph.output] == OUTPUTS[1:]
    assert not any(n.input and n.input[0] == "data" for n in heads.graph.node)


# --------------------------------------------------------------------------- old runs and bad metadata


def test_old_single_view_run_merges_and_labels_as_before(views_run, tmp_path):
    """No `views` in metrics.json: today's outputs; a model without introspect.views labels the same rows."""
    cfg, _, _, _ = views_run
    old = _copy(cfg, tmp_path / "old")
    (tmp_path / "old" / "run" / "metrics.json").write_text(json.dumps({"facets": [], "unknown": None}))
    r = merge.run(old)
    assert r.outputs == ["embedding", "cluster", "cluster_scores"] and "view " not in r.text()
    old["label"]["fast"] = False
    before = _rows(label.run(old, progress=False).labels)
    assert not any(k.startswith(("label_", "score_", "facets")) for k in before)
    assert not (tmp_path / "old" / "run" / "views").exists()
    path = tmp_path / "old" / "run" / "merged.onnx"
    model = onnx.load(path)  # as an older `merge` wrote it: no introspect.views
    props = {p.key: p.value for p in model.metadata_props if p.key != META + "views"}
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    onnx.save(model, path)
    _, meta = load_merged(path)
    assert "views" not in meta and [v["name"] for v in views_of(meta)] == ["center"]
    after = _rows(label.run(old, progress=False, overwrite=True).labels)
    assert np.array_equal(before["label"], after["label"]) and np.array_equal(before["score"], after["score"])
    r = label.run({**old, "label": {**old["label"], "fast": True}}, progress=False, overwrite=True)
    assert r.fast and np.array_equal(before["label"], _rows(r.labels)["label"])


def _meta_with(views):
    model = helper.make_model(helper.make_graph([], "g", [], []))
    clusters = [{"id": 0, "name": "a"}]
    helper.set_model_props(
        model, {META + "clusters": json.dumps(clusters), META + "views": json.dumps(views), META + "layer": "x"}
    )
    return model


CENTER_VIEW = {"name": "center", "feature": "center", "clusters": [{"id": 0, "name": "a"}], "grafted": "exact"}


@pytest.mark.parametrize(
    "views, message",
    [
        ([{**CENTER_VIEW, "name": "mean"}], "center first"),
        ([CENTER_VIEW, {**CENTER_VIEW, "name": "mean", "feature": "max"}], "feature 'max'"),
        ([CENTER_VIEW, {**CENTER_VIEW, "name": "../x"}], "view name"),
        ([CENTER_VIEW, {**CENTER_VIEW, "name": "mean"}, {**CENTER_VIEW, "name": "mean"}], "appears twice"),
        ([CENTER_VIEW, {**CENTER_VIEW, "name": "mean", "accuracy": 3}], "accuracy"),
        ([CENTER_VIEW, {**CENTER_VIEW, "name": "mean", "unknown_threshold": 0}], "unknown_threshold"),
        ([CENTER_VIEW, {**CENTER_VIEW, "name": "mean", "clusters": [{"id": 0, "name": "a/b"}]}], "file name"),
        ([CENTER_VIEW, {**CENTER_VIEW, "name": "mean", "facets": [{"id": 0, "clusters": [4]}]}], "facet 0 lists"),
        ("nope", "should be a list"),
    ],
)
def test_bad_views_metadata_is_refused(views, message):
    with pytest.raises(UserError, match=message):
        read_metadata(_meta_with(views))


def test_a_model_missing_a_views_outputs_is_refused(merged_run, tmp_path):
    cfg, _, _, _, _ = merged_run
    model = onnx.load(f"{cfg['extract']['out']}/merged.onnx")
    kept = [o for o in model.graph.output if o.name != "facets_mean"]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(UserError, match="facets_mean"):
        load_merged(tmp_path / "m.onnx")


@pytest.mark.parametrize(
    "names, message",
    [
        ('[views.mean.clusters]\n0 = "x"\n', "missing \\[1\\]"),
        ('[views.mean.clusters]\n0 = "x"\n1 = "X"\n', "both named"),
        ("[views.mean]\nclusters = 3\n", "views.mean.clusters"),
    ],
)
def test_bad_view_names_are_refused(views_run, tmp_path, names, message):
    cfg = _copy(views_run[0], tmp_path, '[names]\n0 = "a"\n1 = "b"\n2 = "c"\n' + names)
    with pytest.raises(UserError, match=message):
        merge.run(cfg, sample=4)
    assert not (tmp_path / "run" / "merged.onnx").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"classifier_file": "../classifier.onnx"}, "names classifier file"),
        ({"feature": "max"}, "feature 'max'"),
        ({"facets": [{"id": 0, "clusters": [7]}]}, "classifier_mean.onnx's clusters"),
    ],
)
def test_bad_views_in_metrics_are_refused(views_run, tmp_path, change, message):
    cfg = _copy(views_run[0], tmp_path)
    path = tmp_path / "run" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["views"][1].update(change)
    path.write_text(json.dumps(metrics))
    with pytest.raises(UserError, match=message):
        merge.run(cfg, sample=4)


def test_shards_joined_hold_every_views_columns(merged_run, tmp_path):
    from introspect.engine import stream
    from introspect.stages import extract

    cfg, _, _, _, _ = merged_run
    single = _copy(cfg, tmp_path / "single")
    single["label"]["fast"] = False
    one = _rows(label.run(single, progress=False).labels)
    sharded = _copy(cfg, tmp_path / "sharded")
    sharded["label"]["fast"] = False
    sharded["extract"]["chunk_size"] = 40
    for i in range(2):
        label.run(sharded, stream.Shard(i, 2), progress=False)
    extract.join(tmp_path / "sharded" / "run")
    joined = label.run(sharded, progress=False)
    got = _rows(joined.labels)
    for k in ("index", "label", "label_mean", "score_mean", "facets_mean", "label_noid"):
        assert np.array_equal(got[k], one[k]), k
    assert (tmp_path / "sharded" / "run" / "views" / "mean" / "clusters" / "dark.txt").is_file()


def _tamper_view(path: Path, view: str, **change: object) -> None:
    """Change a view's entry in the model's `introspect.views` metadata, in place (the graph untouched)."""
    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    views = json.loads(props[META + "views"])
    for v in views:
        if v["name"] == view:
            v.update(change)
    props[META + "views"] = json.dumps(views)
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    onnx.save(model, path)


def test_each_views_metadata_agrees_with_its_graph(merged_run):
    from introspect.engine import merged

    cfg, _, threshold, _, _ = merged_run
    model, _ = load_merged(f"{cfg['extract']['out']}/merged.onnx")
    assert merged.graph_threshold(model, "cluster_mean") == pytest.approx(threshold)
    assert merged.graph_threshold(model, "cluster_noid") is None
    assert np.array_equal(merged.graph_members(model, "facets_mean"), merged.membership([[0], [0, 1]], [0, 1]))
    assert merged.graph_members(model, "facets_noid") is None


VIEW_TAMPERED = {
    "view threshold differs": ("mean", lambda t: {"unknown_threshold": t / 3}, "threshold"),
    "view threshold dropped": ("mean", lambda t: {"unknown_threshold": None}, "threshold"),
    "view threshold added": ("noid", lambda t: {"unknown_threshold": 0.5}, "threshold"),
    "view facet clusters differ": (
        "mean",
        lambda t: {"facets": [{"id": 0, "name": "x", "clusters": [1]}, {"id": 1, "name": "y", "clusters": [0, 1]}]},
        "facets' clusters",
    ),
}


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("case", list(VIEW_TAMPERED))
def test_label_refuses_a_view_whose_metadata_is_not_its_graph(merged_run, tmp_path, capsys, case, fast):
    """The graph is the truth for every view: a tampered view's threshold or facets is one line on both paths."""
    from introspect import cli

    cfg = _copy(merged_run[0], tmp_path)
    out = Path(cfg["extract"]["out"])
    view, change, says = VIEW_TAMPERED[case]
    _tamper_view(out / "merged.onnx", view, **change(merged_run[2]))
    argv = ["label", "-q", "--out", str(out), "--list", cfg["data"]["list"], "--root", cfg["data"]["root"]]
    rc = cli.main(argv + ([] if fast else ["--no-fast"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert says in err[0] and f"view {view}" in err[0] and not (out / "labels.h5").exists()
