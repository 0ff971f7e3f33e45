"""The net cut for extraction: what extract streams and what merge checks its graft against."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..errors import UserError
from . import graph, normcheck, runtime
from .diagnose import Failures, nothing_read
from .images import DecodeLimits, Preprocess, decode_batch
from .sources import Source, batch_reader
from .store import MEAN
from .stream import open_list

log = logging.getLogger(__name__)

#: Lines tried per wanted image before giving up (a list of 17 M missing files is not scanned).
TRIES_PER_IMAGE = 16
#: Images the preprocessing sanity check runs the net on, and when it warns.
SANITY_IMAGES = 64
SANITY_COSINE = 0.9
SANITY_CONSTANT = 0.5
#: What `model.pool` may name: the layer's centre pixel (the reference's feature) and its spatial mean.
POOLS = ("center", "mean")


def check_pool(pool: object) -> tuple[str, ...]:
    """`model.pool` as a checked tuple; a wrong value is one line (the centre is always kept: it is `prefacen`)."""
    ok = isinstance(pool, (list, tuple)) and all(isinstance(p, str) for p in pool)
    if not ok or any(p not in POOLS for p in pool) or len(set(pool)) != len(pool) or "center" not in pool:
        raise UserError(
            f"model.pool = {pool!r} should list each of {', '.join(map(repr, POOLS))} at most once, "
            'with "center" (the reference\'s feature): ["center"] or ["center", "mean"]'
        )
    return tuple(pool)


@dataclass(frozen=True)
class Extractor:
    """The net cut to fetch (center pixel, [spatial mean], embedding) for a batch, all from one forward pass.

    The stream puts the normalization in front. `mean` is the spatial mean's output, None when
    the pool leaves it out (then the cut is exactly the reference's).
    """

    model: onnx.ModelProto
    input: str
    center: str
    embedding: str
    layer: graph.FeatureMap
    dim: int
    mean: str | None = None

    @property
    def pool(self) -> tuple[str, ...]:
        return ("center", "mean") if self.mean else ("center",)

    @classmethod
    def build(
        cls, net: onnx.ModelProto, layer_spec: str, embedding: str, pre: Preprocess, pool: Sequence[str] = ("center",)
    ) -> Extractor:
        pool = check_pool(pool)
        size = pre.size
        inp = graph.data_input(net)
        _check_input(inp, size)
        layer = graph.resolve_layer(net, layer_spec, embedding, size)
        emb = graph.embedding_output(net, embedding)
        net = graph.expose(net, emb, size)  # an inner tensor becomes an output, so it is fetched
        cut = graph.center_pixel(net, layer)
        center = cut.graph.output[-1].name
        mean = None
        if "mean" in pool:
            cut = graph.spatial_mean(cut, layer)
            mean = cut.graph.output[-1].name
        shape = graph.infer_shapes(net, size).get(emb, ("?",))
        dim = shape[-1]
        if len(shape) != 2 or not isinstance(dim, int):
            raise UserError(
                f"the embedding {emb!r} has shape {list(shape)}, not [N, D] with a static D; "
                "name another tensor with --embedding (`introspect layers MODEL` lists the N x D ones)"
            )
        outputs = [center, emb] + ([mean] if mean else [])
        return cls(graph.keep_outputs(cut, outputs), graph.data_input(cut).name, center, emb, layer, dim, mean)

    @property
    def outputs(self) -> dict[str, str]:
        """Dataset name -> graph output: what extract stores per image (`prefacen_mean` only when pooled)."""
        fetch = {"prefacen": self.center, "facen": self.embedding}
        return fetch | ({MEAN: self.mean} if self.mean else {})


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


def sample_images(
    lst: Path, source: Source, pre: Preprocess, n: int, limits: DecodeLimits = DecodeLimits()
) -> tuple[np.ndarray, int]:
    """The first up-to-n images of the list that decode, preprocessed, and how many lines were tried."""
    lst = Path(lst)
    if not lst.is_file():
        raise UserError(f"image list {lst} does not exist; set data.list (the merged model is checked on its images)")
    failed = Failures()
    with open_list(lst) as f:
        lines = (ln.rstrip("\r\n") for ln in f)
        images, tried = sample_decoded(lines, source, pre.size, n, limits, failed)
        ended = next(lines, None) is None
    if len(images) == 0:
        raise UserError(nothing_read(failed, source, whole=ended, max_bytes=limits.max_bytes))
    return pre.blob(images), tried


def sample_decoded(
    lines: Iterable[str],
    source: Source,
    size: tuple[int, int],
    n: int,
    limits: DecodeLimits = DecodeLimits(),
    failed: Failures | None = None,
) -> tuple[np.ndarray, int]:
    """The first up-to-n of `lines` that decode (N x H x W x 3 uint8, BGR, resized), and how many were tried;
    the others' reasons go to `failed`."""
    it = iter(lines)
    got: list[np.ndarray] = []
    have = tried = 0
    while have < n and tried < TRIES_PER_IMAGE * n:
        batch = list(itertools.islice(it, n - have))
        if not batch:
            break
        tried += len(batch)
        read = batch_reader(source, batch, limits.max_bytes)  # a remote batch: all reads in flight
        images, ok, reasons = decode_batch(batch, read, size, max_pixels=limits.max_pixels)
        got.append(images)
        have += len(images)
        if failed is not None:
            for line, reason in zip(itertools.compress(batch, ~ok), reasons):
                failed.add(line, reason)
    if not got:
        return np.zeros((0, *size, 3), np.uint8), tried
    return np.concatenate(got), tried


def sanity(ex: Extractor, images: np.ndarray, sess=None) -> dict:
    """Cheap signs of a preprocessing mistake, from the cut net run on a few images (N x 3 x H x W float32).

    `mean_cosine`: the mean cosine between the embeddings of different images (self-pairs left
    out); with the wrong mean/std SFace's collapse to ~0.93 where right ones give ~0.07.
    `constant`: the share of embedding and center-pixel activations that are the same on every
    image (saturated, or dead); `nonfinite`: the share that is NaN or infinite. Rounded to two
    decimals: the figures are recorded in every shard's files, which a join compares.
    """
    return sanity_figures(*_center_and_embedding(ex, images, sess or session(ex)))


def _center_and_embedding(ex: Extractor, images: np.ndarray, sess) -> tuple[np.ndarray, np.ndarray]:
    try:
        return tuple(sess.run([ex.center, ex.embedding], {ex.input: images}))
    except Exception as e:  # noqa: BLE001  onnxruntime's errors: the net cannot run on images of this size
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise UserError(
            f"the net does not run on the first images ({first[:200]}); check the net and preprocess.size"
        ) from None


def sanity_figures(center: np.ndarray, emb: np.ndarray) -> dict:
    """`sanity`'s figures from the cut net's outputs."""
    acts = np.concatenate([emb.reshape(len(emb), -1), center.reshape(len(center), -1)], axis=1).astype(np.float64)
    finite = np.isfinite(acts)
    out = {"images": int(len(emb)), "nonfinite": round(float(1.0 - finite.mean()), 2)}
    x = np.where(finite, acts, 0.0)
    spread = x.max(axis=0) - x.min(axis=0)
    tol = 1e-6 * np.maximum(1.0, np.abs(x).max(axis=0))
    out["constant"] = round(float((spread <= tol).mean()), 2) if len(x) > 1 else 0.0
    e = np.where(np.isfinite(emb), emb, 0.0).astype(np.float64).reshape(len(emb), -1)
    n = len(e)
    if n > 1:
        unit = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        cos = unit @ unit.T
        out["mean_cosine"] = round(float((cos.sum() - np.trace(cos)) / (n * (n - 1))), 2)
    return out


def sanity_warning(check: dict) -> str | None:
    """One line when the figures look like a preprocessing mistake, else None."""
    hint = "check preprocess.mean/std/rgb against how the net was trained"
    if check.get("nonfinite", 0) > 0:
        return f"{check['nonfinite']:.0%} of the activations are NaN or infinite on the first images: {hint}"
    if check.get("mean_cosine", 0) > SANITY_COSINE:
        return f"embeddings of different images are nearly identical (mean cosine {check['mean_cosine']:.2f}): {hint}"
    if check.get("constant", 0) > SANITY_CONSTANT:
        return f"{check['constant']:.0%} of the activations are the same on every image (saturated or dead): {hint}"
    return None


def session(ex: Extractor):
    """The cut net on the CPU, quietly: the checks run it on a few images before the stream starts."""
    return runtime.create(ex.model, None, [runtime.CPU], "the net")


def check_preprocessing(
    ex: Extractor,
    pre: Preprocess,
    lines: Iterable[str],
    source: Source,
    limits: DecodeLimits,
    n: int = SANITY_IMAGES,
    mode: str = "warn",
) -> dict:
    """`sanity` on the first up-to-n decodable `lines`, and `normcheck` (the configured normalization against
    the standard ones, per `mode`: warn, strict, off), warning in one line when they look wrong.

    The figures: `sanity`'s keys, and under "normalization" `normcheck.compare`'s (absent when off).
    Lines that cannot be read are not refused here (extract counts failures itself): with no
    decodable image among the first lines the figures are {"images": 0}.
    """
    normcheck.check_mode(mode)
    try:
        images, _ = sample_decoded(lines, source, pre.size, n, limits)
    except (UserError, ValueError, OSError):
        images = np.zeros((0,))
    if len(images) == 0:
        return {"images": 0}
    sess = session(ex)
    center, emb = _center_and_embedding(ex, pre.blob(images), sess)
    check = sanity_figures(center, emb)
    line = sanity_warning(check)
    if line:
        log.warning(line)

    def embed(blob: np.ndarray) -> np.ndarray:
        return sess.run([ex.embedding], {ex.input: blob})[0]

    outcome = normcheck.run(embed, pre, images, mode, configured=emb)
    if outcome.figures:
        check["normalization"] = outcome.figures
    return check
