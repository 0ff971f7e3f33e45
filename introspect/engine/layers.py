"""Where to read a net: its image input, its feature maps (4-D activations), the embedding
candidates (2-D, N x D) and the layer auto-detection picks. Read-only questions about a graph;
the edits that use the answers are in `graph`, which re-exports these names.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import onnx
from onnx import shape_inference

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


def _shapes(inferred: onnx.ModelProto) -> dict[str, tuple]:
    shapes = {}
    for v in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            shapes[v.name] = tuple(d.dim_value if d.dim_value else (d.dim_param or "?") for d in t.shape.dim)
    return shapes


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
    """The embedding's tensor: 'auto' is the first output; any output or tensor a node computes may be named."""
    outputs = [o.name for o in model.graph.output]
    if name == "auto":
        return outputs[0]
    if name not in outputs and name not in {out for node in model.graph.node for out in node.output}:
        raise UserError(
            f"embedding {name!r} is not a tensor of the model; its outputs are: {', '.join(outputs[:5])}"
            f"{' ...' if len(outputs) > 5 else ''} (any N x D tensor will do: `introspect layers MODEL` lists them)"
        )
    return name


def infer_shapes(model: onnx.ModelProto, image_size: tuple[int, int] | None = None) -> dict[str, tuple]:
    """Shapes of every tensor, with the batch named N and (optionally) the image size pinned."""
    return _shapes(shape_inference.infer_shapes(_pinned(model, image_size), strict_mode=False))


def _pinned(model: onnx.ModelProto, image_size: tuple[int, int] | None) -> onnx.ModelProto:
    """A copy whose image input has H and W fixed to `image_size` where they are dynamic."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    dims = data_input(probe).type.tensor_type.shape.dim
    if image_size is not None and len(dims) == 4:
        for d, v in zip(dims[2:], image_size):
            if not d.dim_value:
                d.Clear()
                d.dim_value = v
    return probe


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


@dataclass(frozen=True)
class EmbeddingCandidate:
    """A 2-D activation (N x D, D static) the net computes from its image: what `--embedding` may name."""

    name: str
    op: str
    node_index: int
    dim: int
    output: bool  # a graph output (else an inner tensor, made an output when chosen)


def embedding_candidates(model: onnx.ModelProto, image_size: tuple[int, int] | None = None) -> list[EmbeddingCandidate]:
    """Every N x D activation, in graph order: the graph's outputs and the inner tensors alike (the features
    before a Softmax or an age head are such a tensor). `embedding_output(model, "auto")` is the first output."""
    shapes = infer_shapes(model, image_size)
    live = _data_tensors(model)
    outputs = {o.name for o in model.graph.output}
    found = []
    for i, node in enumerate(model.graph.node):
        for out in node.output:
            shape = shapes.get(out)
            if out in live and shape is not None and len(shape) == 2 and isinstance(shape[1], int):
                found.append(EmbeddingCandidate(out, node.op_type, i, shape[1], out in outputs))
    return found
