"""The merge stage: the classifier grafted onto the net gives what net + classifier.onnx give."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_config, write_images
from onnx import TensorProto, helper, numpy_helper
from threadpoolctl import threadpool_limits

from introspect.engine import graph, nets, runtime
from introspect.engine.extractor import Extractor
from introspect.engine.images import Preprocess, read_batch
from introspect.engine.merged import read_metadata
from introspect.errors import UserError
from introspect.science import classifier
from introspect.stages import merge

PRE = Preprocess(size=(112, 112))


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Threaded BLAS on small matrices and 2 shared cores is slower, not faster."""
    with threadpool_limits(1):
        yield


def load_images(root, rel, pre=PRE) -> np.ndarray:
    images, ok, _ = read_batch([str(root / p) for p in rel], pre.size)
    assert ok.all()
    return pre.blob(images)


def fit_head(X: np.ndarray, net: onnx.ModelProto, k: int = 3, seed: int = 0) -> onnx.ModelProto:
    """A classifier of k clusters (quantiles along a random direction), exported as the stage does."""
    rng = np.random.default_rng(seed)
    proj = X @ rng.normal(size=X.shape[1])
    y = np.searchsorted(np.quantile(proj, np.linspace(0, 1, k + 1)[1:-1]), proj)
    est = classifier.make_classifier(cv=2, Cs=[1.0]).fit(X, y)
    return classifier.match_net(classifier.to_onnx(est, X.shape[1]), net)


def two_step(ex: Extractor, head: onnx.ModelProto, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """(embedding, label, scores) the way the stages before merge compute them."""
    center, emb = runtime.session(ex.model, "cpu").run([ex.center, ex.embedding], {ex.input: x})
    label, scores = runtime.session(head, "cpu").run(None, {classifier.INPUT: center})
    return emb, label, scores


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny ResNet, its cut, 12 generated images, and a classifier fitted on their rows."""
    root = tmp_path_factory.mktemp("merge_data")
    rel = write_images(root, 12)
    net = nets.tiny_resnet(seed=0)
    ex = Extractor.build(net, "auto", "auto", PRE)
    x = load_images(root, rel)
    center = runtime.session(ex.model, "cpu").run([ex.center], {ex.input: x})[0]
    return net, ex, fit_head(center, net), x, root, rel


def test_graft_on_tiny_resnet_matches_the_two_step_path(tiny):
    net, ex, head, x, _, _ = tiny
    merged = merge.graft(net, head, ex.layer, "auto")
    onnx.checker.check_model(merged, full_check=True)
    outs = merged.graph.output
    assert [o.name for o in outs] == ["embedding", "cluster", "cluster_scores"]
    assert [o.type.tensor_type.elem_type for o in outs] == [TensorProto.FLOAT, TensorProto.INT64, TensorProto.FLOAT]
    assert [o.type.tensor_type.shape.dim[0].dim_param for o in outs] == ["N"] * 3
    assert len(merged.graph.input) == 1 and merged.graph.input[0].name == "input.1"
    sess = runtime.session(merged, "cpu")
    ids = merge.cluster_ids(head)
    assert ids == [0, 1, 2]
    for n in (1, 5, len(x)):
        emb, label, scores = sess.run(None, {"input.1": x[:n]})
        emb2, label2, scores2 = two_step(ex, head, x[:n])
        assert emb.shape == (n, 128) and label.shape == (n,) and scores.shape == (n, 3)
        assert label.dtype == np.int64 and scores.dtype == np.float32
        assert np.array_equal(label, label2)
        assert np.abs(scores - scores2).max() < 1e-4 and np.abs(emb - emb2).max() < 1e-5
        assert np.array_equal(label, np.array(ids)[scores.argmax(axis=1)])  # column j is cluster ids[j]
    assert len(set(sess.run(["cluster"], {"input.1": x})[0])) > 1  # the comparison is not trivial


def test_graft_keeps_an_inner_tensor_embedding(tiny):
    """model.embedding names `fc`, the Gemm before the net's last BatchNormalization: the merged model returns it."""
    net, _, head, x, _, _ = tiny
    ex = Extractor.build(net, "auto", "fc", PRE)
    merged = merge.graft(net, head, ex.layer, "fc")
    assert [o.name for o in merged.graph.output] == ["fc", "cluster", "cluster_scores"]
    assert merged.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 128
    emb, label, scores = runtime.session(merged, "cpu").run(None, {"input.1": x})
    emb2, label2, scores2 = two_step(ex, head, x)
    assert np.array_equal(label, label2) and np.abs(emb - emb2).max() < 1e-5
    assert merge.verify(merged, ex, head, x)["label_mismatches"] == 0


def test_metadata_round_trip(tiny):
    net, ex, head, _, _, _ = tiny
    info = {
        "clusters": [{"id": 0, "name": "glasses"}, {"id": 1, "name": "hat"}, {"id": 2, "name": "cluster_2"}],
        "layer": ex.layer.name,
        "embedding": "embedding",
        "preprocess": PRE.as_dict(),
        "input": "input.1",
        "net_sha256": "ab" * 32,
        "classifier_sha256": "cd" * 32,
        "outputs": merge.describe_outputs("embedding", [0, 1, 2], "input.1"),
    }
    merged = merge.with_metadata(merge.graft(net, head, ex.layer, "auto"), info)
    back = read_metadata(onnx.load_from_string(merged.SerializeToString()))
    assert back == info
    assert "raw scores" in back["outputs"] and "[0, 1, 2]" in back["outputs"]
    with pytest.raises(UserError, match="no introspect metadata"):
        read_metadata(net)


def small_net(opset: int = 13, ir: int = 7) -> onnx.ModelProto:
    """N x 3 x 32 x 32 -> a 4 x 4 and a 6 x 6 map (Conv + BatchNormalization) -> Gemm embedding."""
    rng = np.random.default_rng(1)
    inits, nodes = [], []

    def w(name, *shape):
        inits.append(numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name))
        return name

    for name, stride, _ in (("map4", 8, 4), ("map6", 6, 6)):
        nodes.append(
            helper.make_node(
                "Conv", ["x", w(f"{name}.w", 8, 3, 3, 3)], [f"{name}.conv"], strides=[stride] * 2, pads=[1] * 4
            )
        )
        bn = [w(f"{name}.g", 8), w(f"{name}.b", 8), w(f"{name}.m", 8)]
        inits.append(numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), f"{name}.v"))
        nodes.append(helper.make_node("BatchNormalization", [f"{name}.conv", *bn, f"{name}.v"], [name]))
        nodes.append(helper.make_node("Flatten", [name], [f"{name}.flat"], axis=1))
    nodes.append(helper.make_node("Concat", ["map4.flat", "map6.flat"], ["flat"], axis=1))
    nodes.append(helper.make_node("Gemm", ["flat", w("fc.w", 16, 8 * (16 + 36)), w("fc.b", 16)], ["emb"], transB=1))
    g = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", 16])],
        inits,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("name, hw, center", [("map4", 4, 2), ("map6", 6, 3)])
def test_graft_takes_the_center_pixel_of_any_map(name, hw, center):
    net = small_net()
    layer = graph.resolve_layer(net, name)
    assert layer.shape[2:] == (hw, hw)
    x = np.random.default_rng(2).normal(size=(6, 3, 32, 32)).astype(np.float32)
    exposed = _copy_with_output(net, name, layer)
    fmap = runtime.session(exposed, "cpu").run([name], {"x": x})[0]
    head = classifier.to_onnx(  # the skl2onnx default opset and IR: graft must match them to the net's
        classifier.make_classifier(cv=2, Cs=[1.0]).fit(fmap[:, :, center, center], [0, 1, 2] * 2), 8
    )
    assert head.ir_version != net.ir_version
    merged = merge.graft(net, head, layer, "auto")
    _, label, scores = runtime.session(merged, "cpu").run(None, {"x": x})
    clf = runtime.session(head, "cpu")
    label2, scores2 = clf.run(None, {classifier.INPUT: np.ascontiguousarray(fmap[:, :, center, center])})
    assert np.array_equal(label, label2) and np.abs(scores - scores2).max() < 1e-5
    _, off = clf.run(None, {classifier.INPUT: np.ascontiguousarray(fmap[:, :, center - 1, center - 1])})
    assert np.abs(scores - off).max() > 1e-3  # another pixel would have been told apart


def _copy_with_output(net, name, layer):
    out = onnx.ModelProto()
    out.CopyFrom(net)
    out.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(layer.shape)))
    return out


def test_graft_on_sface(sface_model, tmp_path):
    net = onnx.load(sface_model)
    ex = Extractor.build(net, "auto", "auto", PRE)
    assert (ex.layer.name, ex.layer.channels) == ("bn1", 1024)
    X = np.random.default_rng(0).normal(size=(12, 1024)).astype(np.float32)
    head = fit_head(X, net)
    merged = merge.graft(net, head, ex.layer, "auto")
    onnx.checker.check_model(merged, full_check=True)
    assert [o.name for o in merged.graph.output] == [ex.embedding, "cluster", "cluster_scores"]
    x = load_images(tmp_path, write_images(tmp_path, 4))
    _, label, scores = runtime.session(merged, "cpu").run(None, {ex.input: x})
    _, label2, scores2 = two_step(ex, head, x)
    assert np.array_equal(label, label2) and np.abs(scores - scores2).max() < 1e-4


# --------------------------------------------------------------------------- the stage


@pytest.fixture
def run_cfg(tmp_path, tiny_model, tiny):
    """A run folder holding classifier.onnx, and a list whose first line does not decode."""
    _, _, head, _, root, rel = tiny
    out = tmp_path / "run"
    out.mkdir()
    onnx.save(head, out / "classifier.onnx")
    lst = tmp_path / "list.txt"
    lst.write_text("".join(p + "\n" for p in ["missing.jpg", *rel]))
    return make_config(lst, root, tiny_model, out)


def test_run_writes_a_verified_model_and_takes_new_names(run_cfg, tiny):
    out = run_cfg["extract"]["out"]
    r = merge.run(run_cfg)
    v = r.verification
    assert v["rows"] == 12 and v["lines_tried"] == 13 and v["label_mismatches"] == 0
    assert v["max_score_diff"] < 1e-4 and v["max_embedding_diff"] < 1e-5
    assert r.outputs == ["embedding", "cluster", "cluster_scores"] and r.names_created
    text = open(f"{out}/cluster_names.toml").read()
    assert text.startswith("# Name each cluster") and '1 = "cluster_1"' in text
    meta = read_metadata(onnx.load(f"{out}/merged.onnx"))
    assert meta["clusters"] == [{"id": k, "name": f"cluster_{k}"} for k in range(3)]
    assert meta["layer"] == "features_map" and meta["input"] == "input.1" and meta["embedding"] == "embedding"
    assert meta["preprocess"] == PRE.as_dict()
    assert meta["net_sha256"] == nets.sha256_file(run_cfg["model"]["path"])
    assert meta["classifier_sha256"] == nets.sha256_file(f"{out}/classifier.onnx")
    assert "12 images" in r.text() and "cluster_scores" in r.text()

    open(f"{out}/cluster_names.toml", "w").write(text.replace('"cluster_1"', '"sunglasses"'))
    r = merge.run(run_cfg, sample=4)
    assert r.verification["rows"] == 4 and not r.names_created
    meta = read_metadata(onnx.load(f"{out}/merged.onnx"))
    assert [c["name"] for c in meta["clusters"]] == ["cluster_0", "sunglasses", "cluster_2"]


def test_verification_failure_writes_nothing(run_cfg, monkeypatch):
    graft = merge.graft

    def perturbed(net, head, layer, embedding, more=()):
        head = onnx.load_from_string(head.SerializeToString())
        lc = next(n for n in head.graph.node if n.op_type == "LinearClassifier")
        att = next(a for a in lc.attribute if a.name == "intercepts")
        att.floats[:] = [f + 0.01 * i for i, f in enumerate(att.floats)]
        return graft(net, head, layer, embedding, more)

    monkeypatch.setattr(merge, "graft", perturbed)
    with pytest.raises(merge.VerificationError, match="nothing was written"):
        merge.run(run_cfg)
    assert sorted(p.name for p in Path(run_cfg["extract"]["out"]).iterdir()) == ["classifier.onnx"]


# --------------------------------------------------------------------------- mistakes


def test_classifier_width_must_match_the_layer(tiny):
    net, ex, _, _, _, _ = tiny
    head = fit_head(np.random.default_rng(0).normal(size=(12, 64)).astype(np.float32), net)
    msg = "classifier.onnx takes 64 features but layer features_map has 512 channels; run `make cluster` again"
    with pytest.raises(UserError, match=msg):
        merge.graft(net, head, ex.layer, "auto")


def test_unknown_layer(run_cfg):
    run_cfg["model"]["layer"] = "no_such_layer"
    with pytest.raises(UserError, match="'no_such_layer' is not a 4-D feature map"):
        merge.run(run_cfg)


@pytest.mark.parametrize("net_name", ["cluster", "cluster_scores"])
def test_net_with_a_tensor_named_like_an_output_is_refused(tiny, net_name):
    net, ex, head, _, _, _ = tiny
    renamed = graph.rename_tensors(net, {"fc": net_name})
    with pytest.raises(UserError, match=f"already has a tensor named {net_name}"):
        merge.graft(renamed, head, ex.layer, "auto")


def test_no_classifier(run_cfg):
    (Path(run_cfg["extract"]["out"]) / "classifier.onnx").unlink()
    with pytest.raises(UserError, match="run `make cluster` first"):
        merge.run(run_cfg)


def test_no_image_decodes(run_cfg, tmp_path):
    lst = tmp_path / "bad.txt"
    lst.write_text("missing.jpg\n\nlist.txt\n")
    run_cfg["data"]["list"] = str(lst)
    with pytest.raises(UserError, match=r"all 3 images failed \(missing: 2, empty line in list: 1\); e.g. missing.jpg"):
        merge.run(run_cfg)
    assert not (tmp_path / "run" / "merged.onnx").exists()


def test_names_file_defaults_and_round_trip(tmp_path):
    path = tmp_path / "cluster_names.toml"
    assert merge.load_names(path, [0, 2, 5]) == {0: "cluster_0", 2: "cluster_2", 5: "cluster_5"}
    merge.write_names(path, {0: 'a "quoted" name', 2: "ünïcode", 5: "x"})
    assert merge.load_names(path, [0, 2, 5]) == {0: 'a "quoted" name', 2: "ünïcode", 5: "x"}


@pytest.mark.parametrize(
    "body, message",
    [
        ('0 = "a"\n1 = "b"\n7 = "c"\n', r"missing \[2\], unknown \[7\]"),
        ('0 = "a"\n1 = "b"\n2 = "a"\n', "clusters 0 and 2 are both named 'a'"),
        ('0 = "Hat"\n1 = "b"\n2 = "hat"\n', "clusters 0 and 2 are both named 'hat'"),
        ('0 = "a"\n00 = "b"\n', "cluster 0 is named twice"),
        ('0 = "a/b"\n1 = "b"\n2 = "c"\n', "not usable as a file name"),
        ('0 = ".."\n1 = "b"\n2 = "c"\n', "not usable as a file name"),
        ('0 = "' + "x" * 101 + '"\n1 = "b"\n2 = "c"\n', "not usable as a file name"),
        ('0 = ""\n1 = "b"\n2 = "c"\n', "non-empty"),
        ('0 = 3\n1 = "b"\n2 = "c"\n', "non-empty text"),
        ('zero = "a"\n', "'zero' is not a cluster id"),
        ('0 = "a\n', "not valid TOML"),
    ],
)
def test_bad_names_file(tmp_path, body, message):
    path = tmp_path / "cluster_names.toml"
    path.write_text("[names]\n" + body)
    with pytest.raises(UserError, match=message):
        merge.load_names(path, [0, 1, 2])


def test_a_names_file_of_another_clustering_is_set_aside_not_an_error(tmp_path):
    from introspect.engine.merged import set_aside_if_stale, write_names

    path = tmp_path / "cluster_names.toml"
    write_names(path, {0: "glasses", 1: "masks", 2: "rest"}, classifier_sha="a" * 64)
    assert set_aside_if_stale(path, [0, 1, 2], "b" * 64) is None  # same ids: the user's names stay
    assert set_aside_if_stale(path, [0, 1, 2, 3], "a" * 64) is None  # same classifier: an edit, refused later
    aside = set_aside_if_stale(path, [0, 1, 2, 3], "b" * 64)  # re-clustered: other ids, other classifier
    assert aside == tmp_path / "cluster_names.aaaaaaaa.toml" and aside.is_file() and not path.exists()
