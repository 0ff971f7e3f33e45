"""Is the configured normalization the net's? Compare it with the standard alternatives on the first images.

A wrong mean/std does not break a face net: it still gives embeddings, only worse ones (on real
aligned faces SFace's 1-NN identity accuracy falls from 1.00 to ~0.47 while the embeddings' mean
cosine stays at 0.82-0.89). No absolute line on one figure holds across nets, so the check
compares: the same first images go through the net under the configured normalization and under
each standard one, and an alternative is named only when it spreads the embeddings clearly more
on BOTH measures (lower mean pairwise cosine by `COSINE_MARGIN`, and effective rank higher by the
factor `RANK_RATIO`). A net whose first layer undoes any affine input change (it normalizes
inside its graph) gives near-equal figures everywhere and stays quiet; so does a channel swap on
a net that barely cares about colour.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .images import Preprocess

log = logging.getLogger(__name__)

#: What `preprocess.check` takes: warn in one line, refuse before any work, or skip the comparison.
MODES = ("warn", "strict", "off")
#: An alternative is clearly better when its mean cosine is lower by this much (cosines of unit vectors) ...
COSINE_MARGIN = 0.15
#: ... and its effective rank higher by this factor; both, so one noisy figure cannot fire alone. Measured
#: on real aligned faces (docs: the normalization check): equivalent settings (RGB vs BGR on SFace, or any
#: affine change on a net that standardizes its input) differ by <= 0.05 and x 1.01; wrong ones by >= 0.42
#: and x 1.42. The margins sit between, each over twice the largest gap seen between equivalent settings.
RANK_RATIO = 1.25
#: Fewer images than this give no verdict (an effective rank over a handful of images says little).
MIN_IMAGES = 8
#: ImageNet's mean and std on the 0..255 scale, in RGB order.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def check_mode(mode: object) -> str:
    if mode not in MODES:
        raise UserError(f"preprocess.check = {mode!r}: one of {', '.join(map(repr, MODES))}")
    return str(mode)


def alternatives(pre: Preprocess) -> dict[str, Preprocess]:
    """The standard normalizations (in the net's channel order, `pre.rgb` kept), and `pre` with channels swapped."""

    def order(v: tuple[float, float, float]) -> tuple[float, float, float]:
        return v if pre.rgb else v[::-1]

    def make(mean, std, rgb=pre.rgb) -> Preprocess:
        return Preprocess(pre.size, tuple(float(m) for m in mean), tuple(float(s) for s in std), rgb)

    return {
        "0..255": make((0, 0, 0), (1, 1, 1)),
        "0..1": make((0, 0, 0), (255, 255, 255)),
        "[-1, 1]": make((127.5,) * 3, (127.5,) * 3),
        "(x - 127.5) / 128": make((127.5,) * 3, (128,) * 3),
        "ImageNet mean/std": make(order(IMAGENET_MEAN), order(IMAGENET_STD)),
        "BGR" if pre.rgb else "RGB": make(pre.mean, pre.std, not pre.rgb),
    }


def spread(emb: np.ndarray) -> dict[str, float]:
    """How spread the L2-normalised embeddings are: mean cosine of different images, effective rank.

    Effective rank = exp(entropy of the normalised singular values) of the unit embeddings (not
    centred: a shared direction is exactly the collapse looked for); 1 when all point one way, up
    to min(N, D) when they are orthogonal. NaN or infinite values count as zeros.
    """
    e = np.where(np.isfinite(emb), emb, 0.0).astype(np.float64).reshape(len(emb), -1)
    unit = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    n = len(unit)
    cos = unit @ unit.T
    mean_cos = float((cos.sum() - np.trace(cos)) / (n * (n - 1))) if n > 1 else 0.0
    s = np.linalg.svd(unit, compute_uv=False)
    p = s / s.sum() if s.sum() > 0 else np.ones(1)
    p = p[p > 0]
    return {"mean_cosine": round(mean_cos, 3), "effective_rank": round(float(np.exp(-(p * np.log(p)).sum())), 2)}


def clearly_better(alt: dict, conf: dict) -> bool:
    """The rule: lower mean cosine by COSINE_MARGIN AND effective rank higher by RANK_RATIO."""
    return (
        alt["mean_cosine"] <= conf["mean_cosine"] - COSINE_MARGIN
        and alt["effective_rank"] >= RANK_RATIO * conf["effective_rank"]
    )


def flags(pre: Preprocess, conf: Preprocess) -> str:
    """The `--set` flags that turn `conf` into `pre` (TOML lists and booleans, as `config.from_text` reads them);
    rgb only where it differs."""

    def toml(v: tuple[float, ...]) -> str:
        return "[" + ",".join(f"{x:g}" for x in v) + "]"

    # mean and std both, always (the pair is the setting); quoted: an unquoted [..] is a glob to the shell
    out = [f"--set 'preprocess.mean={toml(pre.mean)}'", f"--set 'preprocess.std={toml(pre.std)}'"]
    if pre.rgb != conf.rgb:
        out.append(f"--set preprocess.rgb={json.dumps(pre.rgb)}")
    return " ".join(out)


def setting(pre: Preprocess) -> dict:
    return {"mean": list(pre.mean), "std": list(pre.std), "rgb": pre.rgb}


def same(a: Preprocess, b: Preprocess) -> bool:
    return np.allclose(a.mean, b.mean) and np.allclose(a.std, b.std) and a.rgb == b.rgb


def compare(
    embed: Callable[[np.ndarray], np.ndarray], pre: Preprocess, images: np.ndarray, configured: np.ndarray | None = None
) -> dict:
    """The figures of the configured normalization and of each alternative, and the verdict.

    `embed` runs the net on an N x 3 x H x W blob; `images` are decoded N x H x W x 3 uint8 (BGR);
    `configured`: their embeddings under `pre` where the caller has them already.
    Returns {"configured": {...}, "alternatives": {name: {..., "flags"}}, "better": name or ""}:
    an alternative equal to the configured one is marked `"configured": true` and never better.
    """
    conf = spread(embed(pre.blob(images)) if configured is None else configured) | setting(pre)
    alts: dict[str, dict] = {}
    for name, alt in alternatives(pre).items():
        if same(alt, pre):
            alts[name] = dict(conf, configured=True)
            continue
        alts[name] = spread(embed(alt.blob(images))) | setting(alt) | {"flags": flags(alt, pre)}
    wins = [n for n, a in alts.items() if not a.get("configured") and clearly_better(a, conf)]
    if len(images) < MIN_IMAGES:
        wins = []
    best = max(wins, key=lambda n: (alts[n]["effective_rank"], -alts[n]["mean_cosine"]), default="")
    return {
        "images": int(len(images)),
        "configured": conf,
        "alternatives": alts,
        "better": best,
        "rule": f"mean cosine lower by >= {COSINE_MARGIN} and effective rank x >= {RANK_RATIO}",
    }


def message(figures: dict) -> str | None:
    """One line naming the clearly better normalization and the exact flags, or None."""
    best = figures.get("better")
    if not best:
        return None
    a, c = figures["alternatives"][best], figures["configured"]
    return (
        f"the configured normalization looks wrong for this net: {best} spreads the embeddings of the first "
        f"{figures['images']} images far more (mean cosine {a['mean_cosine']:.2f} vs {c['mean_cosine']:.2f}, "
        f"effective rank {a['effective_rank']:.1f} vs {c['effective_rank']:.1f}); "
        f'rerun with {a["flags"]} (or set preprocess.check = "off" if you are sure)'
    )


@dataclass(frozen=True)
class Outcome:
    """What the check decided: the figures to record and the line said (None when quiet)."""

    figures: dict
    line: str | None


def run(
    embed: Callable[[np.ndarray], np.ndarray],
    pre: Preprocess,
    images: np.ndarray,
    mode: str,
    configured: np.ndarray | None = None,
) -> Outcome:
    """`compare`, then warn (mode "warn") or refuse (mode "strict") when an alternative is clearly better."""
    if check_mode(mode) == "off" or len(images) < 2:
        return Outcome({}, None)
    figures = compare(embed, pre, images, configured)
    line = message(figures)
    if line and mode == "strict":
        raise UserError(
            line.replace(' (or set preprocess.check = "off" if you are sure)', "") + " (preprocess.check = strict)"
        )
    if line:
        log.warning(line)
    return Outcome(figures, line)
