"""The net cut for extraction: what extract streams and what merge checks its graft against."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from ..errors import UserError
from . import graph
from .images import Preprocess


@dataclass(frozen=True)
class Extractor:
    """The net cut to fetch (center pixel, embedding) for a batch; the stream puts the normalization in front."""

    model: onnx.ModelProto
    input: str
    center: str
    embedding: str
    layer: graph.FeatureMap
    dim: int

    @classmethod
    def build(cls, net: onnx.ModelProto, layer_spec: str, embedding: str, pre: Preprocess) -> Extractor:
        size = pre.size
        inp = graph.data_input(net)
        _check_input(inp, size)
        layer = graph.resolve_layer(net, layer_spec, embedding, size)
        emb = graph.embedding_output(net, embedding)
        cut = graph.center_pixel(net, layer)
        center = cut.graph.output[-1].name
        dim = graph.infer_shapes(net, size).get(emb, ("?",))[-1]
        if not isinstance(dim, int):
            raise UserError(f"the embedding {emb!r} has no static width ({dim}); name another output with --embedding")
        return cls(graph.keep_outputs(cut, [center, emb]), graph.data_input(cut).name, center, emb, layer, dim)


def _check_input(inp: onnx.ValueInfoProto, size: tuple[int, int]) -> None:
    dims = [d.dim_value or None for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4 or (dims[1] not in (None, 3)):
        raise UserError(f"the net's input {inp.name!r} has shape {dims}; introspect feeds N x 3 x H x W images")
    fixed = tuple(dims[2:])
    if all(fixed) and fixed != tuple(size):
        raise UserError(
            f"the net takes {fixed[0]} x {fixed[1]} images but preprocess.size is {list(size)}; "
            f"set preprocess.size = {list(fixed)}"
        )
