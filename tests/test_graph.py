"""Graph surgery: preparing the shipped SFace, finding the layer, cutting out its center pixel."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import REPO
from onnx import TensorProto, helper, numpy_helper

from introspect.engine import graph, nets
from introspect.engine.images import Preprocess
from introspect.errors import UserError

SFACE_RAW = REPO / "models" / "face_recognition_sface_2021dec_int8bq.onnx"


# --------------------------------------------------------------------------- helpers


def make_model(nodes, inits, size=(8, 8), out="emb", out_shape=None, opset=17, cin=3, name="g") -> onnx.ModelProto:
    """A single-input image net from nodes and numpy initializers."""
    g = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, *size])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)],
        [
            numpy_helper.from_array(
                np.asarray(v, np.float32 if np.asarray(v).dtype.kind == "f" else np.asarray(v).dtype), k
            )
            for k, v in inits.items()
        ],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = {11: 6, 13: 7}.get(opset, 8)
    onnx.checker.check_model(model, full_check=True)
    return model


def rand(*shape, seed=0):
    return np.random.default_rng(seed).normal(0, 0.5, shape).astype(np.float32)


def bn_inits(prefix, c, seed=0):
    rng = np.random.default_rng(seed)
    return {
        f"{prefix}.g": rng.uniform(0.5, 1.5, c).astype(np.float32),
        f"{prefix}.b": rng.normal(0, 0.1, c).astype(np.float32),
        f"{prefix}.m": rng.normal(0, 0.1, c).astype(np.float32),
        f"{prefix}.v": rng.uniform(0.5, 1.5, c).astype(np.float32),
    }


def bn_node(x, prefix, out):
    return helper.make_node(
        "BatchNormalization", [x, f"{prefix}.g", f"{prefix}.b", f"{prefix}.m", f"{prefix}.v"], [out]
    )


def run(model: onnx.ModelProto, x: np.ndarray, outputs=None) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(outputs, {sess.get_inputs()[0].name: x})


def with_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """The same model with an extra (untyped shape) float output `name`."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return m


def candidates(model, size=None) -> list[str]:
    return [m.name for m in graph.feature_maps(model, size)]


# --------------------------------------------------------------------------- SFace


@pytest.fixture(scope="module")
def sface_raw() -> onnx.ModelProto:
    return onnx.load(nets.download_sface(SFACE_RAW))


@pytest.fixture(scope="module")
def sface_prepared(sface_raw) -> onnx.ModelProto:
    return graph.prepare(sface_raw)


@pytest.fixture(scope="module")
def sface_int8(sface_raw) -> onnx.ModelProto:
    return graph.prepare(sface_raw, dequantize=False)


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """8 raw-RGB 0..255 inputs (SFace normalizes inside its graph)."""
    rng = np.random.default_rng(1)
    return np.round(rng.random((8, 3, 112, 112)) * 255).astype(np.float32)


def _unused_inputs(model):
    read = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    return [i.name for i in model.graph.input if i.name not in read]


def test_sface_raw_has_29_unused_inputs(sface_raw):
    assert len(_unused_inputs(sface_raw)) == 29
    # and it cannot be used as is: several non-initializer inputs
    with pytest.raises(UserError, match="inputs"):
        graph.data_input(sface_raw)


@pytest.mark.parametrize("kind", ["dequantized", "int8"])
def test_prepare_sface_inputs_batch_checker(kind, sface_raw, sface_prepared, sface_int8):
    model = sface_prepared if kind == "dequantized" else sface_int8
    assert _unused_inputs(model) == []
    assert [i.name for i in model.graph.input] == ["data"]
    inits = {i.name for i in model.graph.initializer}
    assert not inits & {i.name for i in model.graph.input}
    for value in [model.graph.input[0], model.graph.output[0]]:
        first = value.type.tensor_type.shape.dim[0]
        assert first.dim_param and not first.dim_value, value
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == [3, 112, 112]
    onnx.checker.check_model(model, full_check=True)
    # the raw model is not modified in place
    assert len(sface_raw.graph.input) == 175


def test_prepare_sface_dequantize_removes_dequantize_linear(sface_prepared, sface_int8):
    ops = [n.op_type for n in sface_prepared.graph.node]
    assert "DequantizeLinear" not in ops
    assert all(
        i.data_type == TensorProto.FLOAT or i.data_type == TensorProto.INT64 for i in sface_prepared.graph.initializer
    )
    assert [n.op_type for n in sface_int8.graph.node].count("DequantizeLinear") == 29


@pytest.mark.parametrize("kind", ["dequantized", "int8"])
def test_prepared_sface_batch_1_equals_batch_8(kind, sface_prepared, sface_int8, faces):
    model = sface_prepared if kind == "dequantized" else sface_int8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    batch = sess.run(None, {"data": faces})[0]
    single = np.concatenate([sess.run(None, {"data": faces[i : i + 1]})[0] for i in range(len(faces))])
    assert batch.shape == (8, 128)
    np.testing.assert_allclose(batch, single, rtol=0, atol=1e-5)
    # and the images give different embeddings (the net is not degenerate on this input)
    assert np.abs(batch[0] - batch[1]).max() > 1e-2


def test_dequantized_equals_int8(sface_prepared, sface_int8, faces):
    a = run(sface_prepared, faces)[0]
    b = run(sface_int8, faces)[0]
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_dequantize_weights_matches_formula():
    """Per-tensor, per-axis and without zero point: (q - zero) * scale in float32."""
    q = np.arange(-12, 12, dtype=np.int8).reshape(4, 6)
    scale = np.array([0.5, 0.25, 2.0, 0.125], np.float32)
    zero = np.array([1, -2, 0, 3], np.int8)
    nodes = [
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w_axis"], axis=0),
        helper.make_node("DequantizeLinear", ["q", "s1"], ["w_tensor"]),
        helper.make_node("Add", ["w_axis", "w_tensor"], ["w"]),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "dq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
        [
            numpy_helper.from_array(q, "q"),
            numpy_helper.from_array(scale, "s"),
            numpy_helper.from_array(zero, "z"),
            numpy_helper.from_array(np.array(0.75, np.float32), "s1"),
        ],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    d = graph.dequantize_weights(m)
    assert [n.op_type for n in d.graph.node] == ["Add", "MatMul"]
    inits = {i.name: numpy_helper.to_array(i) for i in d.graph.initializer}
    expect_axis = (q.astype(np.float32) - zero.astype(np.float32)[:, None]) * scale[:, None]
    np.testing.assert_array_equal(inits["w_axis"], expect_axis)
    np.testing.assert_array_equal(inits["w_tensor"], q.astype(np.float32) * np.float32(0.75))
    x = rand(3, 4)
    np.testing.assert_allclose(run(d, x)[0], run(m, x)[0], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- layer detection


@pytest.mark.parametrize("kind", ["dequantized", "int8"])
def test_detect_sface_bn1(kind, sface_prepared, sface_int8):
    model = sface_prepared if kind == "dequantized" else sface_int8
    layer = graph.resolve_layer(model)
    assert layer.name == "bn1"
    assert layer.op == "BatchNormalization"
    assert layer.shape == ("N", 1024, 7, 7)
    assert layer.channels == 1024


def test_sface_int8_weight_reshapes_are_no_candidates(sface_int8):
    names = candidates(sface_int8)
    weights = [n.output[0] for n in sface_int8.graph.node if n.op_type == "Reshape"]
    assert len(weights) == 27
    assert not set(weights) & set(names)
    assert not [n for n in names if "weight" in n]
    assert "bn1" in names and "conv_1_conv2d" in names


def test_detect_tiny_resnet(tiny_model):
    model = onnx.load(tiny_model)
    layer = graph.resolve_layer(model)
    assert (layer.name, layer.op, layer.shape) == ("features_map", "BatchNormalization", ("N", 512, 7, 7))


def test_detect_conv_relu_gap_picks_relu():
    """The 1 x 1 GlobalAveragePool output is 4-D but no map: the Relu before it is the layer."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc"], ["emb"], transB=1),
    ]
    model = make_model(nodes, {"w": rand(5, 3, 3, 3), "fc": rand(4, 5)}, out_shape=["N", 4])
    assert "gap" not in candidates(model)
    assert graph.detect_layer(model) == "relu"
    assert graph.resolve_layer(model).shape == ("N", 5, 8, 8)


def test_detect_looks_through_dropout_and_identity():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
        bn_node("conv", "bn", "bn_out"),
        helper.make_node("Dropout", ["bn_out"], ["drop"]),
        helper.make_node("Identity", ["drop"], ["ident"]),
        helper.make_node("Reshape", ["ident", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["emb"]),
    ]
    inits = {
        "w": rand(5, 3, 3, 3),
        "shape": np.array([-1, 5 * 6 * 6], np.int64),
        "fc": rand(5 * 36, 4),
        **bn_inits("bn", 5),
    }
    model = make_model(nodes, inits, size=(6, 6), out_shape=["N", 4])
    assert {"drop", "ident", "bn_out"} <= set(candidates(model))
    assert graph.detect_layer(model) == "bn_out"
    layer = graph.resolve_layer(model)
    assert (layer.name, layer.op, layer.shape) == ("bn_out", "BatchNormalization", ("N", 5, 6, 6))


def test_reshaped_weights_are_never_candidates():
    """Like SFace's initializer -> Reshape -> Conv: a 4-D tensor, but not an activation."""
    nodes = [
        helper.make_node("Reshape", ["w_flat", "w_shape"], ["w_reshaped"]),
        helper.make_node("Conv", ["x", "w_reshaped"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Reshape", ["w2_flat", "w2_shape"], ["w2_reshaped"]),
        helper.make_node("Conv", ["relu", "w2_reshaped"], ["conv2"], pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["conv2"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc"], ["emb"], transB=1),
    ]
    inits = {
        "w_flat": rand(6 * 3 * 3 * 3),
        "w_shape": np.array([6, 3, 3, 3], np.int64),
        "w2_flat": rand(4 * 6 * 3 * 3),
        "w2_shape": np.array([4, 6, 3, 3], np.int64),
        "fc": rand(3, 4 * 8 * 8),
    }
    model = make_model(nodes, inits, out_shape=["N", 3])
    shapes = graph.infer_shapes(model)
    assert shapes["w_reshaped"] == (6, 3, 3, 3)  # 4-D with a 3 x 3 extent: looks like a map
    names = candidates(model)
    assert names == ["conv", "relu", "conv2"]
    assert graph.detect_layer(model) == "conv2"
    with pytest.raises(UserError):
        graph.resolve_layer(model, "w2_reshaped")


# --------------------------------------------------------------------------- resolve_layer


def test_resolve_layer_by_name_and_node_index(tiny_model):
    model = onnx.load(tiny_model)
    assert graph.resolve_layer(model, "features_map").name == "features_map"
    assert graph.resolve_layer(model, "node:-5").name == "features_map"
    s2 = graph.resolve_layer(model, "s2.out")
    assert (s2.op, s2.shape) == ("Relu", ("N", 64, 7, 7))
    idx = [n.name for n in model.graph.node].index("s2.out")
    assert graph.resolve_layer(model, f"node:{idx}") == s2
    stem = graph.resolve_layer(model, "stem")
    assert stem.shape == ("N", 8, 56, 56)


def reference_like(size=(7, 7)) -> onnx.ModelProto:
    """The reference ResNet's tail: ... -> BatchNormalization -> Flatten -> Gemm -> BatchNormalization."""
    c, d = 4, 6
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
        bn_node("conv", "bn", "680"),
        helper.make_node("Flatten", ["680"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["fc_out"], transB=1),
        bn_node("fc_out", "bn2", "emb"),
    ]
    inits = {
        "w": rand(c, 3, 3, 3),
        "fc": rand(d, c * size[0] * size[1]),
        "fcb": rand(d),
        **bn_inits("bn", c),
        **bn_inits("bn2", d, 1),
    }
    return make_model(nodes, inits, size=size, out_shape=["N", d])


def test_resolve_node_minus_4_on_reference_like_graph():
    model = reference_like()
    layer = graph.resolve_layer(model, "node:-4")
    assert (layer.name, layer.op, layer.shape) == ("680", "BatchNormalization", ("N", 4, 7, 7))
    assert graph.resolve_layer(model, "auto") == layer
    assert graph.resolve_layer(model, "680") == layer


def test_resolve_wrong_name_lists_candidates(tiny_model):
    model = onnx.load(tiny_model)
    with pytest.raises(UserError) as err:
        graph.resolve_layer(model, "no_such_tensor")
    text = str(err.value)
    assert "no_such_tensor" in text and "features_map" in text and "s2.out" in text
    assert "\n" not in text


@pytest.mark.parametrize("spec", ["node:-1", "node:9999", "node:abc", "fc", "flat", "input.1", "fc.w"])
def test_resolve_rejects_non_maps(tiny_model, spec):
    with pytest.raises(UserError):
        graph.resolve_layer(onnx.load(tiny_model), spec)


def test_no_feature_map_is_a_user_error():
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["gap"]), helper.make_node("Flatten", ["gap"], ["emb"])]
    model = make_model(nodes, {}, out_shape=["N", 3])
    assert candidates(model) == []
    with pytest.raises(UserError, match="--layer"):
        graph.resolve_layer(model)


# --------------------------------------------------------------------------- center pixel


def conv_net(size, opset, c=5):
    """x -> Conv (keeps H x W) -> 'fmap' -> GlobalAveragePool -> Flatten -> 'emb'."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["fmap"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["fmap"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["emb"]),
    ]
    return make_model(nodes, {"w": rand(c, 3, 3, 3)}, size=size, out_shape=["N", c], opset=opset)


@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize("size", [(7, 7), (4, 4), (6, 6), (5, 8)])
def test_center_pixel_equals_numpy(size, opset):
    model = conv_net(size, opset)
    layer = graph.resolve_layer(model)
    assert layer.name == "fmap" and layer.shape == ("N", 5) + size
    cut = graph.center_pixel(model, layer)
    onnx.checker.check_model(cut, full_check=True)
    center_name = cut.graph.output[-1].name
    squeeze = [n for n in cut.graph.node if n.op_type == "Squeeze"]
    assert len(squeeze) == 1
    if opset >= 13:
        assert len(squeeze[0].input) == 2 and not squeeze[0].attribute
    else:
        assert len(squeeze[0].input) == 1 and [a.name for a in squeeze[0].attribute] == ["axes"]
    x = rand(3, 3, *size, seed=2)
    center, emb, fmap = run(with_output(cut, "fmap"), x, [center_name, "emb", "fmap"])
    h, w = size
    assert center.shape == (3, 5)
    np.testing.assert_array_equal(center, fmap[..., h // 2, w // 2])
    np.testing.assert_array_equal(emb, run(model, x)[0])


def test_center_pixel_on_tiny_resnet(tiny_model):
    model = onnx.load(tiny_model)
    layer = graph.resolve_layer(model)
    cut = graph.keep_outputs(graph.center_pixel(model, layer, "center"), ["center", "embedding"])
    assert [o.name for o in cut.graph.output] == ["center", "embedding"]
    x = rand(2, 3, 112, 112, seed=3)
    center, emb, fmap = run(with_output(cut, "features_map"), x, ["center", "embedding", "features_map"])
    np.testing.assert_array_equal(center, fmap[:, :, 3, 3])
    np.testing.assert_allclose(emb, run(model, x)[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("opset", [11, 13, 17, 18, 21])
@pytest.mark.parametrize("size", [(7, 7), (4, 4), (5, 8)])
def test_spatial_mean_equals_numpy(size, opset):
    """One ReduceMean over H, W (axes an input from opset 18, an attribute before): numpy's mean, N x C."""
    model = conv_net(size, opset)
    layer = graph.resolve_layer(model)
    cut = graph.spatial_mean(graph.center_pixel(model, layer), layer)
    onnx.checker.check_model(cut, full_check=True)
    mean_name = cut.graph.output[-1].name
    assert mean_name == "fmap_mean"
    (node,) = [n for n in cut.graph.node if n.op_type == "ReduceMean"]
    if opset >= 18:
        assert len(node.input) == 2 and [a.name for a in node.attribute] == ["keepdims"]
    else:
        assert len(node.input) == 1 and sorted(a.name for a in node.attribute) == ["axes", "keepdims"]
    x = rand(3, 3, *size, seed=2)
    mean, center, fmap = run(with_output(cut, "fmap"), x, [mean_name, cut.graph.output[-2].name, "fmap"])
    assert mean.shape == (3, 5) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, fmap.astype(np.float64).mean(axis=(2, 3)), rtol=1e-6, atol=1e-6)
    assert not np.allclose(mean, center)  # a feature of its own, not the centre again
    np.testing.assert_array_equal(center, fmap[..., size[0] // 2, size[1] // 2])


def test_spatial_mean_picks_a_free_name():
    model = conv_net((4, 4), 17)
    layer = graph.resolve_layer(model)
    taken = graph.spatial_mean(model, layer, output="fmap_mean")  # the name is now used
    again = graph.spatial_mean(taken, layer)
    assert again.graph.output[-1].name == "fmap_mean_"
    a, b = run(again, rand(2, 3, 4, 4), ["fmap_mean", "fmap_mean_"])
    np.testing.assert_array_equal(a, b)


def test_center_pixel_rejects_old_opset_and_dynamic_maps():
    layer = graph.FeatureMap("fmap", "Conv", 0, ("N", 5, 7, 7))
    old = conv_net((7, 7), 17)
    old.opset_import[0].version = 9
    with pytest.raises(UserError, match="opset"):
        graph.center_pixel(old, layer)
    with pytest.raises(UserError):
        graph.center_pixel(conv_net((7, 7), 17), graph.FeatureMap("fmap", "Conv", 0, ("N", 5, "H", "W")))


# --------------------------------------------------------------------------- the net reads decoded images


PREPROCESSINGS = [
    Preprocess(),  # SFace: raw RGB 0..255
    Preprocess(mean=(127.5,) * 3, std=(127.5,) * 3),  # the reference's blob
    Preprocess(mean=(103.9, 116.8, 123.7), std=(57.4, 57.1, 58.4), rgb=False),  # per channel, BGR kept
]


@pytest.mark.parametrize("pre", PREPROCESSINGS, ids=["plain", "reference", "per-channel-bgr"])
def test_take_images_is_opencvs_blob_bit_for_bit(pre, tiny_model, sface_prepared):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    images[0] = np.arange(112 * 112 * 3).reshape(112, 112, 3) % 256  # every byte value
    for net in (onnx.load(tiny_model), sface_prepared):
        name = graph.data_input(net).name
        fed = graph.take_images(net, name, pre.size, pre.mean, pre.std, pre.rgb)
        onnx.checker.check_model(fed, full_check=True)
        new = fed.graph.input[0]
        assert new.name == "images" and new.type.tensor_type.elem_type == TensorProto.UINT8
        assert name not in {i.name for i in fed.graph.input}
        want = run(net, pre.blob(images))
        got = ort.InferenceSession(fed.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"images": images}
        )
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)


def test_take_images_picks_a_free_input_name():
    net = conv_net((7, 7), 17)
    net = graph.rename_tensors(net, {"x": "images"})
    fed = graph.take_images(net, "images", (7, 7))
    assert fed.graph.input[0].name == "images_2"
    onnx.checker.check_model(fed, full_check=True)
    x = np.random.default_rng(5).integers(0, 256, (2, 7, 7, 3), dtype=np.uint8)
    got = ort.InferenceSession(fed.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["emb"], {"images_2": x}
    )[0]
    np.testing.assert_array_equal(got, run(net, Preprocess(size=(7, 7)).blob(x))[0])
