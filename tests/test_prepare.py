"""`introspect model prepare`: any ONNX net made fit for batched extraction, checked at batch 1 vs N."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import REPO, make_config, write_images
from onnx import TensorProto, helper, numpy_helper

from introspect import synth
from introspect.engine import graph, nets, runtime, store
from introspect.engine.extractor import Extractor, sample_images, sanity, sanity_warning
from introspect.engine.images import Preprocess
from introspect.engine.sources import FileSource
from introspect.errors import UserError
from introspect.stages import extract

RAW_SFACE = REPO / "models" / "face_recognition_sface_2021dec_int8bq.onnx"


def hand_net(
    batch: int = 1, reshape: list[int] | None = None, allowzero: int = 0, qdq: bool = True, hw=(8, 8)
) -> onnx.ModelProto:
    """Conv -> Relu -> Reshape (a flatten with a baked shape) -> MatMul with a quantized weight -> Softmax.

    What old exporters leave behind: an input nothing reads, the conv weight listed as an input,
    a fixed batch, `[1, -1]` for a flatten; the fc weight is int8 behind a DequantizeLinear and
    the bias a float behind QuantizeLinear + DequantizeLinear (a QDQ export).
    """
    rng = np.random.default_rng(0)
    h, w = hw
    conv_w = numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "conv.w")
    shape = numpy_helper.from_array(np.array(reshape or [batch, -1], np.int64), "flat.shape")
    q = numpy_helper.from_array(rng.integers(-127, 128, (4 * 8 * 8, 5)).astype(np.int8), "fc.q")
    qs = numpy_helper.from_array(np.array(0.01, np.float32), "fc.scale")
    qz = numpy_helper.from_array(np.array(0, np.int8), "fc.zero")
    bias = numpy_helper.from_array(rng.normal(0, 1, 5).astype(np.float32), "fc.bias_float")
    nodes = [
        helper.make_node("Conv", ["x", "conv.w"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("Reshape", ["relu", "flat.shape"], ["flat"], name="flatten_by_reshape", allowzero=allowzero),
        helper.make_node("DequantizeLinear", ["fc.q", "fc.scale", "fc.zero"], ["fc.w"], name="dq"),
        helper.make_node("MatMul", ["flat", "fc.w"], ["fc"], name="fc"),
    ]
    inits = [conv_w, shape, q, qs, qz]
    if qdq:
        nodes += [
            helper.make_node("QuantizeLinear", ["fc.bias_float", "fc.scale", "fc.zero"], ["fc.bias_q"], name="bq"),
            helper.make_node("DequantizeLinear", ["fc.bias_q", "fc.scale", "fc.zero"], ["fc.bias"], name="bdq"),
            helper.make_node("Add", ["fc", "fc.bias"], ["logits"], name="bias"),
        ]
        inits.append(bias)
    else:
        nodes.append(helper.make_node("Identity", ["fc"], ["logits"], name="bias"))
    nodes.append(helper.make_node("Softmax", ["logits"], ["prob"], axis=1, name="softmax"))
    g = helper.make_graph(
        nodes,
        "hand",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, h, w]),
            helper.make_tensor_value_info("unused", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("conv.w", TensorProto.FLOAT, [4, 3, 3, 3]),  # a weight listed as input
        ],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [batch, 5])],
        inits,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def run(model: onnx.ModelProto, x: np.ndarray, **feeds) -> np.ndarray:
    sess = runtime.session(model, "cpu")
    return sess.run(None, {"x": x, **feeds})[0]


def test_prepare_a_hand_built_net():
    raw = hand_net()
    prepared, did = graph.prepare_verbose(raw, dequantize=True)
    assert did.inputs_dropped == ["unused"]
    assert did.initializers_moved == 1
    assert "fixed at 1" in did.batch
    assert len(did.reshapes_fixed) == 1 and "flatten_by_reshape" in did.reshapes_fixed[0]
    assert "[0, -1]" in did.reshapes_fixed[0]
    assert did.weights_folded == 2
    assert [i.name for i in prepared.graph.input] == ["x"]
    assert not [n for n in prepared.graph.node if n.op_type in ("DequantizeLinear", "QuantizeLinear")]
    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)
    want = run(raw, x, unused=np.zeros(1, np.float32))
    np.testing.assert_allclose(run(prepared, x), want, atol=1e-5)  # ORT fuses the raw Q/DQ itself
    check = nets.check_batch(prepared)
    assert check["batch"] == 3 and check["max_diff"]["prob"] <= 1e-6
    x3 = np.random.default_rng(2).uniform(-1, 1, (3, 3, 8, 8)).astype(np.float32)
    assert run(prepared, x3).shape == (3, 5)
    assert any("folded into float32: 2" in line for line in did.lines())


def test_without_dequantize_the_quantized_weights_stay():
    prepared, did = graph.prepare_verbose(hand_net(), dequantize=False)
    assert did.weights_folded == 0
    assert any(n.op_type == "DequantizeLinear" for n in prepared.graph.node)
    nets.check_batch(prepared)


def test_a_baked_batch_fails_the_batch_check():
    """Only the batch made dynamic, the Reshape left as exported: batch 3 cannot run."""
    model = graph.make_batch_dynamic(graph.drop_unused_inputs(graph.drop_initializer_inputs(hand_net())))
    assert [b.node for b in graph.batch_reshapes(model, 1)] == ["flatten_by_reshape"]
    with pytest.raises(UserError, match="batch"):
        nets.check_batch(model)


def test_fixed_batch_other_than_1():
    raw = hand_net(batch=2)
    prepared, did = graph.prepare_verbose(raw)
    assert "fixed at 2" in did.batch and len(did.reshapes_fixed) == 1
    nets.check_batch(prepared)


def test_allowzero_uses_minus_one_when_it_can():
    prepared, did = graph.prepare_verbose(hand_net(reshape=[1, 256], allowzero=1))
    assert "[-1, 256]" in did.reshapes_fixed[0]
    nets.check_batch(prepared)


@pytest.mark.parametrize("reshape, allowzero", [([1, -1], 1), ([256, -1], 0)])
def test_unfixable_reshape_is_refused_naming_the_node(reshape, allowzero):
    with pytest.raises(UserError, match="flatten_by_reshape") as e:
        graph.prepare_verbose(hand_net(reshape=reshape, allowzero=allowzero))
    assert "\n" not in str(e.value)


def test_dynamic_size_needs_size(tmp_path):
    raw = hand_net(reshape=[1, 256])
    for d in raw.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.Clear()
        d.dim_param = "H"
    src, out = tmp_path / "dyn.onnx", tmp_path / "out" / "dyn.onnx"
    onnx.save(raw, src)
    with pytest.raises(UserError, match="--size"):
        nets.prepare_file(src, out)
    path, lines = nets.prepare_file(src, out, size=(8, 8))
    assert path == out and out.is_file() and lines[-1].startswith("checked: batch 3")


def test_cli_prepare(tmp_path):
    src, out = tmp_path / "hand.onnx", tmp_path / "hand_prepared.onnx"
    onnx.save(hand_net(), src)
    cmd = [sys.executable, "-m", "introspect.cli", "-q"]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    res = subprocess.run(
        [*cmd[:3], "model", "prepare", str(src), "--out", str(out), "--dequantize", "-q"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr
    assert "dropped: 1 (unused)" in res.stdout and "Reshapes fixed: 1" in res.stdout
    assert "folded into float32: 2" in res.stdout and res.stdout.strip().endswith(str(out))
    nets.check_batch(onnx.load(out))
    res = subprocess.run([*cmd[:3], "model", "prepare", str(src)], capture_output=True, text=True, env=env, cwd=REPO)
    assert res.returncode == 2 and "--out" in res.stderr and len(res.stderr.splitlines()) == 1
    res = subprocess.run([*cmd[:3], "model", "bogus"], capture_output=True, text=True, env=env, cwd=REPO)
    assert res.returncode == 2 and "bogus" in res.stderr


def test_prepare_sface_equals_model_sface(sface_model, tmp_path):
    """The generic command on the shipped int8 file gives what `introspect model sface` gives."""
    out, lines = nets.prepare_file(RAW_SFACE, tmp_path / "sface.onnx", dequantize=True)
    assert any("dropped: 29" in line for line in lines)
    assert any("folded into float32: 29" in line for line in lines)
    mine, theirs = onnx.load(out), onnx.load(sface_model)
    root = tmp_path / "img"
    rel = write_images(root, 5)
    lst = tmp_path / "list.txt"
    lst.write_text("".join(p + "\n" for p in rel))
    x, _ = sample_images(lst, FileSource(root), Preprocess((112, 112)), 5)
    a = runtime.session(mine, "cpu").run(None, {"data": x})[0]
    b = runtime.session(theirs, "cpu").run(None, {"data": x})[0]
    assert a.shape == (5, 128)
    np.testing.assert_allclose(a, b, atol=1e-5)


# --------------------------------------------------------------------------- an inner tensor as the embedding


def test_embedding_may_name_an_inner_tensor():
    net = nets.tiny_resnet(seed=0)
    ex = Extractor.build(net, "auto", "fc", Preprocess((112, 112)))
    assert ex.embedding == "fc" and ex.dim == 128
    assert [o.name for o in ex.model.graph.output] == [ex.center, "fc"]
    with pytest.raises(UserError, match="introspect layers") as e:
        Extractor.build(net, "auto", "nope", Preprocess((112, 112)))
    assert "embedding" in str(e.value) and "\n" not in str(e.value)


def test_extract_stores_an_inner_tensor_as_facen(tiny_model, dataset, tmp_path):
    lst, root, _ = dataset
    cfg = make_config(lst, root, tiny_model, tmp_path / "out", full=True)
    cfg["model"]["embedding"] = "fc"
    extract.run(cfg, progress=False)
    with store.open_h5(tmp_path / "out" / "full.h5") as f:
        facen = f["facen"][:5]
        assert f["facen"].shape[1] == 128
    net = graph.expose(nets.tiny_resnet(seed=0), "fc")
    x, _ = sample_images(lst, FileSource(root), Preprocess((112, 112)), 5)
    want = runtime.session(net, "cpu").run(["fc"], {"input.1": x})[0]
    np.testing.assert_allclose(facen, want, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- preprocessing sanity


def test_sanity_warning_lines():
    assert sanity_warning({"mean_cosine": 0.07, "constant": 0.0, "nonfinite": 0.0}) is None
    line = sanity_warning({"mean_cosine": 0.93, "constant": 0.0, "nonfinite": 0.0})
    assert "nearly identical (mean cosine 0.93)" in line and "preprocess.mean/std/rgb" in line
    assert "same on every image" in sanity_warning({"mean_cosine": 0.5, "constant": 0.8, "nonfinite": 0.0})
    assert "NaN" in sanity_warning({"mean_cosine": 0.5, "constant": 0.0, "nonfinite": 0.1})


def test_wrong_std_collapses_the_tiny_net_and_extract_warns(tiny_model, dataset, tmp_path, caplog):
    """std 1e6: every input is ~0, so every image gets the embedding of a blank one."""
    lst, root, _ = dataset
    cfg = make_config(lst, root, tiny_model, tmp_path / "out")
    cfg["preprocess"].update(mean=[0.0] * 3, std=[1e6] * 3)
    with caplog.at_level(logging.WARNING, logger="introspect"):
        extract.run(cfg, progress=False)
    warned = [r.getMessage() for r in caplog.records if "nearly identical" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0]
    recorded = json.loads(store.read_attrs(tmp_path / "out" / "subset.h5")["sanity"])
    assert recorded["images"] == 64 and recorded["mean_cosine"] > 0.99


def test_sanity_on_sface_right_vs_wrong_preprocessing(sface_model, tmp_path):
    """SFace normalizes in its graph: mean 0 / std 1 is right, 127.5 / 127.5 squashes every face to ~-1."""
    root, lst = tmp_path / "faces", tmp_path / "faces.txt"
    synth.synthesize(64, 0, root, lst, progress=False)
    net = onnx.load(sface_model)
    got = {}
    for key, m, s in (("right", 0.0, 1.0), ("wrong", 127.5, 127.5)):
        pre = Preprocess((112, 112), (m,) * 3, (s,) * 3, True)
        x, _ = sample_images(lst, FileSource(root), pre, 64)
        got[key] = sanity(Extractor.build(net, "auto", "auto", pre), x)["mean_cosine"]
    assert got["right"] < got["wrong"] - 0.2, got
