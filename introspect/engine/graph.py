"""Graph surgery: small functions from ONNX model to ONNX model, in the style of `onnx.compose`.

Nothing here hard-codes a node index, a tensor name or a map size: the layer is found or named,
and its shape comes from shape inference.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from ..errors import UserError

#: Ops that pass a tensor through unchanged at inference time; the layer is looked for behind them.
IDENTITY_LIKE = {"Dropout", "Identity"}
BATCH = "N"


@dataclass(frozen=True)
class FeatureMap:
    """A 4-D activation tensor the net computes from its input (a candidate layer)."""

    name: str
    op: str
    node_index: int
    shape: tuple[int | str, ...]

    @property
    def channels(self) -> int:
        return int(self.shape[1])


# --------------------------------------------------------------------------- preparation


def drop_initializer_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Old exporters list weights as graph inputs; runtimes then treat them as overridable."""
    model = copy_model(model)
    inits = {i.name for i in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return model


def drop_unused_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Inputs no node reads (SFace lists 29) would have to be fed for nothing."""
    model = copy_model(model)
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    keep = [i for i in model.graph.input if i.name in used]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return model


def make_batch_dynamic(model: onnx.ModelProto, dim_param: str = BATCH) -> onnx.ModelProto:
    """A fixed batch of 1 makes every batch a loop; intermediate shapes are re-inferred later."""
    model = copy_model(model)
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) > 0:
            dims[0].Clear()
            dims[0].dim_param = dim_param
    del model.graph.value_info[:]
    return model


def dequantize_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold DequantizeLinear over constant weights into float32 initializers.

    The runtime would redo this arithmetic on every call; precomputing it once is the same
    float32 math ((q - zero_point) * scale, per tensor, per axis or per block).
    """
    model = copy_model(model)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    folded: dict[str, onnx.TensorProto] = {}
    keep_nodes = []
    for node in g.node:
        if (
            node.op_type == "DequantizeLinear"
            and node.domain in ("", "ai.onnx")
            and all(name in inits for name in node.input if name)
        ):
            arrays = [numpy_helper.to_array(inits[name]) if name else None for name in node.input]
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            value = _dequantize(arrays, attrs.get("axis", 1), attrs.get("block_size", 0))
            folded[node.output[0]] = numpy_helper.from_array(value, node.output[0])
        else:
            keep_nodes.append(node)
    if not folded:
        return model
    used = {name for node in keep_nodes for name in node.input} | {o.name for o in g.output}
    new_inits = [i for i in g.initializer if i.name in used] + list(folded.values())
    del g.node[:]
    g.node.extend(keep_nodes)
    del g.initializer[:]
    g.initializer.extend(new_inits)
    return model


def _dequantize(arrays: list, axis: int, block_size: int) -> np.ndarray:
    q, scale = arrays[0], arrays[1].astype(np.float32)
    zero = arrays[2] if len(arrays) > 2 and arrays[2] is not None else np.zeros_like(scale)
    zero = zero.astype(np.float32)
    if scale.ndim > 0 and scale.size > 1:
        axis = axis % q.ndim
        if block_size:
            scale = np.repeat(scale, block_size, axis=axis).take(range(q.shape[axis]), axis=axis)
            zero = np.repeat(zero, block_size, axis=axis).take(range(q.shape[axis]), axis=axis)
        else:
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q.astype(np.float32) - zero) * scale).astype(np.float32)


def prepare(model: onnx.ModelProto, dequantize: bool = True) -> onnx.ModelProto:
    """Make a shipped model fit for batched extraction; checked with `onnx.checker`."""
    model = make_batch_dynamic(drop_unused_inputs(drop_initializer_inputs(model)))
    if dequantize:
        model = dequantize_weights(model)
    onnx.checker.check_model(model, full_check=True)
    return model


# --------------------------------------------------------------------------- layers


def data_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The single image input; several real inputs mean the model was not prepared."""
    inits = {i.name for i in model.graph.initializer}
    real = [i for i in model.graph.input if i.name not in inits]
    if len(real) != 1:
        names = ", ".join(i.name for i in real)
        raise UserError(
            f"the model has {len(real)} inputs ({names}); expected one image input: "
            "prepare it with `introspect model` or pass a single-input net"
        )
    return real[0]


def embedding_output(model: onnx.ModelProto, name: str = "auto") -> str:
    outputs = [o.name for o in model.graph.output]
    if name == "auto":
        return outputs[0]
    if name not in outputs:
        raise UserError(f"embedding output {name!r} is not an output of the model; it has: {', '.join(outputs)}")
    return name


def infer_shapes(model: onnx.ModelProto, image_size: tuple[int, int] | None = None) -> dict[str, tuple]:
    """Shapes of every tensor, with the batch named N and (optionally) the image size pinned."""
    probe = copy_model(model)
    dims = data_input(probe).type.tensor_type.shape.dim
    if image_size is not None and len(dims) == 4:
        for d, v in zip(dims[2:], image_size):
            if not d.dim_value:
                d.Clear()
                d.dim_value = v
    inferred = shape_inference.infer_shapes(probe, strict_mode=False)
    shapes = {}
    for v in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            shapes[v.name] = tuple(d.dim_value if d.dim_value else (d.dim_param or "?") for d in t.shape.dim)
    return shapes


def _data_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors computed from the image (weights reshaped or dequantized are not activations)."""
    live = {data_input(model).name}
    for node in model.graph.node:
        if any(name in live for name in node.input):
            live.update(node.output)
    return live


def feature_maps(model: onnx.ModelProto, image_size: tuple[int, int] | None = None) -> list[FeatureMap]:
    """Every 4-D activation with a spatial extent above 1 x 1, in graph order."""
    shapes = infer_shapes(model, image_size)
    live = _data_tensors(model)
    maps = []
    for i, node in enumerate(model.graph.node):
        for out in node.output:
            shape = shapes.get(out)
            if out in live and shape is not None and len(shape) == 4 and _spatial(shape) > 1:
                maps.append(FeatureMap(out, node.op_type, i, (BATCH,) + tuple(shape[1:])))
    return maps


def _spatial(shape: tuple) -> int:
    h, w = shape[2], shape[3]
    return h * w if isinstance(h, int) and isinstance(w, int) else 0


def detect_layer(model: onnx.ModelProto, embedding: str = "auto", image_size: tuple[int, int] | None = None) -> str:
    """The last feature map before the net compresses to its embedding.

    Walks back from the embedding through the activations; the first 4-D map met is what feeds
    Flatten / Reshape / GlobalAveragePool / Gemm. Dropout and identity-like ops in front of it
    are looked through, so the map itself (the reference's BatchNormalization) is returned.
    """
    maps = {m.name: m for m in feature_maps(model, image_size)}
    producers = {out: node for node in model.graph.node for out in node.output}
    live = _data_tensors(model)
    start = embedding_output(model, embedding)
    seen, queue = {start}, deque([start])
    while queue:
        name = queue.popleft()
        if name in maps:
            while producers.get(name) is not None and producers[name].op_type in IDENTITY_LIKE:
                name = producers[name].input[0]
            return name
        node = producers.get(name)
        for inp in node.input if node is not None else []:
            if inp in live and inp not in seen:
                seen.add(inp)
                queue.append(inp)
    raise UserError(
        "found no 4-D feature map before the embedding; name the layer with --layer (see `introspect layers`)"
    )


def resolve_layer(
    model: onnx.ModelProto, spec: str = "auto", embedding: str = "auto", image_size: tuple[int, int] | None = None
) -> FeatureMap:
    """'auto', a tensor name, or 'node:<index>' (the reference used node[-4])."""
    maps = feature_maps(model, image_size)
    by_name = {m.name: m for m in maps}
    if spec == "auto":
        return by_name[detect_layer(model, embedding, image_size)]
    name = spec
    if spec.startswith("node:"):
        try:
            name = model.graph.node[int(spec[5:])].output[0]
        except (ValueError, IndexError):
            raise UserError(
                f"layer {spec!r}: the model has {len(model.graph.node)} nodes; give node:<index> in range"
            ) from None
    if name not in by_name:
        listing = ", ".join(m.name for m in maps[-8:])
        raise UserError(
            f"layer {spec!r} is not a 4-D feature map of this model; candidates (last {min(8, len(maps))}): "
            f"{listing}; run `introspect layers MODEL` for all"
        )
    return by_name[name]


# --------------------------------------------------------------------------- outputs


def center_pixel(model: onnx.ModelProto, layer: FeatureMap, output: str | None = None) -> onnx.ModelProto:
    """Expose the layer's center pixel [..., H//2, W//2] as an N x C output (Slice + Squeeze).

    Done in the graph rather than in numpy so the runtime hands back C floats per image, not
    C x H x W.
    """
    h, w = layer.shape[2], layer.shape[3]
    if not (isinstance(h, int) and isinstance(w, int)):
        raise UserError(f"layer {layer.name!r} has no static height and width ({layer.shape}); set preprocess.size")
    opset = default_opset(model)
    if opset < 10:
        raise UserError(f"the model uses opset {opset}; convert it to opset >= 10 with onnx.version_converter first")
    model = copy_model(model)
    g = model.graph
    output = output or f"{layer.name}_center"
    p = f"{output}__"
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array([h // 2, w // 2], np.int64), p + "starts"),
            numpy_helper.from_array(np.array([h // 2 + 1, w // 2 + 1], np.int64), p + "ends"),
            numpy_helper.from_array(np.array([2, 3], np.int64), p + "axes"),
        ]
    )
    g.node.append(
        helper.make_node("Slice", [layer.name, p + "starts", p + "ends", p + "axes"], [p + "slice"], name=p + "Slice")
    )
    if opset >= 13:
        g.node.append(helper.make_node("Squeeze", [p + "slice", p + "axes"], [output], name=p + "Squeeze"))
    else:
        g.node.append(helper.make_node("Squeeze", [p + "slice"], [output], axes=[2, 3], name=p + "Squeeze"))
    g.output.append(helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, [BATCH, layer.channels]))
    return model


def take_images(
    model: onnx.ModelProto,
    input_name: str,
    size: tuple[int, int],
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    rgb: bool = True,
) -> onnx.ModelProto:
    """The net fed OpenCV's decoded images (N x H x W x 3 uint8, BGR), normalizing them itself.

    NCHW, channel order, cast and (x - mean) * (1 / std) become the first nodes, with OpenCV's
    blob arithmetic in float32, so the numbers are the same bit for bit. The decoding threads
    then hand over raw pixels and do no arithmetic, and a GPU receives a quarter of the bytes
    and normalizes them itself. The new input comes first in the graph's inputs, named
    `images` (`images_2`... if the net already uses that name).
    """
    taken = tensor_names(model.graph)
    images = next(n for n in ["images"] + [f"images_{k}" for k in range(2, len(taken) + 3)] if n not in taken)
    model = copy_model(model)
    g = model.graph
    p, x = f"{images}__", images
    nodes, weights = [], []

    def add(op: str, *inputs: str, **attrs) -> None:
        nonlocal x
        nodes.append(helper.make_node(op, [x, *inputs], [p + op], name=p + op, **attrs))
        x = p + op

    def const(name: str, value: np.ndarray) -> str:
        weights.append(numpy_helper.from_array(value, p + name))
        return p + name

    # Order matters on a CPU: moving bytes before the cast, and whole channel planes (Gather on
    # axis 1 of NCHW) rather than interleaved pixels, is 10x faster than cast-gather-transpose.
    add("Transpose", perm=[0, 3, 1, 2])
    if rgb:
        add("Gather", const("rgb", np.array([2, 1, 0], np.int64)), axis=1)
    add("Cast", to=onnx.TensorProto.FLOAT)
    if any(m != 0 for m in mean):
        add("Sub", const("mean", np.array(mean, np.float32).reshape(3, 1, 1)))
    if any(s != 1 for s in std):  # as OpenCV: times a float32 scale factor
        add("Mul", const("scale", np.array([1.0 / float(s) for s in std], np.float32).reshape(3, 1, 1)))
    nodes[-1].output[0] = input_name  # the last step feeds the net
    kept = [i for i in g.input if i.name != input_name]
    del g.input[:]
    g.input.extend([helper.make_tensor_value_info(images, onnx.TensorProto.UINT8, [BATCH, size[0], size[1], 3])] + kept)
    g.initializer.extend(weights)
    old = list(g.node)
    del g.node[:]
    g.node.extend(nodes + old)
    return model


def keep_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """Only what a stage fetches stays an output, so nothing else is computed or copied."""
    model = copy_model(model)
    by_name = {o.name: o for o in model.graph.output}
    del model.graph.output[:]
    model.graph.output.extend(by_name[n] for n in names)
    return model


def tensor_names(g: onnx.GraphProto) -> set[str]:
    """Every tensor name a graph (and its subgraphs) uses."""
    names = {v.name for v in list(g.input) + list(g.output) + list(g.value_info)}
    names |= {i.name for i in g.initializer} | {s.values.name for s in g.sparse_initializer}
    for node in g.node:
        names |= set(node.input) | set(node.output)
        for a in node.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                names |= tensor_names(sub)
    return names - {""}


def rename_tensors(model: onnx.ModelProto, mapping: dict[str, str]) -> onnx.ModelProto:
    """Rename tensors everywhere they appear in the main graph (nodes, inputs, outputs, weights)."""
    model = copy_model(model)
    g = model.graph
    for node in g.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
    for v in list(g.input) + list(g.output) + list(g.value_info) + list(g.initializer):
        v.name = mapping.get(v.name, v.name)
    return model


def add_top_probability(model: onnx.ModelProto, scores: str, output: str) -> onnx.ModelProto:
    """Add the top cluster's softmax probability as an N output (Softmax + ReduceMax), keeping the rest.

    In the graph, so a stream fetches it like any output, and two models that end in the same
    scores give the same probability (the very same kernels).
    """
    model = copy_model(model)
    g = model.graph
    soft = add_softmax(g, scores, f"{output}__softmax")
    add_reduce_max(g, default_opset(model), soft, output)
    g.output.append(helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, [BATCH]))
    return model


def add_softmax(g: onnx.GraphProto, scores: str, output: str) -> str:
    """A Softmax node over the columns of N x K `scores` (axis 1: the same at every opset for 2-D input)."""
    g.node.append(helper.make_node("Softmax", [scores], [output], axis=1, name=output))
    return output


def add_reduce_max(g: onnx.GraphProto, opset: int, x: str, output: str) -> str:
    """The row maxima of N x K `x` as an N tensor; ReduceMax's axes are an input from opset 18, an attribute before."""
    if opset >= 18:
        axes = f"{output}__axes"
        g.initializer.append(numpy_helper.from_array(np.array([1], np.int64), axes))
        g.node.append(helper.make_node("ReduceMax", [x, axes], [output], keepdims=0, name=output))
    else:
        g.node.append(helper.make_node("ReduceMax", [x], [output], axes=[1], keepdims=0, name=output))
    return output


def default_opset(model: onnx.ModelProto) -> int:
    """The model's ai.onnx opset (0 when it declares none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out
