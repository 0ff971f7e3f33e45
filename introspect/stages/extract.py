"""The extract stage: run the net over a list of images, keep the layer's center pixel and the embedding.

One pass writes `full.h5` (every readable image) and `subset.h5` (the reference's random 2 %),
with `prefacen` (the center pixel) and `facen` (the embedding) per image. The streaming,
resuming and sharding are `stream`'s; this module says what to fetch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..engine import graph, store, stream
from ..engine.images import Preprocess
from ..engine.nets import sha256_file
from ..engine.stream import Shard, Summary, chunk_masks, join, scan_list, subset_mask  # noqa: F401  (the stage's API)
from ..errors import UserError


@dataclass(frozen=True)
class Extractor:
    """The net cut for extraction: fetches (center pixel, embedding) for a preprocessed batch."""

    model: onnx.ModelProto
    input: str
    center: str
    embedding: str
    layer: graph.FeatureMap
    dim: int

    @classmethod
    def build(cls, net: onnx.ModelProto, layer_spec: str, embedding: str, pre: Preprocess) -> Extractor:
        """The net cut to fetch (center pixel, embedding); the stream puts the normalization in front."""
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
            f"the net takes {fixed[0]} x {fixed[1]} images but preprocess.size is {list(size)}; set preprocess.size = {list(fixed)}"
        )


def identity(cfg: dict, model_sha: str, ex: Extractor, info: stream.ListInfo, pre: Preprocess) -> dict:
    """Everything that decides the rows: a resume or join only mixes files that agree on all of it.

    Paths are not part of it (a moved list or model is the same run); they are recorded beside.
    """
    e = cfg["extract"]
    return {
        "model_sha256": model_sha,
        "layer": ex.layer.name,
        "embedding": ex.embedding,
        "preprocess": store.dumps(pre.as_dict()),
        "list_sha256": info.sha256,
        "list_lines": info.lines,
        "fraction": float(e["fraction"]),
        "seed": int(e["seed"]),
        "chunk_size": int(e["chunk_size"]),
        "full": bool(e["full"]),
    }


def job(cfg: dict, ex: Extractor, ident: dict) -> stream.Job:
    """The stream for this net: (center pixel, embedding) into full.h5 and/or subset.h5."""
    results = ({"full": False} if cfg["extract"]["full"] else {}) | {"subset": True}
    schema = {"prefacen": ((ex.layer.channels,), np.float32), "facen": ((ex.dim,), np.float32)}
    fetch = {"prefacen": ex.center, "facen": ex.embedding}
    return stream.Job("extract", ex.model, ex.input, fetch, schema, ident, results)


def run(cfg: dict, shard: Shard = Shard(), overwrite: bool = False, progress: bool = True) -> Summary:
    """Extract per the pipeline config; resumes a killed run, refuses to mix with another run."""
    e = cfg["extract"]
    stream.validate(e)
    pre = Preprocess.from_config(cfg["preprocess"])
    info = scan_list(Path(cfg["data"]["list"]))
    model_path = Path(cfg["model"]["path"])
    if not model_path.is_file():
        raise UserError(f"model {model_path} does not exist; run `make model` or set model.path")
    ex = Extractor.build(onnx.load(model_path), cfg["model"]["layer"], cfg["model"]["embedding"], pre)
    ident = identity(cfg, sha256_file(model_path), ex, info, pre)
    root = Path(cfg["data"]["root"])
    provenance = {"model_path": str(model_path), "list_path": str(info.path), "data_root": str(root)}
    return stream.run(
        job(cfg, ex, ident),
        e,
        info.path,
        root,
        Path(e["out"]),
        pre,
        shard=shard,
        overwrite=overwrite,
        progress=progress,
        provenance=provenance,
        every_kind=("full", "subset"),
    )
