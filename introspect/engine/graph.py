"""Graph surgery: small functions from ONNX model to ONNX model, in the style of `onnx.compose`.

Nothing here hard-codes a node index, a tensor name or a map size: the layer is found or named,
and its shape comes from shape inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from ..errors import UserError
from .layers import (  # noqa: F401  (re-exported: graph.feature_maps, graph.resolve_layer... keep working)
    BATCH,
    IDENTITY_LIKE,
    FeatureMap,
    _data_tensors,
    _pinned,
    _shapes,
    _spatial,
    data_input,
    detect_layer,
    embedding_output,
    feature_maps,
    infer_shapes,
    resolve_layer,
)

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
        constant = node.domain in ("", "ai.onnx") and all(n in inits or n in folded for n in node.input if n)
        if constant and node.op_type in ("DequantizeLinear", "QuantizeLinear"):
            arrays = [
                numpy_helper.to_array(folded[name] if name in folded else inits[name]) if name else None
                for name in node.input
            ]
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "DequantizeLinear":
                value = _dequantize(arrays, attrs.get("axis", 1), attrs.get("block_size", 0))
            else:  # a QDQ export's float weight, quantized by the graph: fold it, the DequantizeLinear follows
                value = _quantize(arrays, attrs.get("axis", 1))
                if value is None:
                    keep_nodes.append(node)
                    continue
            folded[node.output[0]] = numpy_helper.from_array(value, node.output[0])
        else:
            keep_nodes.append(node)
    if not folded:
        return model
    used = {name for node in keep_nodes for name in node.input} | {o.name for o in g.output}
    new_inits = [i for i in g.initializer if i.name in used] + [v for k, v in folded.items() if k in used]
    del g.node[:]
    g.node.extend(keep_nodes)
    del g.initializer[:]
    g.initializer.extend(new_inits)
    return model


def _quantize(arrays: list, axis: int) -> np.ndarray | None:
    """QuantizeLinear of a constant (int8/uint8 zero point, round half to even, saturate); None if unusual."""
    x, scale = arrays[0].astype(np.float32), arrays[1].astype(np.float32)
    zero = arrays[2] if len(arrays) > 2 and arrays[2] is not None else np.zeros((), np.uint8)
    if zero.dtype not in (np.int8, np.uint8) or scale.ndim > 1:
        return None
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * x.ndim
        shape[axis % x.ndim] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    info = np.iinfo(zero.dtype)
    q = np.rint(x / scale) + zero.astype(np.float32)
    return np.clip(q, info.min, info.max).astype(zero.dtype)


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


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The batch size the real inputs pin (their first dimension), or None when it is dynamic."""
    inits = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name not in inits and len(dims) > 1 and dims[0].dim_value:
            return int(dims[0].dim_value)
    return None


@dataclass(frozen=True)
class BakedReshape:
    """A Reshape of an activation whose constant target shape pins the batch (`[1, -1]` for a flatten)."""

    node: str
    shape_input: str
    shape: tuple[int, ...]
    fix: tuple[int, ...] | None  # the same shape with the batch copied from the input; None if unsafe

    def line(self) -> str:
        return f"Reshape {self.node!r} bakes batch {self.shape[0]} into its shape {list(self.shape)}"


def batch_reshapes(model: onnx.ModelProto, batch: int | None = None) -> list[BakedReshape]:
    """Reshapes whose input carries the (dynamic) batch in axis 0 and whose constant shape starts with a literal.

    Run after `make_batch_dynamic`: shape inference then carries the batch name through the
    net, up to the first such Reshape (its output has a fixed first axis). The literal is the
    fixed batch (1, or `batch`) or any positive size; the fix replaces it with 0 ("copy from
    the input", when the node does not set allowzero) or -1 (when no other -1 is in the shape).
    A literal other than 1 or the batch moves the batch elsewhere and cannot be fixed here.
    """
    shapes = _shape_map(model)
    consts = _constants(model)
    live = _live_tensors(model)
    found = []
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[0] not in live:
            continue
        target = consts.get(node.input[1])
        dims = shapes.get(node.input[0])
        if target is None or target.ndim != 1 or not target.size or not dims or dims[0] != BATCH:
            continue
        target = tuple(int(v) for v in target)
        if target[0] <= 0:
            continue
        fix = None
        if target[0] in {1, batch or 1}:
            allowzero = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "allowzero"), 0)
            if not allowzero:
                fix = (0,) + target[1:]
            elif -1 not in target[1:]:
                fix = (-1,) + target[1:]
        found.append(BakedReshape(node.name or node.output[0], node.input[1], target, fix))
    return found


def fix_batch_reshapes(model: onnx.ModelProto, batch: int | None = None) -> tuple[onnx.ModelProto, list[str]]:
    """Give every batch-baking Reshape the batch of its input; one line naming the node when it cannot.

    Repeated until none is left, since a fixed Reshape lets the batch reach the next one.
    Returns the model and one line per fixed node.
    """
    done: list[str] = []
    for _ in range(len(model.graph.node) + 1):
        baked = batch_reshapes(model, batch)
        if not baked:
            return model, done
        bad = next((b for b in baked if b.fix is None), None)
        if bad is not None:
            raise UserError(
                f"{bad.line()}, and it cannot be made batch-safe (its first entry is not the batch, or allowzero "
                "with another -1); export the net with a dynamic batch"
            )
        model = copy_model(model)
        g = model.graph
        by_name = {n.name or n.output[0]: n for n in g.node}
        taken = tensor_names(g)
        for b in baked:
            new = next(n for n in (f"{b.shape_input}__batch{'_' * i}" for i in range(len(taken) + 1)) if n not in taken)
            taken.add(new)
            g.initializer.append(numpy_helper.from_array(np.array(b.fix, np.int64), new))
            by_name[b.node].input[1] = new
            done.append(f"{b.line()}: now {list(b.fix)}")
        del g.value_info[:]
    raise UserError("fixing the batch-baking Reshapes did not converge; export the net with a dynamic batch")


def _shape_map(model: onnx.ModelProto) -> dict[str, tuple]:
    return _shapes(shape_inference.infer_shapes(model, strict_mode=False))


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant nodes' values, by tensor name."""
    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(a.t)
    return out


def _live_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors computed from any real input (not from weights alone)."""
    inits = {i.name for i in model.graph.initializer}
    live = {i.name for i in model.graph.input if i.name not in inits}
    for node in model.graph.node:
        if any(name in live for name in node.input):
            live.update(node.output)
    return live


@dataclass
class Preparation:
    """What `prepare` did, in lines to print."""

    inputs_dropped: list[str]
    initializers_moved: int
    batch: str
    reshapes_fixed: list[str]
    weights_folded: int

    def lines(self) -> list[str]:
        dropped = ", ".join(self.inputs_dropped[:5]) + (" ..." if len(self.inputs_dropped) > 5 else "")
        return [
            f"inputs nothing reads, dropped: {len(self.inputs_dropped)}" + (f" ({dropped})" if dropped else ""),
            f"initializers listed as inputs, taken out: {self.initializers_moved}",
            f"batch: {self.batch}",
            f"batch-baking Reshapes fixed: {len(self.reshapes_fixed)}",
            *(f"  {line}" for line in self.reshapes_fixed),
            f"quantized weights folded into float32: {self.weights_folded}",
        ]


def prepare_verbose(model: onnx.ModelProto, dequantize: bool = True) -> tuple[onnx.ModelProto, Preparation]:
    """`prepare`, and what it did."""
    inits = {i.name for i in model.graph.initializer}
    moved = sum(1 for i in model.graph.input if i.name in inits)
    step = drop_initializer_inputs(model)
    before = [i.name for i in step.graph.input]
    step = drop_unused_inputs(step)
    kept = {i.name for i in step.graph.input}
    dropped = [n for n in before if n not in kept]
    batch = fixed_batch(step)
    step = make_batch_dynamic(step)
    step, fixed = fix_batch_reshapes(step, batch)
    folded = 0
    if dequantize:
        folded = sum(1 for n in step.graph.node if n.op_type == "DequantizeLinear")
        step = dequantize_weights(step)
        folded -= sum(1 for n in step.graph.node if n.op_type == "DequantizeLinear")
    onnx.checker.check_model(step, full_check=True)
    said = f"was fixed at {batch}, now dynamic ({BATCH})" if batch else f"already dynamic, named {BATCH}"
    return step, Preparation(dropped, moved, said, fixed, folded)


def prepare(model: onnx.ModelProto, dequantize: bool = True) -> onnx.ModelProto:
    """Make a shipped model fit for batched extraction; checked with `onnx.checker`."""
    return prepare_verbose(model, dequantize)[0]


# --------------------------------------------------------------------------- layers


def expose(model: onnx.ModelProto, name: str, image_size: tuple[int, int] | None = None) -> onnx.ModelProto:
    """The model with tensor `name` also a graph output (typed and shaped by shape inference)."""
    if name in {o.name for o in model.graph.output}:
        return model
    inferred = shape_inference.infer_shapes(_pinned(model, image_size), strict_mode=False)
    info = next((v for v in inferred.graph.value_info if v.name == name), None)
    model = copy_model(model)
    if info is None:
        info = helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
    model.graph.output.append(info)
    return model


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


def spatial_mean(model: onnx.ModelProto, layer: FeatureMap, output: str | None = None) -> onnx.ModelProto:
    """Expose the layer's mean over H and W (global average pooling) as an N x C output (one ReduceMean).

    Beside `center_pixel`: dark, gray or a mask is a property of the whole face, which the
    centre pixel alone barely decodes. ReduceMean's axes are an input from opset 18, an
    attribute before.
    """
    model = copy_model(model)
    g = model.graph
    if output is None:  # a name the net does not use already
        taken = tensor_names(g)
        output = next(n for n in (f"{layer.name}_mean{'_' * i}" for i in range(len(taken) + 1)) if n not in taken)
    if default_opset(model) >= 18:
        axes = f"{output}__axes"
        g.initializer.append(numpy_helper.from_array(np.array([2, 3], np.int64), axes))
        node = helper.make_node("ReduceMean", [layer.name, axes], [output], keepdims=0, name=f"{output}__ReduceMean")
    else:
        node = helper.make_node(
            "ReduceMean", [layer.name], [output], axes=[2, 3], keepdims=0, name=f"{output}__ReduceMean"
        )
    g.node.append(node)
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
