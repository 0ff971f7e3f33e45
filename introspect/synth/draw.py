"""Drawing primitives: cv2 in fixed point, colours, and geometry for a whole block of images.

cv2 draws with integer coordinates; passing `shift` fractional bits gives sub-pixel,
anti-aliased shapes.  Two kinds of helpers live here:

* per-image ones (`fixed_point`, `fill_poly`, `ellipse`, `blend`, colours as tuples) for the
  few parts drawn one image at a time with their own random numbers (background, occluders);
* batch ones (`xy`, `column`, `Points`, `Ellipses`, `apply_affine`) for the face geometry,
  which is computed for a block of images at once with numpy (arrays of shape (B,) or
  (B, k)) because per-call numpy overhead on tiny arrays, not pixels, limits a Python renderer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

SHIFT = 4  # fractional bits for cv2 drawing: sub-pixel, anti-aliased shapes
ONE = float(1 << SHIFT)
AA = cv2.LINE_AA
L8 = cv2.LINE_8  # shading layers get blurred anyway; aliasing there is free and AA is not

Color = tuple[float, float, float]


def frozen(a: np.ndarray) -> np.ndarray:
    """Mark a module-level table read-only, so no caller can change it for everyone."""
    a.setflags(write=False)
    return a


# Upper half ellipse, left to right (cranium, hair outline).
_ARC = frozen(np.linspace(math.pi, 2 * math.pi, 13))
_ARC_COS, _ARC_SIN = frozen(np.cos(_ARC)), frozen(np.sin(_ARC))


# --------------------------------------------------------------------------- per image


def fixed_points(p: np.ndarray, off: np.ndarray | None = None) -> np.ndarray:
    """Float points -> cv2 fixed point, relative to `off`; rounds by +0.5 and truncation."""
    if off is not None:
        p = p - off
    return (p * ONE + 0.5).astype(np.int32)  # truncation error < 1/16 px for negatives: harmless


def fixed_point(x: float, y: float, off: np.ndarray | None = None) -> tuple[int, int]:
    """One float point -> cv2 fixed point, relative to `off`."""
    if off is not None:
        x, y = x - off[0], y - off[1]
    return int(x * ONE + 0.5), int(y * ONE + 0.5)


def fill_poly(img: np.ndarray, pts: np.ndarray, color: tuple, off: np.ndarray | None = None) -> None:
    """Fill a float polygon, anti-aliased."""
    cv2.fillPoly(img, [fixed_points(pts, off)], color, AA, SHIFT)


def polyline(img: np.ndarray, pts: np.ndarray, color: tuple, thickness: int = 1, closed: bool = False) -> None:
    """Stroke a float polyline, anti-aliased."""
    cv2.polylines(img, [fixed_points(pts)], closed, color, max(1, int(thickness)), AA, SHIFT)


def ellipse(
    img: np.ndarray,
    c: tuple,
    axes: tuple,
    angle: float,
    color: tuple,
    thickness: int = -1,
    off: np.ndarray | None = None,
) -> None:
    """A full float ellipse (filled unless `thickness` > 0), anti-aliased."""
    cv2.ellipse(
        img,
        fixed_point(c[0], c[1], off),
        (max(1, int(axes[0] * ONE)), max(1, int(axes[1] * ONE))),
        angle,
        0,
        360,
        color,
        thickness,
        AA,
        SHIFT,
    )


def bbox(p: np.ndarray, pad: float = 0.0) -> tuple[float, float, float, float]:
    """Bounding box (x0, y0, x1, y1) of float points (k, 2)."""
    mn, mx = p.min(0), p.max(0)
    return (mn[0] - pad, mn[1] - pad, mx[0] + pad, mx[1] + pad)


def blend(img: np.ndarray, box: tuple, alpha: float, draw: Callable[[np.ndarray, np.ndarray], None]) -> None:
    """Draw translucently inside a small region: cheap alpha for tints, lenses, stubble.

    `draw(overlay, offset)` paints on a copy of the region; `offset` is the region's top-left
    corner in float pixels, to subtract from image coordinates."""
    h, w = img.shape[:2]
    x0, y0 = max(0, int(box[0]) - 2), max(0, int(box[1]) - 2)
    x1, y1 = min(w, int(box[2]) + 3), min(h, int(box[3]) + 3)
    if x1 <= x0 or y1 <= y0:
        return
    roi = img[y0:y1, x0:x1]
    ov = roi.copy()
    draw(ov, np.array([x0, y0], np.float64))
    cv2.addWeighted(ov, alpha, roi, 1.0 - alpha, 0.0, dst=roi)


def float_filler(pts: np.ndarray, color: tuple) -> Callable[[np.ndarray, np.ndarray], None]:
    """A `blend` painter that fills the float polygon `pts` (image coordinates) in the region copy."""

    def draw(overlay: np.ndarray, off: np.ndarray) -> None:
        fill_poly(overlay, pts, color, off)

    return draw


def mix(a: tuple, b: tuple, t: float) -> Color:
    """Linear interpolation between two colours."""
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t)


def scaled(c: tuple, f: float) -> Color:
    """A colour made brighter or darker by one factor, capped at 255."""
    return (min(255.0, c[0] * f), min(255.0, c[1] * f), min(255.0, c[2] * f))


def tinted(c: tuple, f: tuple) -> Color:
    """A colour scaled per channel, capped at 255."""
    return (min(255.0, c[0] * f[0]), min(255.0, c[1] * f[1]), min(255.0, c[2] * f[2]))


def random_color(u: list, sat: float = 0.5, lo: float = 40, hi: float = 230) -> Color:
    """A random colour from four uniforms; sat mixes a grey level with a random hue."""
    base = (lo + (hi - lo) * u[0]) * (1 - sat)
    k = hi * sat / max(u[1], u[2], u[3], 1e-3)
    return (min(255.0, base + k * u[1]), min(255.0, base + k * u[2]), min(255.0, base + k * u[3]))


# --------------------------------------------------------------------------- a block at a time


def weighted_choice(u: np.ndarray, weights: tuple) -> np.ndarray:
    """Weighted picks (indices into `weights`) for a batch of uniforms."""
    cum = np.cumsum(weights) / np.sum(weights)
    return np.minimum(np.searchsorted(cum, u, side="right"), len(weights) - 1)


def random_colors(u: np.ndarray, sat: float, lo: float, hi: float) -> np.ndarray:
    """Batch cousin of random_color: (B, 4) uniforms -> (B, 3) colours (not the same numbers)."""
    base = lo + (hi - lo) * u[:, 0]
    m = np.maximum(u[:, 1:4].max(1), 1e-3)
    return np.minimum(base[:, None] * (1 - sat) + hi * sat * u[:, 1:4] / m[:, None], 255.0)


def xy(x: np.ndarray, y: np.ndarray | float) -> np.ndarray:
    """Stack x and y (broadcast) into points (..., 2)."""
    out = np.empty(np.shape(x) + (2,))
    out[..., 0] = x
    out[..., 1] = y
    return out


def column(a: np.ndarray) -> np.ndarray:
    """Per-image values (B,) as a column (B, 1), to broadcast against per-point samples (B, k)."""
    return a[:, None]


def color_list(c: np.ndarray) -> list[tuple]:
    """Per-image colours (B, 3) -> the tuples cv2 takes, clipped to 0..255."""
    return [tuple(r) for r in np.clip(c, 0.0, 255.0).tolist()]


def upper_arc(cx: np.ndarray, cy: np.ndarray, ax: np.ndarray, ay: np.ndarray) -> np.ndarray:
    """Upper half ellipses, left to right: (B, 13, 2)."""
    return xy(column(cx) + column(ax) * _ARC_COS, column(cy) + column(ay) * _ARC_SIN)


def join(*parts: np.ndarray) -> np.ndarray:
    """Join point runs (B, k, 2) and single points (B, 2) into polygons."""
    return np.concatenate([p[:, None] if p.ndim == 2 else p for p in parts], axis=1)


def apply_affine(A: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Apply per-image 2x3 affines A (B, 2, 3) to points (B, 2) or (B, k, 2)."""
    M = A[:, :, :, None] if p.ndim == 3 else A  # einsum is ~10x slower for these small batches
    x, y = p[..., 0], p[..., 1]
    return np.stack([M[:, 0, 0] * x + M[:, 0, 1] * y + M[:, 0, 2], M[:, 1, 0] * x + M[:, 1, 1] * y + M[:, 1, 2]], -1)


def round_fixed(p: np.ndarray) -> np.ndarray:
    """Aligned points -> cv2 fixed point, rounded to nearest (the batch geometry's rounding)."""
    return np.rint(p * ONE).astype(np.int32)


class Points:
    """Canvas points (B, k, 2) of one shape; `align` maps them into the crop, as fixed point in `px`."""

    __slots__ = ("canvas", "px")

    def __init__(self, canvas: np.ndarray) -> None:
        self.canvas = canvas
        self.px: np.ndarray | None = None

    def align(self, A: np.ndarray, scale: np.ndarray) -> None:
        self.px = round_fixed(apply_affine(A, self.canvas))


class Ellipses:
    """Ellipse centres (B, 2) and semi-axes (B, 2); `align` gives per-image cv2 arguments.

    Ellipses follow the alignment's translation and scale; its rotation is passed to cv2 as the
    angle when painting."""

    __slots__ = ("c", "ax", "centers", "axes")

    def __init__(self, c: np.ndarray, ax: np.ndarray) -> None:
        self.c, self.ax = c, ax
        self.centers: list = []
        self.axes: list = []

    def align(self, A: np.ndarray, scale: np.ndarray) -> None:
        self.centers = round_fixed(apply_affine(A, self.c)).tolist()
        self.axes = np.maximum((self.ax * column(scale) * ONE).astype(np.int32), 1).tolist()


class Layer:
    """One surface of an image being painted, and how shapes are rasterised on it.

    The colour image is drawn anti-aliased; shading and hair-mask layers are blurred later, so
    they use cheaper aliased lines.  The coarse shading layer is a quarter of the size and takes
    the same fixed-point coordinates with two more fractional bits."""

    __slots__ = ("pixels", "line", "shift")

    def __init__(self, pixels: np.ndarray, line: int = L8, shift: int = SHIFT) -> None:
        self.pixels, self.line, self.shift = pixels, line, shift

    def fill(self, pts: np.ndarray, color: tuple | int) -> None:
        cv2.fillPoly(self.pixels, [pts], color, self.line, self.shift)

    def stroke(self, pts: np.ndarray | list, color: tuple | int, thickness: int = 1, closed: bool = False) -> None:
        """Polyline(s): `pts` is one (k, 2) array or a list of them."""
        cv2.polylines(
            self.pixels, pts if isinstance(pts, list) else [pts], closed, color, thickness, self.line, self.shift
        )

    def ellipse(
        self,
        e: Ellipses,
        b: int,
        angle: float,
        color: tuple | int,
        thickness: int = -1,
        start: float = 0,
        end: float = 360,
    ) -> None:
        """Image b's ellipse of the batch `e` (filled unless thickness > 0), optionally an arc."""
        cv2.ellipse(self.pixels, e.centers[b], e.axes[b], angle, start, end, color, thickness, self.line, self.shift)


class Part:
    """Base of a scene part's geometry for a block (subclasses are dataclasses).

    `align` maps every Points / Ellipses / Part field, also inside (nested) tuples, into the
    crop; lists hold per-image values and are left alone.  Parts with more to map extend it."""

    def align(self, A: np.ndarray, scale: np.ndarray) -> None:
        for f in dataclasses.fields(self):
            _align(getattr(self, f.name), A, scale)

    def paint(self, cv: Canvas, b: int) -> None:
        """Issue image b's cv2 calls onto its canvas."""
        raise NotImplementedError


def _align(value: object, A: np.ndarray, scale: np.ndarray) -> None:
    if isinstance(value, (Points, Ellipses, Part)):
        value.align(A, scale)
    elif isinstance(value, tuple):
        for item in value:
            _align(item, A, scale)


@dataclass
class Canvas:
    """The layers one image is painted on, and the alignment's rotation (ellipses turn by it)."""

    img: Layer  # the colour image (RGB)
    fine: Layer  # fine multiplicative shading, 128 = x1: sockets, nose, lips
    shade: Layer  # coarse multiplicative shading at a quarter of the size
    hair_mask: Layer  # where hair texture goes
    rot: float
    rng: np.random.Generator  # the image's own stream, for what is drawn per image
