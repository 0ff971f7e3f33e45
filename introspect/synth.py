"""Synthetic aligned face crops with planted attributes: a ground truth for introspection.

Real face data sets rarely say which images show glasses, masks, turned heads or bad
exposure, so nothing checks whether introspect really finds what a recognition net attends
to.  This module draws 112 x 112 face-like crops of many identities, aligned like the
ArcFace / SFace template (eyes ~(38,52) and (74,52), nose ~(56,72), mouth corners ~(41,92)
and (71,92)), and plants attributes with known labels and realistic rarity.

Faces are laid out on a toy 3-D head (an elliptic cylinder turned by a yaw angle); a
similarity fitted from their five landmarks to the template, as a real detector + aligner
would, plus a little detector jitter, maps them into the crop, where they are drawn with
anti-aliased cv2 primitives (sub-pixel coordinates), soft shading, hair texture, lighting and
sensor noise.  A turned head therefore looks like a real aligned turned head: eyes and mouth
stay near the template while the outline, nose and ears move and the far side narrows.

Every attribute is drawn independently per image (not per identity):

=========  ===============================  ==================================================
column     values                           rate per image
=========  ===============================  ==================================================
glasses    none / clear / sun               85 % / 10 % / 5 %   (5 frame shapes, 7 colours)
mask       none / medical                   92 % / 8 %          (7 colours, pleats, ear loops)
pose       frontal / left / right           84 % / 8 % / 8 %    (yaw 22-45 deg; frontal < 9 deg)
dark       0 / 1                            92 % / 8 %          (gamma + exposure down, noise up)
gray       0 / 1                            94 % / 6 %          (saved as 3 equal channels)
blur       0 / 1                            92 % / 8 %          (Gaussian or motion blur)
occluder   none / hand / phone / mic / bar  98.5 % / 0.5 % / 0.4 % / 0.3 % / 0.3 %
=========  ===============================  ==================================================

``left`` means the face is turned towards the image's left (the nose points to smaller x).
Nuisances vary without a label, so attributes are not trivially separable: exposure
(x0.85-1.12), light direction and colour temperature, mild softness on 20 % of sharp
images, noise, JPEG quality 58-95, small roll / scale / shift of the alignment.

Identities: ``max(1, n // 4)`` of them; image ``i`` belongs to ``hash(seed, i) mod
n_identities`` (about four images each, Poisson-distributed).  An identity fixes skin tone,
face shape, eye spacing / size / colour, brows, nose, mouth, lips, hair colour and style,
ears, beard, moles and freckles (``default_rng([seed, 1, identity])``); each image varies
expression, landmark jitter, gaze, background, clothes, lighting, noise and JPEG quality
(``default_rng([seed, 0, i])``).  Files depend only on ``(seed, n, i)`` -- ``n`` only
through the identity count -- and never on the worker count.

Speed (>= 1000 images/s on 2 cores): a Python renderer is limited by per-call overhead, not
pixels, so geometry for a block of 256 images is computed at once with numpy and the
per-image loop only issues cv2 calls; worker processes each render, encode and write whole
blocks while the parent streams the list and the labels in order.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from pathlib import Path
from types import MappingProxyType

import cv2
import numpy as np
from tqdm import tqdm

from introspect.errors import UserError

__all__ = ["COLUMNS", "RATES", "SynthError", "attrs_path", "identity_of", "render", "synthesize"]

SIZE = 112
CANVAS = 128  # faces are laid out in a larger frame, then mapped into the SIZE crop by the alignment
BLOCK = 256  # images per pool task
PER_FOLDER = 1000  # images per shard folder

COLUMNS = ("path", "identity", "glasses", "mask", "pose", "dark", "gray", "blur", "occluder")

# (value, probability) per attribute column; documented in the module docstring.
RATES: Mapping[str, tuple[tuple[str, float], ...]] = MappingProxyType(
    {
        "glasses": (("none", 0.85), ("clear", 0.10), ("sun", 0.05)),
        "mask": (("none", 0.92), ("medical", 0.08)),
        "pose": (("frontal", 0.84), ("left", 0.08), ("right", 0.08)),
        "dark": (("0", 0.92), ("1", 0.08)),
        "gray": (("0", 0.94), ("1", 0.06)),
        "blur": (("0", 0.92), ("1", 0.08)),
        "occluder": (("none", 0.985), ("hand", 0.005), ("phone", 0.004), ("mic", 0.003), ("bar", 0.003)),
    }
)

# ArcFace / SFace 112 x 112 five-point template: eyes, nose tip, mouth corners.
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
TEMPLATE.setflags(write=False)

_SHIFT = 4  # fractional bits for cv2 drawing: sub-pixel, anti-aliased shapes
_ONE = float(1 << _SHIFT)
_AA = cv2.LINE_AA
_L8 = cv2.LINE_8  # shading layers get blurred anyway; aliasing there is free and AA is not
_PIXELS = SIZE * SIZE * 3
_NOISE_BANK = 3  # per-seed Gaussian noise, in images' worth; each image takes a window at a random offset


def _const(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


# Sample positions reused by every image (np.linspace costs more than the drawing it feeds).
_T7 = _const(np.linspace(0.0, 1.0, 7))
_T7_BROW = _const(np.sin(np.pi * _T7**0.85))
_T11 = _const(np.linspace(-1.0, 1.0, 11))
_T11_UP = _const((1 - _T11**2) ** 0.7 * (1 - 0.18 * _T11))
_T11_LO = _const((1 - _T11**2) ** 0.8 * (1 + 0.15 * _T11))
_T13 = _const(np.linspace(-1.0, 1.0, 13))
_T15 = _const(np.linspace(-1.0, 1.0, 15))
_T15_ZIG = _const(np.where(np.arange(15) % 2 == 0, 0.0, -2.5))
_FH = _const(np.linspace(-math.pi / 2, math.pi / 2, 11))
_FH_SIN, _FH_COS = _const(np.sin(_FH)), _const(np.cos(_FH))
_JAW = _const(np.linspace(math.pi / 2, -math.pi / 2, 15))
_JAW_SIN, _JAW_COS = _const(np.sin(_JAW)), _const(np.abs(np.cos(_JAW)))
_N6 = _const(np.linspace(0.0, 1.0, 6))
_N6_PROF = _const(np.linspace(0.15, 1.0, 6) ** 1.3)
_MX = _const(np.array([-1.0, -0.6, -0.28, 0.0, 0.28, 0.6, 1.0]))
_MDZ = _const(np.array([0.2, 0.7, 0.95, 1.0, 0.95, 0.7, 0.2]))
_ARC = _const(np.linspace(math.pi, 2 * math.pi, 13))  # upper half ellipse, left to right
_ARC_COS, _ARC_SIN = _const(np.cos(_ARC)), _const(np.sin(_ARC))
_CIRC = _const(np.linspace(0, 2 * math.pi, 17)[:-1])
_CIRC_COS, _CIRC_SIN = _const(np.cos(_CIRC)), _const(np.sin(_CIRC))
_LENS = _const(np.linspace(0, 2 * math.pi, 21)[:-1])
_LENS_COS, _LENS_SIN = _const(np.cos(_LENS)), _const(np.sin(_LENS))


class SynthError(UserError, ValueError):
    """Bad synthesize() arguments: a ValueError that the CLI shows as one line."""


def attrs_path(list_path: Path) -> Path:
    """Ground truth lives beside the list so the pair cannot drift apart: x.txt -> x.attrs.csv."""
    list_path = Path(list_path)
    return list_path.with_name(list_path.stem + ".attrs.csv")


# --------------------------------------------------------------------------- identities


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A strong 64-bit mix, so identity assignment is random yet computable per image."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def identity_of(seed: int, n: int, index: np.ndarray | int) -> np.ndarray:
    """Identity of image(s) `index`: hash(seed, i) mod max(1, n // 4), so no table of size n is needed."""
    n_ids = max(1, n // 4)
    key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    h = _splitmix64(np.asarray(index, dtype=np.uint64) ^ key)
    return (h % np.uint64(n_ids)).astype(np.int64)


def _mix(a: tuple, b: tuple, t: float) -> tuple:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t)


def _sc(c: tuple, f: float) -> tuple:
    return (min(255.0, c[0] * f), min(255.0, c[1] * f), min(255.0, c[2] * f))


def _sc3(c: tuple, f: tuple) -> tuple:
    return (min(255.0, c[0] * f[0]), min(255.0, c[1] * f[1]), min(255.0, c[2] * f[2]))


def _color(u: list, sat: float = 0.5, lo: float = 40, hi: float = 230) -> tuple:
    """A random colour from four uniforms; sat mixes a grey level with a random hue."""
    base = (lo + (hi - lo) * u[0]) * (1 - sat)
    k = hi * sat / max(u[1], u[2], u[3], 1e-3)
    return (min(255.0, base + k * u[1]), min(255.0, base + k * u[2]), min(255.0, base + k * u[3]))


_SKIN = (
    (255, 228, 208),
    (243, 204, 176),
    (231, 183, 150),
    (212, 158, 118),
    (188, 130, 92),
    (156, 102, 70),
    (120, 78, 52),
    (88, 57, 40),
)
_HAIR = (
    (22, 19, 18),
    (48, 33, 24),
    (92, 62, 40),
    (140, 100, 64),
    (128, 58, 32),
    (204, 170, 110),
    (228, 212, 176),
    (150, 148, 146),
    (214, 212, 206),
    (168, 34, 44),
    (44, 74, 160),
    (222, 122, 172),
    (104, 52, 132),
)
_HAIR_W = (24, 22, 16, 8, 5, 8, 3, 6, 3, 1.5, 1, 1, 1)
_HAIR_W_DARK = (60, 55, 16, 3, 2, 2.4, 0.9, 6, 3, 1.5, 1, 1, 1)
_EYES = ((58, 34, 20), (96, 58, 30), (118, 92, 50), (76, 106, 68), (78, 118, 168), (118, 128, 138))
_EYES_W = (36, 24, 10, 8, 15, 7)
_EYES_W_DARK = (60, 30, 8, 2, 3, 1.5)
_LIPSTICK = ((176, 28, 46), (204, 92, 124), (118, 36, 60), (192, 122, 112), (150, 40, 40))
_STYLES = ("bald", "buzz", "short", "medium", "long", "bangs", "bun")
_STYLES_W = (0.05, 0.10, 0.32, 0.15, 0.23, 0.10, 0.05)


# --------------------------------------------------------------------------- drawing helpers


def _ip(p: np.ndarray, off: np.ndarray | None = None) -> np.ndarray:
    if off is not None:
        p = p - off
    return (p * _ONE + 0.5).astype(np.int32)  # truncation error < 1/16 px for negatives: harmless


def _pt(x: float, y: float, off: np.ndarray | None = None) -> tuple[int, int]:
    if off is not None:
        x, y = x - off[0], y - off[1]
    return int(x * _ONE + 0.5), int(y * _ONE + 0.5)


def _fill(img: np.ndarray, pts: np.ndarray, color: tuple, off: np.ndarray | None = None, aa: bool = True) -> None:
    cv2.fillPoly(img, [_ip(pts, off)], color, _AA if aa else _L8, _SHIFT)


def _line(
    img: np.ndarray,
    pts: np.ndarray,
    color: tuple,
    t: int = 1,
    closed: bool = False,
    off: np.ndarray | None = None,
    aa: bool = True,
) -> None:
    cv2.polylines(img, [_ip(pts, off)], closed, color, max(1, int(t)), _AA if aa else _L8, _SHIFT)


def _ell(
    img: np.ndarray,
    c: tuple,
    ax: tuple,
    ang: float,
    color: tuple,
    t: int = -1,
    a0: float = 0,
    a1: float = 360,
    off: np.ndarray | None = None,
    aa: bool = True,
) -> None:
    cv2.ellipse(
        img,
        _pt(c[0], c[1], off),
        (max(1, int(ax[0] * _ONE)), max(1, int(ax[1] * _ONE))),
        ang,
        a0,
        a1,
        color,
        t,
        _AA if aa else _L8,
        _SHIFT,
    )


def _bbox(p: np.ndarray, pad: float = 0.0) -> tuple:
    mn, mx = p.min(0), p.max(0)
    return (mn[0] - pad, mn[1] - pad, mx[0] + pad, mx[1] + pad)


def _blend(img: np.ndarray, box: tuple, alpha: float, draw: Callable[[np.ndarray, np.ndarray], None]) -> None:
    """Draw translucently inside a small region: cheap alpha for tints, lenses, stubble."""
    h, w = img.shape[:2]
    x0, y0 = max(0, int(box[0]) - 2), max(0, int(box[1]) - 2)
    x1, y1 = min(w, int(box[2]) + 3), min(h, int(box[3]) + 3)
    if x1 <= x0 or y1 <= y0:
        return
    roi = img[y0:y1, x0:x1]
    ov = roi.copy()
    draw(ov, np.array([x0, y0], np.float64))
    cv2.addWeighted(ov, alpha, roi, 1.0 - alpha, 0.0, dst=roi)


# --------------------------------------------------------------------------- scene parts


def _background(rng: np.random.Generator) -> np.ndarray:
    """Varied, defocused backgrounds: drawn at 32 px and upscaled, which blurs for free."""
    u = rng.random(40).tolist()
    blobs = rng.random((16, 8)).tolist()  # position, size, colour: for the kinds that scatter shapes
    kind = int(u[0] * 5)
    small = np.empty((32, 32, 3), np.uint8)
    if kind == 0:  # smooth gradient between four corner colours
        g = np.array([_color(u[1:5]), _color(u[5:9]), _color(u[9:13]), _color(u[13:17])], np.float32)
        small = cv2.resize(g.reshape(2, 2, 3), (32, 32), interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    elif kind == 1:  # indoor: wall, door / window / shelf rectangles, a room corner
        small[:] = _color(u[1:5], 0.3, 60, 235)
        for x, y, w, h, *c in blobs[: 1 + int(u[5] * 3)]:
            x, y = -4 + 34 * x, -4 + 34 * y
            cv2.rectangle(small, _pt(x, y), _pt(x + 4 + 12 * w, y + 6 + 24 * h), _color(c, 0.4), -1, _AA, _SHIFT)
        if u[18] < 0.6:
            x = 32 * u[19]
            cv2.line(small, _pt(x, 0), _pt(x + (u[32] - 0.5) * 6, 32), _color(u[33:37], 0.2, 30, 120), 1, _AA, _SHIFT)
    elif kind == 2:  # outdoor: sky over foliage / buildings
        small[:] = _color(u[1:5], 0.35, 150, 250)
        horizon = 6 + 16 * u[5]
        ground = _color(u[6:10], 0.5, 30, 150)
        cv2.rectangle(small, _pt(0, horizon), _pt(32, 32), ground, -1, _AA, _SHIFT)
        for x, y, r, f, *_ in blobs[: 4 + int(u[10] * 8)]:
            cv2.circle(
                small,
                _pt(32 * x, horizon - 6 + (38 - horizon) * y),
                int((2 + 4 * r) * _ONE),
                _sc(ground, 0.6 + 0.8 * f),
                -1,
                _AA,
                _SHIFT,
            )
    elif kind == 3:  # bokeh lights
        small[:] = _color(u[1:5], 0.4, 10, 90)
        for x, y, r, *c in blobs[: 6 + int(u[5] * 10)]:  # c: 5 uniforms, _color uses 4
            cv2.circle(small, _pt(32 * x, 32 * y), int((1 + 2.5 * r) * _ONE), _color(c, 0.7, 80), -1, _AA, _SHIFT)
    else:  # studio backdrop with a vignette
        c = _color(u[1:5], 0.25, 70, 245)
        small[:] = c
        cv2.circle(small, (16 * 16, 14 * 16), int((20 + 14 * u[5]) * 16), _sc(c, 1.08 + 0.1 * u[6]), -1, _AA, _SHIFT)
    return cv2.resize(small, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)


def _hand(img: np.ndarray, rng: np.random.Generator, c: tuple, ang: float, size: float, skin: tuple) -> None:
    """A palm with fingers and a forearm running out of frame; the fingers point along ang."""
    fx, fy = math.cos(ang), math.sin(ang)  # finger direction
    px, py = -fy, fx  # across the palm
    dark = _sc(skin, 0.72)
    arm = (c[0] - fx * 120, c[1] - fy * 120)
    cv2.line(img, _pt(*c), _pt(*arm), _sc(skin, 0.92), max(1, int(size * 1.05)), _AA, _SHIFT)
    _ell(img, c, (size * 0.62, size * 0.55), math.degrees(ang), skin)
    width = size * 0.24
    tips = []
    for k, length in enumerate((0.95, 1.05, 1.0, 0.8)):
        off = (k - 1.5) * width * 1.02
        bx, by = c[0] + fx * size * 0.35 + px * off, c[1] + fy * size * 0.35 + py * off
        spread = (k - 1.5) * rng.uniform(0.0, 0.12)
        dx, dy = math.cos(ang + spread), math.sin(ang + spread)
        L = size * length * rng.uniform(0.85, 1.05)
        tips.append((bx + dx * L, by + dy * L, dx, dy))
        cv2.line(img, _pt(bx, by), _pt(bx + dx * L, by + dy * L), skin, max(1, int(round(width))), _AA, _SHIFT)
    for k in range(3):  # gaps between the fingers
        off = (k - 1.0) * width * 1.02
        bx, by = c[0] + fx * size * 0.5 + px * off, c[1] + fy * size * 0.5 + py * off
        cv2.line(img, _pt(bx, by), _pt(bx + fx * size * 0.75, by + fy * size * 0.75), dark, 1, _AA, _SHIFT)
    for tx, ty, dx, dy in tips:  # nails
        _ell(
            img,
            (tx - dx * width * 0.35, ty - dy * width * 0.35),
            (width * 0.3, width * 0.22),
            math.degrees(math.atan2(dy, dx)),
            _sc3(skin, (1.05, 1.0, 1.02)),
        )
    side = 1 if rng.random() < 0.5 else -1  # thumb
    ta = ang + side * rng.uniform(0.7, 1.1)
    bx, by = c[0] + px * side * size * 0.45, c[1] + py * side * size * 0.45
    cv2.line(
        img,
        _pt(bx, by),
        _pt(bx + math.cos(ta) * size * 0.7, by + math.sin(ta) * size * 0.7),
        skin,
        max(1, int(round(width * 1.1))),
        _AA,
        _SHIFT,
    )


def _rounded_rect(c: tuple, w: float, h: float, ang: float, r: float) -> np.ndarray:
    """Corners of a rotated rectangle with rounded corners (phones)."""
    t = np.linspace(0, math.pi / 2, 4)
    quarter = np.stack([np.cos(t), np.sin(t)], -1) * r
    pts = []
    for k, (sx, sy) in enumerate(((1, 1), (-1, 1), (-1, -1), (1, -1))):
        q = quarter[:, ::-1] if k % 2 else quarter
        pts.append(np.array([sx * (w / 2 - r), sy * (h / 2 - r)]) + q * [sx, sy])
    p = np.concatenate(pts)
    ca, sa = math.cos(math.radians(ang)), math.sin(math.radians(ang))
    return np.stack([c[0] + p[:, 0] * ca - p[:, 1] * sa, c[1] + p[:, 0] * sa + p[:, 1] * ca], -1)


def _occluder(img: np.ndarray, rng: np.random.Generator, kind: str, cx: float, ey: float, R: float) -> None:
    """Rare objects in front of the face, at random places and with varied looks."""
    u = rng.random(24).tolist()
    if kind == "hand":
        skin = _mix(_SKIN[int(u[0] * 7)], _SKIN[int(u[1] * 8)], u[2])
        c = (cx + (u[3] * 1.6 - 0.8) * R, ey - 10 + 55 * u[4])
        ang = (u[5] - 0.5) * 2 * math.pi if u[6] < 0.3 else -math.pi / 2 + (u[5] - 0.5) * 2.0
        _hand(img, rng, c, ang, 20 + 10 * u[7], skin)
    elif kind == "phone":
        w, h = 22 + 10 * u[0], 44 + 18 * u[1]
        c = (cx + (1 if u[2] < 0.5 else -1) * (0.3 + 0.7 * u[3]) * R, ey + 40 * u[4])
        ang = (u[5] - 0.5) * 80
        body = _color(u[6:10], 0.5, 15, 230) if u[10] < 0.5 else (24.0, 24.0, 28.0)
        shell = _rounded_rect(c, w, h, ang, 4.0)
        _fill(img, shell, body)
        _line(img, shell, _sc(body, 0.6), 1, True)
        t = math.radians(ang)
        if u[11] < 0.55:  # screen side, dark or lit, with a glare
            scr = _rounded_rect(c, w - 3.5, h - 6, ang, 2.5)
            _fill(img, scr, _color(u[12:16], 0.6, 120, 250) if u[16] < 0.5 else (10.0, 12.0, 16.0))
            glare = np.array([scr[0], scr[len(scr) // 4], c])
            _blend(img, _bbox(scr), 0.2, lambda o, off: _fill(o, glare, (255, 255, 255), off))
        else:  # back with a camera bump
            cc = (
                c[0] - w * 0.22 * math.cos(t) + h * 0.3 * math.sin(t),
                c[1] - w * 0.22 * math.sin(t) - h * 0.3 * math.cos(t),
            )
            _fill(img, _rounded_rect(cc, w * 0.42, w * 0.48, ang, 2.0), _sc(body, 0.7))
            for k in (-1, 1):
                _ell(img, (cc[0] + k * 2.4 * math.sin(t), cc[1] - k * 2.4 * math.cos(t)), (2.0, 2.0), 0, (20, 20, 24))
        if u[17] < 0.6:  # fingers holding it
            skin = _SKIN[int(u[18] * 8)]
            side = 1 if u[19] < 0.5 else -1
            for k in range(2 + int(u[20] * 2)):
                oy = (k - 1) * 7.0
                bx, by = (
                    c[0] + side * (w / 2) * math.cos(t) - oy * math.sin(t),
                    c[1] + side * (w / 2) * math.sin(t) + oy * math.cos(t),
                )
                cv2.line(
                    img,
                    _pt(bx + side * 4 * math.cos(t), by + side * 4 * math.sin(t)),
                    _pt(bx - side * 5 * math.cos(t), by - side * 5 * math.sin(t)),
                    skin,
                    6,
                    _AA,
                    _SHIFT,
                )
    elif kind == "mic":
        r = 8 + 5 * u[0]
        c = (cx + (u[1] - 0.5) * 1.2 * R, ey + 25 + 25 * u[2])
        head = _color(u[3:7], 0.1, 40, 190)
        ang = math.pi / 2 + (u[7] - 0.5) * 1.6
        hx, hy = math.cos(ang), math.sin(ang)
        L = 55 + 35 * u[8]
        handle = (20.0, 20.0, 22.0) if u[9] < 0.7 else _color(u[10:14], 0.2, 100, 200)
        q = np.array(
            [
                [c[0] - hy * r * 0.45, c[1] + hx * r * 0.45],
                [c[0] + hy * r * 0.45, c[1] - hx * r * 0.45],
                [c[0] + hx * L + hy * r * 0.3, c[1] + hy * L - hx * r * 0.3],
                [c[0] + hx * L - hy * r * 0.3, c[1] + hy * L + hx * r * 0.3],
            ]
        )
        _fill(img, q, handle)
        if u[14] < 0.35:  # station flag cube
            fc = (c[0] + hx * r * 1.9, c[1] + hy * r * 1.9)
            _fill(img, cv2.boxPoints((fc, (r * 1.5, r * 1.3), math.degrees(ang) - 90)), _color(u[15:19], 0.8, 60, 230))
        _ell(img, c, (r, r), 0, head)
        mesh = _sc(head, 0.65)
        for d in (-0.7 * r, -0.35 * r, 0.0, 0.35 * r, 0.7 * r):
            h = math.sqrt(max(0.0, r * r - d * d)) * 0.95
            cv2.line(img, _pt(c[0] - h, c[1] + d), _pt(c[0] + h, c[1] + d), mesh, 1, _AA, _SHIFT)
            cv2.line(img, _pt(c[0] + d, c[1] - h), _pt(c[0] + d, c[1] + h), mesh, 1, _AA, _SHIFT)
        _ell(img, (c[0] - r * 0.35, c[1] - r * 0.35), (r * 0.3, r * 0.2), -30, _sc(head, 1.35))
        _ell(img, c, (r, r), 0, _sc(head, 0.5), 1)
    else:  # bar: a censor bar, a strap, any flat coloured band
        L, t = 40 + 100 * u[0], 8 + 14 * u[1]
        c = (cx + (u[2] - 0.5) * 1.2 * R, ey - 15 + 60 * u[3])
        ang = (u[4] - 0.5) * 24 if u[5] < 0.6 else (u[4] - 0.5) * 180
        col = (0.0, 0.0, 0.0) if u[6] < 0.45 else _color(u[7:11], 0.8, 20, 240)
        _fill(img, cv2.boxPoints((c, (L, t), ang)), col)


# --------------------------------------------------------------------------- the face, a block at a time
#
# Geometry is computed with numpy for a whole block of images at once (arrays of shape (B,) or
# (B, k)); the per-image loop then only issues cv2 calls.  Per-call numpy overhead on tiny
# arrays, not pixels, is what limits a Python renderer; vectorising over the block removes it
# while every image still draws its numbers from its own default_rng([seed, 0, i]).

# Per-image uniforms, drawn up front in this order (the first seven pick the attributes).
_V = (
    "glasses",
    "mask",
    "pose",
    "dark",
    "gray",
    "blur",
    "occluder",
    "yaw",
    "cx",
    "ey",
    "skin",
    "light",
    "back_wide",
    "collar",
    "mouth_dy",
    "mouth_w",
    "nose_dy",
    "stubble",
    "eye_open",
    "blink",
    "gaze_x",
    "gaze_y",
    "ejx0",
    "ejx1",
    "ejy0",
    "ejy1",
    "brow_raise",
    "mouth_mode",
    "mouth_open",
    "smile",
    "bangs",
    "mask_col",
    "mask_top",
    "mask_side",
    "mask_bot",
    "mask_loop",
    "gl_shape",
    "gl_w",
    "gl_h",
    "gl_frame",
    "gl_thin",
    "gl_t0",
    "gl_t1",
    "gl_t2",
    "gl_t3",
    "gl_alpha",
    "gl_glare",
    "gl_rimless",
    "rot",
    "scale",
    "shift_x",
    "shift_y",
    "temp",
    "gain",
    "sigma",
    "dk_gamma",
    "dk_cast",
    "dk_e",
    "dk_sigma",
    "bl_kind",
    "bl_s",
    "bl_angle",
    "soft",
    "noise",
    "quality",
    "cl0",
    "cl1",
    "cl2",
    "cl3",
)
# Per-identity uniforms, from default_rng([seed, 1, identity]).
_U = (
    "tone",
    "beard_ok",
    "lipstick",
    "lipstick_c",
    "lipstick_a",
    "R",
    "mole",
    "freckles",
    "depth",
    "top_w",
    "top_h",
    "chin",
    "gonion",
    "jaw_w",
    "jaw_q",
    "es",
    "ew",
    "eye_open",
    "eye_tilt",
    "iris_r",
    "lash",
    "brow_gap",
    "brow_t",
    "brow_arch",
    "brow_len",
    "nose_y",
    "nose_w",
    "nose_dz",
    "mouth_y",
    "mouth_w",
    "lip_up",
    "lip_lo",
    "hairline",
    "part",
    "volume",
    "ear_h",
    "ear_w",
    "ear_y",
    "blush",
    "red",
    "yel",
    "hair",
    "iris",
    "style",
    "beard",
    "mole_x",
    "mole_y",
    "mole_r",
    "n_freckles",
)

_BALD, _BUZZ, _SHORT, _MEDIUM, _LONG, _BANGS, _BUN = range(len(_STYLES))
_BEARDS = ("none", "stubble", "mustache", "goatee", "full")
_BEARDS_W = (0.66, 0.11, 0.05, 0.07, 0.11)
_STUBBLE, _MUSTACHE, _GOATEE = 1, 2, 3  # indices into _BEARDS ("full" is the default shape)
_STYLE_SIDE = _const(np.array([0.0, -2.0, 1.0, 26.0, 40.0, 4.0, -4.0]))  # hair sides end this far below the eyes
_MASK_COLORS = _const(
    np.array(
        [
            (168, 204, 226),
            (142, 186, 214),
            (236, 238, 240),
            (32, 32, 36),
            (232, 188, 198),
            (176, 178, 182),
            (52, 70, 112),
        ],
        np.float64,
    )
)
_MASK_W = (0.28, 0.25, 0.2, 0.14, 0.04, 0.05, 0.04)
_FRAMES = _const(
    np.array(
        [(18, 18, 20), (64, 40, 26), (196, 164, 96), (190, 192, 198), (150, 30, 36), (30, 44, 96), (120, 110, 104)],
        np.float64,
    )
)
_FRAMES_W = (0.4, 0.15, 0.12, 0.12, 0.07, 0.07, 0.07)
_LENS_SHAPES = ("round", "oval", "rect", "aviator", "cat")
_LENS_W = (0.18, 0.22, 0.34, 0.14, 0.12)


def _lens_tables() -> tuple[np.ndarray, np.ndarray]:
    """Unit lens outlines per shape and side (cat-eye is mirrored), shape (2, 5, 20)."""
    ca, sa = _LENS_COS, _LENS_SIN
    xs = [ca, ca, np.sign(ca) * np.abs(ca) ** (1 / 3), ca, np.sign(ca) * np.abs(ca) ** 0.8]
    ys = [
        sa,
        sa,
        np.sign(sa) * np.abs(sa) ** (1 / 3) * 0.95,
        np.where(sa > 0, sa * 1.2, sa * 0.85),
        sa - 0.35 * np.maximum(ca, 0) * (sa < 0),
    ]
    lx = np.array([[x * (sd if k == 4 else 1.0) for k, x in enumerate(xs)] for sd in (-1.0, 1.0)])
    ly = np.array([ys, ys])
    return _const(lx), _const(ly)


_LENS_X, _LENS_Y = _lens_tables()


def _vchoice(u: np.ndarray, weights: tuple) -> np.ndarray:
    """Weighted picks for a batch of uniforms."""
    cum = np.cumsum(weights) / np.sum(weights)
    return np.minimum(np.searchsorted(cum, u, side="right"), len(weights) - 1)


def _colorv(u: np.ndarray, sat: float, lo: float, hi: float) -> np.ndarray:
    """Batch version of _color: (B, 4) uniforms -> (B, 3) colours."""
    base = lo + (hi - lo) * u[:, 0]
    m = np.maximum(u[:, 1:4].max(1), 1e-3)
    return np.minimum(base[:, None] * (1 - sat) + hi * sat * u[:, 1:4] / m[:, None], 255.0)


def _xy(x: np.ndarray, y: np.ndarray | float) -> np.ndarray:
    out = np.empty(np.shape(x) + (2,))
    out[..., 0] = x
    out[..., 1] = y
    return out


def _I(p: np.ndarray) -> np.ndarray:
    """Canvas points -> cv2's fixed-point integers."""
    return np.rint(p * _ONE).astype(np.int32)


def _E(c: np.ndarray, ax: np.ndarray) -> tuple[list, list]:
    """Ellipse centres (B, 2) and semi-axes (B, 2) -> per-image cv2 arguments."""
    return _I(c).tolist(), np.maximum((ax * _ONE).astype(np.int32), 1).tolist()


class _Pts:
    """Canvas points (B, k, 2) waiting for the per-image alignment transform."""

    __slots__ = ("p",)

    def __init__(self, p: np.ndarray) -> None:
        self.p = p


class _Ell:
    """Ellipse centres (B, 2) and semi-axes (B, 2) waiting for the alignment transform."""

    __slots__ = ("c", "ax")

    def __init__(self, c: np.ndarray, ax: np.ndarray) -> None:
        self.c, self.ax = c, ax


def _affine(A: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Apply per-image 2x3 affines A (B, 2, 3) to points (B, 2) or (B, k, 2)."""
    M = A[:, :, :, None] if p.ndim == 3 else A  # einsum is ~10x slower for these small batches
    x, y = p[..., 0], p[..., 1]
    return np.stack([M[:, 0, 0] * x + M[:, 0, 1] * y + M[:, 0, 2], M[:, 1, 0] * x + M[:, 1, 1] * y + M[:, 1, 2]], -1)


def _cols(c: np.ndarray) -> list:
    return [tuple(r) for r in np.clip(c, 0.0, 255.0).tolist()]


def _C(a: np.ndarray) -> np.ndarray:
    return a[:, None]


class _GeoB:
    """Toy heads for a batch: elliptic cylinders (half width R, depth D) turned by yaw.

    dx is measured across the face, dz out of it; only x changes when the head turns."""

    def __init__(self, cx: np.ndarray, R: np.ndarray, D: np.ndarray, yaw: np.ndarray) -> None:
        c, s = np.cos(yaw), np.sin(yaw)
        self.sil = np.sqrt((R * c) ** 2 + (D * s) ** 2)  # silhouette half width
        self.cx, self.c, self.s, self.D, self.r2 = _C(cx), _C(c), _C(s), _C(D), _C(1.0 / (R * R))
        self.lo, self.hi = _C(cx - self.sil), _C(cx + self.sil)

    def z(self, dx: np.ndarray) -> np.ndarray:
        return self.D * np.sqrt(np.maximum(1.0 - dx * dx * self.r2, 0.0))

    def x(self, dx: np.ndarray, dz: np.ndarray | float = 0.0) -> np.ndarray:
        return np.clip(self.cx + dx * self.c + (self.z(dx) + dz) * self.s, self.lo, self.hi)

    def pts(self, dx: np.ndarray, y: np.ndarray, dz: np.ndarray | float = 0.0) -> np.ndarray:
        return _xy(self.x(dx, dz), y)

    def fs(self, dx: np.ndarray) -> np.ndarray:
        """Horizontal foreshortening of a small feature at dx (the far eye gets narrow)."""
        q = np.maximum(1.0 - dx * dx * self.r2, 1e-3)
        return np.clip(self.c - self.D * dx * self.r2 / np.sqrt(q) * self.s, 0.15, 1.25)

    def facing(self, dx: np.ndarray, dz: np.ndarray | float = 0.0) -> np.ndarray:
        """Depth after turning: < 0 means the point went round the back of the head."""
        return -dx * self.s + (self.z(dx) + dz) * self.c


def _arc(cx: np.ndarray, cy: np.ndarray, ax: np.ndarray, ay: np.ndarray) -> np.ndarray:
    """Upper half ellipses, left to right: (B, 13, 2)."""
    return _xy(_C(cx) + _C(ax) * _ARC_COS, _C(cy) + _C(ay) * _ARC_SIN)


def _cat(*parts: np.ndarray) -> np.ndarray:
    """Join point runs (B, k, 2) and single points (B, 2) into polygons."""
    return np.concatenate([p[:, None] if p.ndim == 2 else p for p in parts], axis=1)


def _identities(seed: int, idents: list[int]) -> tuple[dict, list]:
    """Identity traits for a batch, from one identity-seeded stream each, so every image agrees."""
    cache: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    rows, freckles = [], []
    for ident in idents:
        if ident not in cache:
            rng = np.random.default_rng([seed, 1, int(ident)])
            u = rng.random(len(_U))
            fr = None
            if u[0] ** 1.15 < 0.35 and u[7] < 0.18:
                m = 15 + int(25 * u[_U.index("n_freckles")])
                fr = np.stack([rng.normal(0.0, 0.35, m), rng.normal(14.0, 6.0, m)], -1)
            cache[ident] = (u, fr)
        rows.append(cache[ident][0])
        freckles.append(cache[ident][1])
    u = dict(zip(_U, np.array(rows).T))
    t: dict[str, np.ndarray] = {}
    tone = u["tone"] ** 1.15
    k = tone * (len(_SKIN) - 1)
    j = np.minimum(k.astype(int), len(_SKIN) - 2)
    sk = np.array(_SKIN, np.float64)
    skin = sk[j] + (sk[j + 1] - sk[j]) * _C(k - j)
    red, yel = (u["red"] - 0.5) * 24, (u["yel"] - 0.5) * 20
    skin += np.stack([red, yel * 0.6, -red * 0.6 - yel], -1)
    t["skin"] = np.clip(skin, 20.0, 255.0)
    dark = tone > 0.55
    hi = np.where(dark, _vchoice(u["hair"], _HAIR_W_DARK), _vchoice(u["hair"], _HAIR_W))
    hair = np.array(_HAIR, np.float64)[hi]
    t["hair"] = hair
    t["iris"] = np.array(_EYES, np.float64)[
        np.where(dark, _vchoice(u["iris"], _EYES_W_DARK), _vchoice(u["iris"], _EYES_W))
    ]
    style = _vchoice(u["style"], _STYLES_W)
    t["style"] = style
    may_beard = ~np.isin(style, (_LONG, _BANGS, _BUN)) | (u["beard_ok"] < 0.1)
    beard = np.where(may_beard, _vchoice(u["beard"], _BEARDS_W), 0)
    t["beard"] = beard
    lip = t["skin"] * (0.86, 0.62, 0.64) + (18.0, 2.0, 8.0)
    stick = np.array(_LIPSTICK, np.float64)[(u["lipstick_c"] * len(_LIPSTICK)).astype(int)]
    wear = ((beard == 0) & (u["lipstick"] < 0.18)) * (0.5 + 0.4 * u["lipstick_a"])
    t["lip"] = lip + (stick - lip) * _C(wear)
    brow = np.where(_C(hair[:, 0] < 170), hair * 0.75, hair * 0.55)
    dyed = (hair[:, 2] > 120) & (hair[:, 0] < 120)  # blue / purple: natural brows
    t["brow"] = np.where(_C(dyed), np.array([50.0, 36.0, 28.0]), brow)
    R = 35.5 + 6.5 * u["R"]
    t.update(
        R=R,
        depth=0.78 + 0.17 * u["depth"],
        top_w=R * (1.0 + 0.08 * u["top_w"]),
        top_h=52 + 8 * u["top_h"],
        chin=52 + 10 * u["chin"],
        gonion=17 + 13 * u["gonion"],
        jaw_w=0.8 + 0.16 * u["jaw_w"],
        jaw_q=0.55 + 0.5 * u["jaw_q"],
        es=16.0 + 3.5 * u["es"],
        ew=6.6 + 1.7 * u["ew"],
        eye_open=0.42 + 0.2 * u["eye_open"],
        eye_tilt=-0.06 + 0.16 * u["eye_tilt"],
        iris_r=0.44 + 0.08 * u["iris_r"],
        lash=u["lash"],
        brow_gap=8.5 + 4.0 * u["brow_gap"],
        brow_t=1.6 + 2.4 * u["brow_t"],
        brow_arch=0.5 + 3.2 * u["brow_arch"],
        brow_len=1.05 + 0.45 * u["brow_len"],
        nose_y=17.5 + 5.0 * u["nose_y"],
        nose_w=7.0 + 3.5 * u["nose_w"],
        nose_dz=0.22 + 0.14 * u["nose_dz"],
        mouth_y=37.5 + 5.0 * u["mouth_y"],
        mouth_w=12.5 + 4.5 * u["mouth_w"],
        lip_up=1.6 + 2.2 * u["lip_up"],
        lip_lo=2.6 + 3.0 * u["lip_lo"],
        hairline=27 + 13 * u["hairline"],
        part=-1 + 2 * u["part"],
        volume=u["volume"],
        ear_h=8.5 + 4.0 * u["ear_h"],
        ear_w=3.8 + 2.4 * u["ear_w"],
        ear_y=7.0 + 6.0 * u["ear_y"],
        blush=u["blush"],
        mole=u["mole"] < 0.25,
        mole_x=(u["mole_x"] - 0.5) * 1.6 * R,
        mole_y=-8 + 56 * u["mole_y"],
        mole_r=0.6 + 0.7 * u["mole_r"],
    )
    return t, freckles


def _similarity_batch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, ...]:
    """Least-squares similarities src (B, 5, 2) -> dst (5, 2), as face aligners fit them.

    Returns a, b, tx, ty of x' = a x - b y + tx, y' = b x + a y + ty."""
    ms, md = src.mean(1), dst.mean(0)
    s, d = src - ms[:, None], dst - md
    den = (s * s).sum((1, 2))
    a = (s * d).sum((1, 2)) / den
    b = (s[..., 0] * d[:, 1] - s[..., 1] * d[:, 0]).sum(1) / den
    return a, b, md[0] - (a * ms[:, 0] - b * ms[:, 1]), md[1] - (b * ms[:, 0] + a * ms[:, 1])


def _render_batch(seed: int, indices: list[int], idents: list[int], bank: np.ndarray) -> list[tuple]:
    """Render a block of images: [(BGR uint8 112x112x3, labels, JPEG quality)] in order."""
    B = len(indices)
    rngs = [np.random.default_rng([seed, 0, int(i)]) for i in indices]
    v = dict(zip(_V, np.array([r.random(len(_V)) for r in rngs]).T))
    t, freckles = _identities(seed, idents)
    att = {k: _vchoice(v[k], tuple(p for _, p in RATES[k])) for k in RATES}
    labels = [{k: RATES[k][int(att[k][b])][0] for k in RATES} for b in range(B)]
    S: dict = {}  # everything the per-image painter needs, indexed [b]

    # ---- pose and head geometry (canvas pixels; frontal eyes near (46,60) and (82,60))
    pose = att["pose"]
    turn = np.where(pose == 1, -1.0, 1.0)  # RATES["pose"]: frontal, left, right
    yaw = np.where(pose == 0, (v["yaw"] - 0.5) * 0.3, (0.38 + 0.4 * v["yaw"]) * turn)
    cx, ey = 63.0 + 2.0 * v["cx"], 59.0 + 2.0 * v["ey"]
    R = t["R"]
    G = _GeoB(cx, R, t["depth"] * R, yaw)
    skin = np.minimum(t["skin"] * _C(0.97 + 0.06 * v["skin"]), 255.0)
    hair = t["hair"]
    chin = ey + t["chin"]
    yt = ey - 4.0  # temple level: the top of the face's sides
    light = (v["light"] - 0.5) * 1.6  # key light from -x (negative) to +x (positive)
    style = t["style"]
    vol = 1.0 + 3.0 * t["volume"]
    hx_sil = t["top_w"] * 1.04 + vol
    gon = ey + t["gonion"]
    S["skin"] = _cols(skin)
    S["hair"] = _cols(hair)

    # ---- long hair behind the head, clothes, neck, cranium
    wide = hx_sil + 4 + 10 * v["back_wide"]
    S["back"] = _Pts(
        _cat(_xy(cx - wide, CANVAS + 2.0), _arc(cx, yt, hx_sil, t["top_h"] + vol), _xy(cx + wide, CANVAS + 2.0))
    )
    S["back_col"] = _cols(hair * 0.8)
    cloth = _colorv(np.stack([v["cl0"], v["cl1"], v["cl2"], v["cl3"]], -1), 0.6, 15, 235)
    S["cloth"] = _cols(cloth)
    S["cloth_dark"] = _cols(cloth * 0.75)
    S["cloth_e"] = _Ell(_xy(cx - 10 * G.s[:, 0], CANVAS + 36.0), _xy(R * 2.3, 50.0))
    S["collar_e"] = _Ell(_xy(cx - 4 * G.s[:, 0], CANVAS - 12.0), _xy(R * 0.75, 9.0))
    nx = cx - 6 * G.s[:, 0]
    neck = _cat(
        _xy(nx - 0.62 * R, gon),
        _xy(nx + 0.62 * R, gon),
        _xy(nx + 0.66 * R, CANVAS + 2.0),
        _xy(nx - 0.66 * R, CANVAS + 2.0),
    )
    S["neck"] = _Pts(neck)
    S["neck_col"] = _cols(skin * 0.82)
    S["neck_shadow"] = _Pts(neck[:, :2] + (0.0, 6.0))
    side_w = np.minimum(G.sil, R * 0.98)
    hy0 = ey + t["gonion"] * 0.8
    S["head"] = _Pts(
        _cat(
            _arc(cx, yt, t["top_w"], t["top_h"]),
            _xy(cx + side_w, hy0),  # tapers into the neck
            _xy(cx + side_w * 0.8, gon + 6),
            _xy(nx + 0.64 * R, gon + 16),
            _xy(nx - 0.64 * R, gon + 16),
            _xy(cx - side_w * 0.8, gon + 6),
            _xy(cx - side_w, hy0),
        )
    )

    # ---- ears: the far one hides behind the head when turned
    ear_y = ey + t["ear_y"]
    ear_skin = skin * (0.97, 0.9, 0.9)
    S["ear_col"], S["ear_in"], S["ear_rim"] = _cols(ear_skin), _cols(ear_skin * 0.75), _cols(ear_skin * 0.8)
    ear_x = {}
    for k, sd in enumerate((-1.0, 1.0)):
        depth = G.facing(_C(sd * R), _C(-0.15 * R))[:, 0]
        ax = cx + sd * R * G.c[:, 0] - 0.15 * R * G.s[:, 0]
        ear_x[sd] = ax
        w = t["ear_w"] * np.clip(0.55 + 1.5 * (depth / R + 0.15), 0.3, 1.7)
        ecx = ax + sd * w * 0.55
        S[f"ear{k}"] = (depth >= -0.45 * R).tolist()
        S[f"ear{k}_e"] = _Ell(_xy(ecx, ear_y), _xy(w, t["ear_h"]))
        S[f"ear{k}_in"] = _Ell(_xy(ecx - sd * w * 0.15, ear_y + 1), _xy(w * 0.5, t["ear_h"] * 0.55))
        S[f"ear{k}_sh"] = _Ell(_xy(ecx, ear_y), _xy(w + 1, t["ear_h"] + 1))

    # ---- face outline: forehead arc, sides, jaw -- all on the turned surface
    nf, nj = len(_FH_SIN), len(_JAW_SIN)
    jaw_dx = _C(R * t["jaw_w"]) * _JAW_SIN
    jaw_y = _C(gon) + _C(t["chin"] - t["gonion"]) * _JAW_COS ** _C(t["jaw_q"])
    fdx = np.concatenate([_C(t["top_w"] * 0.99) * _FH_SIN, _C(R), _C(R * 0.995), jaw_dx, _C(-R * 0.995), _C(-R)], 1)
    fy = np.concatenate(
        [
            _C(yt) - _C(t["top_h"]) * _FH_COS,
            _C(yt),
            _C(ey + t["gonion"] * 0.6),
            jaw_y,
            _C(ey + t["gonion"] * 0.6),
            _C(yt),
        ],
        1,
    )
    face = G.pts(fdx, fy, np.where(fy > _C(gon), _C(0.05 * R), 0.0))
    S["face"] = _Pts(face)
    fc = _xy(G.x(np.zeros((B, 1)))[:, 0], ey + 12.0)[:, None]
    lshift = _xy(light * 12.0, -4.0)[:, None]
    S["dome"] = [_Pts(fc + (face - fc) * k + lshift * (1 - k)) for k in (0.84, 0.66, 0.46)]
    S["jawline"] = _Pts(face[:, nf + 2 : nf + 2 + nj] + (0.0, 3.0))

    # ---- cheeks, moles, freckles
    S["blush"] = (t["blush"] > 0.3).tolist()
    S["blush_col"] = _cols(skin + ((220.0, 80.0, 90.0) - skin) * _C(0.04 + 0.1 * (t["blush"] - 0.3)))
    for k, sd in enumerate((-1.0, 1.0)):
        bdx = _C(sd * R * 0.55)
        S[f"blush{k}_e"] = _Ell(_xy(G.x(bdx)[:, 0], ey + 19), _xy(8 * G.fs(bdx)[:, 0], 6.0))
    mdx = _C(t["mole_x"])
    S["mole"] = (t["mole"] & (G.facing(mdx)[:, 0] > 0)).tolist()
    S["mole_e"] = _Ell(_xy(G.x(mdx)[:, 0], ey + t["mole_y"]), _xy(t["mole_r"] * G.fs(mdx)[:, 0], t["mole_r"]))
    S["mole_col"] = _cols(skin * (0.45, 0.35, 0.3))
    S["freckle_col"] = _cols(skin + (skin * (0.75, 0.6, 0.5) - skin) * 0.35)

    # ---- beard shapes (the per-image painter picks one)
    mouth_y = ey + t["mouth_y"] + (v["mouth_dy"] - 0.5) * 1.5
    mw = t["mouth_w"] * (0.95 + 0.1 * v["mouth_dy"])
    nose_y = ey + t["nose_y"] + (v["nose_dy"] - 0.5) * 1.2
    up = mouth_y - t["lip_up"] - 2.5
    n45 = nose_y + 4.5
    Rb = R
    full = np.stack(
        [
            _xy(Rb * 0.97, ey + 4),
            _xy(Rb * 0.82, ey + 16),
            _xy(Rb * 0.6, ey + 24),
            _xy(mw + 3, up - 1),
            _xy(mw * 0.4, n45),
            _xy(-mw * 0.4, n45),
            _xy(-mw - 3, up - 1),
            _xy(-Rb * 0.6, ey + 24),
            _xy(-Rb * 0.82, ey + 16),
            _xy(-Rb * 0.97, ey + 4),
        ],
        1,
    )
    full = np.concatenate([full, _xy(jaw_dx * 1.03, jaw_y + 2.5)[:, ::-1]], 1)
    goatee = np.stack(
        [
            _xy(mw + 2, up + 1),
            _xy(mw * 0.4, up - 4),
            _xy(-mw * 0.4, up - 4),
            _xy(-mw - 2, up + 1),
            _xy(-mw - 1.5, mouth_y + 4),
            _xy(-mw * 0.7, chin + 2),
            _xy(0 * mw, chin + 3),
            _xy(mw * 0.7, chin + 2),
            _xy(mw + 1.5, mouth_y + 4),
        ],
        1,
    )
    st = np.maximum(up - 3.5 - 2.5 * t["volume"], n45)  # top edge: 4-6 px above the lip
    stache = np.stack(
        [
            _xy(mw + 1.5, mouth_y + 0.5),
            _xy(mw * 0.45, st),
            _xy(0 * mw, st + 0.6),
            _xy(-mw * 0.45, st),
            _xy(-mw - 1.5, mouth_y + 0.5),
            _xy(-mw * 0.55, up + 2.8),
            _xy(0 * mw, up + 2.3),
            _xy(mw * 0.55, up + 2.8),
        ],
        1,
    )
    for name, b3 in (("beard_full", full), ("beard_goatee", goatee), ("beard_stache", stache)):
        S[name] = _Pts(G.pts(b3[..., 0], b3[..., 1], np.where(np.abs(b3[..., 0]) < _C(R * 0.5), _C(0.1 * R), 0.0)))
    S["beard"] = t["beard"].tolist()
    S["beard_col"] = _cols(hair * 0.85)
    S["stubble_col"] = _cols(skin + (hair * 0.6 - skin) * _C(0.22 + 0.15 * v["stubble"]))

    # ---- eyes
    openf = t["eye_open"] * (0.85 + 0.3 * v["eye_open"])
    S["blink"] = (v["blink"] < 0.025).tolist()
    gx, gy = (v["gaze_x"] - 0.5) * 2.0 - yaw * 1.5, (v["gaze_y"] - 0.5) * 1.0
    S["white"] = _cols(skin + ((238.0, 234.0, 228.0) - skin) * 0.9)
    S["lid"] = _cols(np.where(_C(t["lash"] > 0.3), hair * 0.3, skin * 0.35))
    S["lid_t"] = np.where(t["lash"] > 0.8, 2, 1).tolist()
    S["iris"], S["iris_ring"] = _cols(t["iris"]), _cols(t["iris"] * 0.55)
    S["blink_col"] = _cols(skin * 0.45)
    ir = t["iris_r"] * t["ew"]
    landmarks = np.empty((B, 5, 2))
    for k, sd in enumerate((-1.0, 1.0)):
        edx = sd * t["es"] + (v[f"ejx{k}"] - 0.5) * 0.8
        ecy = ey + (v[f"ejy{k}"] - 0.5) * 0.8
        ex = G.x(_C(edx), -1.0)[:, 0]
        landmarks[:, k] = np.stack([ex, ecy], -1)
        f = G.fs(_C(edx))[:, 0]
        w = t["ew"] * f
        up, lo = t["ew"] * openf * 0.62, t["ew"] * openf * 0.42
        tilt = _C(t["eye_tilt"] * t["ew"]) * _T11
        xs = _C(ex) + _C(sd * w) * _T11  # _T11 = -1 at the inner corner, +1 at the outer one
        uy = _C(ecy) - tilt - _C(up) * _T11_UP
        ly = _C(ecy) - tilt + _C(lo) * _T11_LO
        upper, lower = _xy(xs, uy), _xy(xs, ly)
        S[f"eye{k}"] = _Pts(np.concatenate([upper, lower[:, -2:0:-1]], 1))
        # iris and pupil clipped to the lids analytically: the lid curves are uniform in t
        icx, icy = ex + gx * f, ecy + gy - 0.2
        iw = ir * (0.55 + 0.45 * f)
        for name, rad in (("iris", 1.0), ("pupil", 0.42)):
            px = np.clip(_C(icx) + _C(iw * rad) * _CIRC_COS, _C(ex - w), _C(ex + w))
            pos = np.clip((sd * (px - _C(ex)) / _C(w) + 1.0) * 5.0, 0.0, 10.0)
            i0 = np.minimum(pos.astype(int), 9)
            fr = pos - i0
            top = np.take_along_axis(uy, i0, 1) * (1 - fr) + np.take_along_axis(uy, i0 + 1, 1) * fr
            bot = np.take_along_axis(ly, i0, 1) * (1 - fr) + np.take_along_axis(ly, i0 + 1, 1) * fr
            py = np.minimum(np.maximum(_C(icy) + _C(ir * rad) * _CIRC_SIN, top), bot)
            S[f"{name}{k}"] = _Pts(_xy(px, py))
        S[f"glint{k}_e"] = _Ell(_xy(icx - 0.7 - light * 0.6, icy - 0.9), _xy(0.8 + 0 * icx, 0.8))
        S[f"socket{k}_e"] = _Ell(_xy(ex, ecy - up * 0.8), _xy(w * 1.25 + 1.5, up * 2.0 + 1.5))
        S[f"undereye{k}_e"] = _Ell(_xy(ex + sd * 0.5, ecy + lo + 2.0), _xy(w * 0.9, 2.0 + 0 * w))
        S[f"crease{k}"] = _Pts(upper[:, 1:-1] - _C(up * 0.9 + 1.4)[..., None] * (0.0, 1.0))
        S[f"lidshadow{k}"] = _Pts(upper[:, 2:-2] + (0.0, 1.0))
        S[f"lowlid{k}"] = _Pts(lower[:, 1:-1] + (0.0, 0.6))
        S[f"blinkline{k}"] = _Pts(lower[:, 1:-1] - _C(lo * 0.5)[..., None] * (0.0, 1.0))
        S[f"upper{k}"] = _Pts(upper)
        S[f"flick{k}"] = _Pts(np.stack([upper[:, -1], upper[:, -1] + (sd * 1.3, -0.9)], 1))

    # ---- brows
    S["brow_col"] = _cols(skin + (t["brow"] - skin) * 0.8)
    th = _C(t["brow_t"]) * (1.15 - 0.65 * _T7)
    for k, sd in enumerate((-1.0, 1.0)):
        dx = sd * (_C(t["es"] - t["ew"] * 0.95) + _T7 * _C(t["ew"] * (0.95 + t["brow_len"])))
        by = _C(ey - t["brow_gap"] - (v["brow_raise"] - 0.5) * 2.0) - _C(t["brow_arch"]) * _T7_BROW + _T7 * 1.2
        S[f"brow{k}"] = _Pts(
            G.pts(
                np.concatenate([dx, dx[:, ::-1]], 1), np.concatenate([by - th * 0.6, (by + th * 0.4)[:, ::-1]], 1), 1.5
            )
        )

    # ---- nose: flanks, ridge, nostrils, tip highlight, the shadow underneath
    nw = t["nose_w"]
    ndz = t["nose_dz"] * R
    ny = _C(ey - 3) + _C(nose_y - ey + 2) * _N6
    prof = _N6_PROF * _C(ndz)
    shadow_side = np.where(light > 0, -1.0, 1.0)
    for k, sd in enumerate((-1.0, 1.0)):
        S[f"flank{k}"] = _Pts(G.pts(sd * (2.0 + _C(nw * 0.6) * _N6), ny, prof * 0.55))
        lvl = np.where(shadow_side == sd, 98, 116) - np.where(sd * yaw < -0.2, 16, 0)
        S[f"flank{k}_lvl"] = lvl.tolist()
        ndx = _C(sd * nw * 0.42)
        f = G.fs(ndx)[:, 0]
        S[f"nostril{k}"] = (G.facing(ndx, _C(ndz * 0.5))[:, 0] >= 0).tolist()
        S[f"nostril{k}_e"] = _Ell(
            _xy(G.x(ndx, _C(ndz * 0.45))[:, 0], nose_y + 1.8), _xy(np.maximum(0.6, nw * 0.2 * f), 1.05)
        )
        S[f"wing{k}_e"] = _Ell(
            _xy(G.x(_C(sd * nw * 0.85), _C(ndz * 0.25))[:, 0], nose_y - 0.5), _xy(2.8 * f + 0.5, 3.2)
        )
    ridge = G.pts(np.zeros((B, 6)), ny, prof)
    S["turned"] = (np.abs(yaw) > 0.2).tolist()
    S["ridge"] = _Pts(ridge)
    S["ridge_edge"] = _Pts(ridge[:, 2:] + _C(np.copysign(0.8, yaw))[..., None] * (1.0, 0.0))
    S["ridge_hi"] = _Pts(ridge[:, 1:-1])
    S["ridge_col"] = _cols(skin * 0.8)
    zero = np.zeros((B, 1))
    S["tip_e"] = _Ell(_xy(G.x(zero, _C(ndz))[:, 0], nose_y - 1.5), _xy(nw * 0.32, 2.5))
    S["under_e"] = _Ell(_xy(G.x(zero, _C(ndz * 0.4))[:, 0], nose_y + 3.2), _xy(nw * 0.75, 2.0))
    S["nostril_col"] = _cols(skin + (skin * (0.42, 0.32, 0.3) - skin) * 0.85)
    landmarks[:, 2] = _xy(G.x(zero, _C(ndz))[:, 0], nose_y - 1.0)

    # ---- mouth: lips on the turned surface, sometimes open with teeth
    mm, mo = v["mouth_mode"], v["mouth_open"]
    opening = np.where(mm < 0.18, 0.6 + 2.5 * mo, np.where(mm < 0.23, 3.0 + 3.5 * mo, 0.0))
    smile = (v["smile"] - 0.35) * 2.5
    lu, ll, ldz = t["lip_up"], t["lip_lo"], 0.12 * R
    line_y = _C(mouth_y) + np.array([0.0, 0.2, 0.4, 0.5, 0.4, 0.2, 0.0]) * _C(1 - np.minimum(smile, 1.0) * 0.6)
    line_y[:, [0, -1]] -= _C(smile)
    rows = np.empty((B, 5, 7))
    rows[:, 0] = _C(mouth_y) - np.stack([smile, lu * 0.55, lu + 0.3, lu * 0.72, lu + 0.3, lu * 0.55, smile], -1)
    rows[:, 1] = line_y - _C(opening * 0.15)  # upper lip, bottom edge
    rows[:, 2] = line_y + _C(opening * 0.85)  # lower lip, top edge
    rows[:, 3] = _C(mouth_y + opening) + _C(ll) * np.array([0.0, 0.75, 0.97, 1.0, 0.97, 0.75, 0.0])
    rows[:, 3, [0, -1]] = line_y[:, [0, -1]]
    rows[:, 4] = line_y + _C(opening * 0.35)  # a closed mouth's line
    mdz = np.tile(_MDZ * _C(ldz), 5)
    M5 = G.pts(np.tile(_MX * _C(mw), 5), rows.reshape(B, 35), mdz).reshape(B, 5, 7, 2)
    S["upper_lip"] = _Pts(np.concatenate([M5[:, 0], M5[:, 1, ::-1]], 1))
    S["lower_lip"] = _Pts(np.concatenate([M5[:, 2], M5[:, 3, ::-1]], 1))
    S["mouth_in"] = _Pts(np.concatenate([M5[:, 1], M5[:, 2, ::-1]], 1))
    teeth_h = np.minimum(opening * 0.45, 2.6)
    S["teeth"] = _Pts(np.concatenate([M5[:, 1, 1:-1], M5[:, 1, -2:0:-1] + _C(teeth_h)[..., None] * (0.0, 1.0)], 1))
    S["open"] = (opening > 0.5).tolist()
    S["teeth_on"] = (opening > 1.2).tolist()
    S["mouth_line"] = _Pts(np.where(_C(opening > 0.5)[..., None], M5[:, 1], M5[:, 4]))
    S["lip"], S["lip_up_col"], S["lip_line"] = _cols(t["lip"]), _cols(t["lip"] * 0.9), _cols(t["lip"] * 0.5)
    S["underlip_e"] = _Ell(_xy(G.x(zero, _C(ldz * 0.6))[:, 0], rows[:, 3, 3] + 2.2), _xy(mw * 0.45, 1.8))
    S["philtrum_e"] = _Ell(
        _xy(G.x(zero, _C(ldz * 0.8))[:, 0], (nose_y + rows[:, 0, 3]) / 2 + 1.5), _xy(1.6 + 0 * mw, 2.5)
    )
    S["sheen_e"] = _Ell(_xy(G.x(zero, _C(ldz))[:, 0], rows[:, 3, 3] - ll * 0.45), _xy(mw * 0.3, 0.9))
    S["corner0_e"] = _Ell(M5[:, 4, 0], _xy(1.6 + 0 * mw, 1.6))
    S["corner1_e"] = _Ell(M5[:, 4, -1], _xy(1.6 + 0 * mw, 1.6))
    landmarks[:, 3], landmarks[:, 4] = M5[:, 4, 0], M5[:, 4, -1]

    # ---- hair on top
    bangs, bun = style == _BANGS, style == _BUN
    hl = np.where(bangs, ey - t["brow_gap"] - 4.0 - 3.0 * v["bangs"], ey - t["hairline"] - 3.0 * bun)
    drop = np.where(bangs, 4.0, ey - 8 - hl)
    hy = (
        _C(hl)
        + _C(drop) * np.abs(_T15) ** _C(3.0 + 3.0 * t["volume"])
        + _C(t["part"] * 2.5) * _T15
        + _C(bangs) * _T15_ZIG
    )
    line3 = G.pts(_T15 * _C(R * 0.97), hy, 0.5)
    side_y = ey + _STYLE_SIDE[style]
    long_ = (style == _MEDIUM) | (style == _LONG)
    sil_out = hx_sil + 2.0 * long_
    inner = np.where(long_, 0.99, 1.0) * R
    S["hair_poly"] = _Pts(
        _cat(
            _xy(cx - sil_out, side_y),
            _arc(cx, yt, hx_sil, t["top_h"] + vol),
            _xy(cx + sil_out, side_y),
            _xy(G.x(_C(inner))[:, 0], side_y),
            line3[:, ::-1],
            _xy(G.x(_C(-inner))[:, 0], side_y),
        )
    )
    S["hairline"] = _Pts(line3 + (0.0, 1.2))
    S["hair_dark"] = _cols(hair * 0.6)
    S["hair_hi_e"] = _Ell(_xy(cx + light * 10, yt - t["top_h"] * 0.55), _xy(t["top_w"] * 0.6, 12.0 + 0 * cx))
    S["hair_hi_a"] = (-10 * light).tolist()
    S["bald_hi_e"] = _Ell(_xy(cx + light * 10, yt - t["top_h"] * 0.6), _xy(t["top_w"] * 0.5, 10.0 + 0 * cx))
    end_y = side_y + 10.0 * (style == _LONG)
    for k, sd in enumerate((-1.0, 1.0)):
        S[f"lock{k}"] = (long_ & (G.facing(_C(sd * R))[:, 0] >= -0.5 * R)).tolist()
        S[f"lock{k}_p"] = _Pts(
            _cat(
                _xy(G.x(_C(sd * R * 0.9))[:, 0], hy[:, 0 if sd < 0 else -1]),
                _xy(G.x(_C(sd * R * 0.93))[:, 0], ey + 6),
                _xy(cx + sd * (sil_out - 1), end_y),
                _xy(cx + sd * (sil_out + 3), end_y),
                _xy(cx + sd * (sil_out + 1), yt),
            )
        )
    S["bun_e"] = _Ell(_xy(cx, yt - t["top_h"] - 4), _xy(12.0 + 0 * cx, 9.0))

    # ---- medical mask
    mcol = _MASK_COLORS[_vchoice(v["mask_col"], _MASK_W)]
    dark_m = _C(mcol[:, 0] < 80)
    S["mask_col"] = _cols(mcol)
    S["pleat_col"] = _cols(np.where(dark_m, mcol * 1.6, mcol * 0.8))
    S["binding_col"] = _cols(np.where(dark_m, mcol * 1.4, mcol * 0.88))
    S["loop_col"] = _cols(np.where(_C(v["mask_loop"] < 0.7), 236.0, mcol * 0.9))
    top_c = ey + 8.0 + 3.5 * v["mask_top"]
    side_top = ey + 15.0 + 3.0 * v["mask_side"]
    bot_side = chin - 14.0 - 4.0 * v["mask_bot"]
    mdx = _T13 * _C(R * 0.95)
    top_y = _C(top_c) + _C(side_top - top_c) * np.abs(_T13) ** 1.2
    bot_y = _C(bot_side) + _C(chin + 3.5 - bot_side) * (1 - np.abs(_T13) ** 1.6)
    bulge = _C(ndz * 0.75) * np.maximum(1 - (mdx / _C(R * 0.45)) ** 2, 0) + 1.5
    frac = np.array([0.0, 0.3, 0.5, 0.7, 1.0])[None, :, None]
    gy_ = (top_y[:, None] + (bot_y - top_y)[:, None] * frac).reshape(B, 65)
    grid = G.pts(np.tile(mdx, 5), gy_, np.tile(bulge, 5)).reshape(B, 5, 13, 2)
    S["mask"] = _Pts(np.concatenate([grid[:, 0], grid[:, 4, ::-1]], 1))
    S["pleats"] = [_Pts(grid[:, k, 1:-1] + (0.0, 1.0)) for k in (1, 2, 3)]
    S["pleat_sh"] = [_Pts(grid[:, k, 1:-1] + (0.0, 2.2)) for k in (1, 2, 3)]
    S["binding"] = _Pts(grid[:, 0, 1:-1] + (0.0, 0.8))
    S["mask_hi_e"] = _Ell(_xy(G.x(zero, _C(ndz))[:, 0], top_c + 8), _xy(R * 0.25, 7.0 + 0 * R))
    for k, (sd, idx) in enumerate(((-1.0, 0), (1.0, -1))):
        ex_ = ear_x[sd] + sd * 2.0
        S[f"loop{k}"] = _Pts(np.stack([grid[:, 0, idx], _xy(ex_, ear_y - t["ear_h"] * 0.6)], 1))
        S[f"loop{k}b"] = _Pts(np.stack([grid[:, 4, idx], _xy(ex_, ear_y + t["ear_h"] * 0.5)], 1))

    # ---- glasses
    sun = att["glasses"] == 2  # RATES["glasses"]: none, clear, sun
    shape = _vchoice(v["gl_shape"], _LENS_W)
    hw = t["ew"] * (1.45 + 0.4 * v["gl_w"]) * np.where(sun, 1.1, 1.0)
    hh = np.where(
        shape == _LENS_SHAPES.index("round"), hw * 0.95, t["ew"] * (1.0 + 0.35 * v["gl_h"]) * np.where(sun, 1.1, 1.0)
    )
    S["frame"] = _cols(_FRAMES[_vchoice(v["gl_frame"], _FRAMES_W)])
    S["frame_t"] = np.where((v["gl_thin"] < 0.6) & ~sun, 1, 2).tolist()
    gz = G.z(_C(t["es"]))[:, 0] + 4.0
    gly = ey + 1.0
    tints = np.stack([v["gl_t0"], v["gl_t1"], v["gl_t2"], v["gl_t3"]], -1)
    S["tint"] = _cols(np.where(_C(sun), _colorv(tints, 0.5, 20, 90), _colorv(tints, 0.3, 150, 240)))
    S["tint_a"] = np.where(sun, 0.86 + 0.12 * v["gl_alpha"], 0.06 + 0.14 * v["gl_alpha"]).tolist()
    S["glare_a"] = (0.18 + np.where(sun, 0.25, 0.15) * v["gl_glare"]).tolist()
    S["rimless"] = (~sun & (v["gl_rimless"] < 0.15)).tolist()
    lenses = []
    for k, sd in enumerate((-1.0, 1.0)):
        lx = _LENS_X[k][shape]
        ln = _xy(_C(cx) + (sd * _C(t["es"]) + _C(hw) * lx) * G.c + _C(gz) * G.s, _C(gly) + _C(hh) * _LENS_Y[k][shape])
        lenses.append(ln)
        S[f"lens{k}"] = _Pts(ln)
        lo_, hi_ = ln.min(1), ln.max(1)
        S[f"lens{k}_box"] = np.concatenate([lo_, hi_], 1).tolist()
        c = ln.mean(1)
        rw = (hi_[:, 0] - lo_[:, 0]) * 0.22
        S[f"glare{k}_e"] = _Ell(_xy(c[:, 0] + rw * 0.6, c[:, 1] - hh * 0.35), _xy(rw, hh * 0.16))
        S[f"temple{k}"] = (sd * yaw <= 0.25).tolist()
        out_i = np.argmax(sd * ln[..., 0], 1)
        outer = np.take_along_axis(ln, out_i[:, None, None], 1)[:, 0] + _C(hh * 0.3) * (0.0, -1.0)
        ear_pt = _xy(cx + sd * R * G.c[:, 0] - 0.1 * R * G.s[:, 0], ear_y - t["ear_h"] * 0.5)
        S[f"temple{k}_p"] = _Pts(np.stack([outer, ear_pt], 1))
    il = np.take_along_axis(lenses[0], np.argmax(lenses[0][..., 0], 1)[:, None, None], 1)[:, 0]
    ir_ = np.take_along_axis(lenses[1], np.argmin(lenses[1][..., 0], 1)[:, None, None], 1)[:, 0]
    up3 = _C(hh * 0.3) * (0.0, -1.0)
    S["bridge"] = _Pts(np.stack([il + up3, _xy(cx + gz * 1.1 * G.s[:, 0], gly - hh * 0.45), ir_ + up3], 1))

    # ---- alignment: similarity from the 5 landmarks to the template, then detector jitter
    a, b, tx, ty = _similarity_batch(landmarks, TEMPLATE)
    rot, sc = np.radians((v["rot"] - 0.5) * 9.0), 0.95 + 0.1 * v["scale"]
    ja, jb = sc * np.cos(rot), sc * np.sin(rot)
    jx = 56.0 - (ja - jb) * 56.0 + (v["shift_x"] - 0.5) * 4.0
    jy = 56.0 - (jb + ja) * 56.0 + (v["shift_y"] - 0.5) * 4.0
    A = np.empty((B, 2, 3))
    A[:, 0, 0], A[:, 0, 1], A[:, 0, 2] = ja * a - jb * b, -(ja * b + jb * a), ja * tx - jb * ty + jx
    A[:, 1, 0], A[:, 1, 1], A[:, 1, 2] = jb * a + ja * b, ja * a - jb * b, jb * tx + ja * ty + jy
    # Draw straight into the aligned crop: transform the geometry, not the pixels (no resampling,
    # and a warp would cost more than the drawing).  Ellipses turn by the rotation, scale by the scale.
    scale = np.hypot(A[:, 0, 0], A[:, 1, 0])
    S["rot"] = np.degrees(np.arctan2(A[:, 1, 0], A[:, 0, 0])).tolist()
    for key, val in S.items():
        if isinstance(val, _Pts):
            S[key] = _I(_affine(A, val.p))
        elif isinstance(val, _Ell):
            S[key] = _E(_affine(A, val.c), val.ax * _C(scale))
        elif isinstance(val, list) and val and isinstance(val[0], _Pts):
            S[key] = [_I(_affine(A, q.p)) for q in val]
    for k in (0, 1):
        ln = S[f"lens{k}"]
        S[f"lens{k}_box"] = (np.concatenate([ln.min(1), ln.max(1)], 1) / _ONE).tolist()

    # ---- per-image scalars the painter and the camera need
    S["style"], S["light"], S["yaw"] = style.tolist(), light.tolist(), yaw.tolist()
    occ = _affine(A, _xy(G.x(zero)[:, 0], ey))
    S["occ_at"] = np.stack([occ[:, 0], occ[:, 1], R * scale], -1).tolist()
    S["temp"], S["gain"], S["sigma"] = (
        ((v["temp"] - 0.5) * 0.16).tolist(),
        (0.85 + 0.27 * v["gain"]).tolist(),
        (1.2 + 3.0 * v["sigma"]).tolist(),
    )
    S["dk_gamma"], S["dk_e"], S["dk_sigma"] = (
        (1.25 + 0.8 * v["dk_gamma"]).tolist(),
        ((0.24 + 0.24 * v["dk_e"]) * 255.0).tolist(),
        (4.0 + 5.0 * v["dk_sigma"]).tolist(),
    )
    S["dk_cast"] = (v["dk_cast"] >= 0.5).tolist()
    S["bl_kind"], S["bl_s"], S["bl_angle"] = (v["bl_kind"] < 0.5).tolist(), v["bl_s"].tolist(), v["bl_angle"].tolist()
    S["soft"] = (v["soft"] < 0.2).tolist()
    S["noise_at"] = (v["noise"] * (len(bank) - _PIXELS)).astype(int).tolist()
    S["quality"] = (58 + 38 * v["quality"]).astype(int).tolist()
    S["collar"] = (v["collar"] < 0.5).tolist()
    S["freckles"] = [None] * B
    for b, fr in enumerate(freckles):  # rare (~7 % of identities), so per image
        if fr is not None:
            z = t["depth"][b] * R[b] * np.sqrt(np.maximum(1.0 - fr[:, 0] ** 2, 0.0))
            x = np.clip(cx[b] + fr[:, 0] * R[b] * G.c[b, 0] + z * G.s[b, 0], G.lo[b, 0], G.hi[b, 0])
            S["freckles"][b] = _I(_affine(A[b : b + 1], _xy(x, ey[b] + fr[:, 1])[None]))[0]
    return [_paint(b, S, rngs[b], labels[b], bank) for b in range(B)]


def _paint(b: int, S: dict, rng: np.random.Generator, lab: dict, bank: np.ndarray) -> tuple:
    """Issue one image's cv2 calls from the batch's precomputed geometry, then the camera model."""
    AA, SH = _AA, _SHIFT
    fill, ell, poly = cv2.fillPoly, cv2.ellipse, cv2.polylines
    img = _background(rng)
    # Coarse multiplicative shading (128 = x1), drawn at a quarter of the size with the same fixed-point
    # coordinates and two more fractional bits (CS); upscaling it later blurs it for free.
    shade = np.full((SIZE // 4, SIZE // 4), 128, np.uint8)
    CS = SH + 2
    fine = np.full((SIZE, SIZE), 128, np.uint8)  # fine shading: sockets, nose, lips
    hmask = np.zeros((SIZE, SIZE), np.uint8)  # where hair texture goes
    style = S["style"][b]
    rot = S["rot"][b]
    skin, hair = S["skin"][b], S["hair"][b]

    if style == _LONG:  # long hair falls behind the head
        fill(img, [S["back"][b]], S["back_col"][b], AA, SH)
        fill(hmask, [S["back"][b]], 255, _L8, SH)
    c, a = S["cloth_e"][0][b], S["cloth_e"][1][b]
    ell(img, c, a, rot, 0, 360, S["cloth"][b], -1, AA, SH)
    if S["collar"][b]:
        ell(img, S["collar_e"][0][b], S["collar_e"][1][b], rot, 0, 180, S["cloth_dark"][b], 1, AA, SH)
    fill(img, [S["neck"][b]], S["neck_col"][b], AA, SH)
    fill(hmask, [S["neck"][b]], 0, _L8, SH)
    fill(img, [S["head"][b]], skin, AA, SH)
    fill(hmask, [S["head"][b]], 0, _L8, SH)

    for k, sd in ((0, -1.0), (1, 1.0)):  # ears
        if S[f"ear{k}"][b]:
            e = S[f"ear{k}_e"]
            ell(img, e[0][b], e[1][b], rot + sd * 8, 0, 360, S["ear_col"][b], -1, AA, SH)
            ell(img, S[f"ear{k}_in"][0][b], S[f"ear{k}_in"][1][b], rot + sd * 8, 0, 360, S["ear_in"][b], -1, AA, SH)
            ell(
                img, e[0][b], e[1][b], rot + sd * 8, -90 - sd * 90 - 60, -90 - sd * 90 + 160, S["ear_rim"][b], 1, AA, SH
            )
            ell(fine, S[f"ear{k}_sh"][0][b], S[f"ear{k}_sh"][1][b], rot + sd * 8, 0, 360, 110, -1, _L8, SH)

    face = S["face"][b]
    fill(img, [face], skin, AA, SH)
    fill(hmask, [face], 0, _L8, SH)
    fill(shade, [face], 102, _L8, CS)
    for lvl, d in zip((120, 132, 140), S["dome"]):
        fill(shade, [d[b]], lvl, _L8, CS)
    poly(shade, [S["jawline"][b]], False, 68, 1, _L8, CS)
    poly(shade, [S["neck_shadow"][b]], False, 96, 2, _L8, CS)

    if S["blush"][b]:
        for k in (0, 1):
            e = S[f"blush{k}_e"]
            ell(img, e[0][b], e[1][b], rot, 0, 360, S["blush_col"][b], -1, AA, SH)
    if S["freckles"][b] is not None:
        col = S["freckle_col"][b]
        for p in S["freckles"][b].tolist():
            cv2.circle(img, p, 11, col, -1, AA, SH)
    if S["mole"][b]:
        ell(img, S["mole_e"][0][b], S["mole_e"][1][b], rot, 0, 360, S["mole_col"][b], -1, AA, SH)

    beard = S["beard"][b]
    if beard:
        bp = S["beard_stache" if beard == _MUSTACHE else "beard_goatee" if beard == _GOATEE else "beard_full"][b]
        fill(img, [bp], S["stubble_col" if beard == _STUBBLE else "beard_col"][b], AA, SH)
        fill(hmask, [bp], 90 if beard == _STUBBLE else 255, _L8, SH)

    # eyes
    for k in (0, 1):
        ell(fine, S[f"socket{k}_e"][0][b], S[f"socket{k}_e"][1][b], rot, 0, 360, 102, -1, _L8, SH)
        ell(fine, S[f"undereye{k}_e"][0][b], S[f"undereye{k}_e"][1][b], rot, 0, 360, 116, -1, _L8, SH)
        poly(fine, [S[f"crease{k}"][b]], False, 100, 1, _L8, SH)
        if S["blink"][b]:
            poly(img, [S[f"blinkline{k}"][b]], False, S["blink_col"][b], 1, AA, SH)
            continue
        fill(img, [S[f"eye{k}"][b]], S["white"][b], AA, SH)
        iris = S[f"iris{k}"][b]
        fill(img, [iris], S["iris"][b], AA, SH)
        poly(img, [iris], True, S["iris_ring"][b], 1, AA, SH)
        fill(img, [S[f"pupil{k}"][b]], (12, 10, 10), AA, SH)
        ell(img, S[f"glint{k}_e"][0][b], S[f"glint{k}_e"][1][b], rot, 0, 360, (250, 250, 250), -1, AA, SH)
        poly(fine, [S[f"lidshadow{k}"][b]], False, 96, 1, _L8, SH)
        poly(fine, [S[f"lowlid{k}"][b]], False, 104, 1, _L8, SH)
        poly(img, [S[f"upper{k}"][b]], False, S["lid"][b], S["lid_t"][b], AA, SH)
        poly(img, [S[f"flick{k}"][b]], False, S["lid"][b], 1, AA, SH)
    for k in (0, 1):  # brows
        fill(img, [S[f"brow{k}"][b]], S["brow_col"][b], AA, SH)
        fill(hmask, [S[f"brow{k}"][b]], 200, _L8, SH)

    # nose
    for k in (0, 1):
        poly(fine, [S[f"flank{k}"][b]], False, S[f"flank{k}_lvl"][b], 2, _L8, SH)
    if S["turned"][b]:
        poly(fine, [S["ridge"][b]], False, 94, 1, _L8, SH)
        poly(img, [S["ridge_edge"][b]], False, S["ridge_col"][b], 1, AA, SH)
    poly(fine, [S["ridge_hi"][b]], False, 148, 1, _L8, SH)
    ell(fine, S["tip_e"][0][b], S["tip_e"][1][b], rot, 0, 360, 152, -1, _L8, SH)
    ell(fine, S["under_e"][0][b], S["under_e"][1][b], rot, 0, 360, 90, -1, _L8, SH)
    for k, sd in ((0, -1.0), (1, 1.0)):
        if S[f"nostril{k}"][b]:
            ell(
                img,
                S[f"nostril{k}_e"][0][b],
                S[f"nostril{k}_e"][1][b],
                rot + sd * 20,
                0,
                360,
                S["nostril_col"][b],
                -1,
                AA,
                SH,
            )
            ell(
                fine,
                S[f"wing{k}_e"][0][b],
                S[f"wing{k}_e"][1][b],
                rot,
                -90 + sd * 90 - 110,
                -90 + sd * 90 + 70,
                94,
                1,
                _L8,
                SH,
            )

    # mouth
    if S["open"][b]:
        fill(img, [S["mouth_in"][b]], (58, 22, 26), AA, SH)
        if S["teeth_on"][b]:
            fill(img, [S["teeth"][b]], (226, 220, 206), AA, SH)
    fill(img, [S["upper_lip"][b]], S["lip_up_col"][b], AA, SH)
    fill(img, [S["lower_lip"][b]], S["lip"][b], AA, SH)
    poly(img, [S["mouth_line"][b]], False, S["lip_line"][b], 1, AA, SH)
    for name, lvl in (
        ("underlip_e", 94),
        ("philtrum_e", 118),
        ("corner0_e", 102),
        ("corner1_e", 102),
        ("sheen_e", 150),
    ):
        ell(fine, S[name][0][b], S[name][1][b], rot, 0, 360, lvl, -1, _L8, SH)

    # hair on top
    if style != _BALD:
        hp = S["hair_poly"][b]
        if style == _BUZZ:  # skin shows through
            _blend(img, _bbox(hp / _ONE), 0.6, lambda o, off: _fill(o, hp / _ONE, S["hair_dark"][b], off))
            fill(hmask, [hp], 120, _L8, SH)
        else:
            fill(img, [hp], hair, AA, SH)
            fill(hmask, [hp], 255, _L8, SH)
        poly(fine, [S["hairline"][b]], False, 104, 2, _L8, SH)
        ell(shade, S["hair_hi_e"][0][b], S["hair_hi_e"][1][b], rot + S["hair_hi_a"][b], 0, 360, 150, -1, _L8, CS)
        for k in (0, 1):
            if S[f"lock{k}"][b]:
                fill(img, [S[f"lock{k}_p"][b]], hair, AA, SH)
                fill(hmask, [S[f"lock{k}_p"][b]], 255, _L8, SH)
        if style == _BUN:
            ell(img, S["bun_e"][0][b], S["bun_e"][1][b], rot, 0, 360, hair, -1, AA, SH)
    else:
        ell(shade, S["bald_hi_e"][0][b], S["bald_hi_e"][1][b], rot, 0, 360, 156, -1, _L8, CS)

    if lab["mask"] == "medical":
        fill(img, [S["mask"][b]], S["mask_col"][b], AA, SH)
        for p, q in zip(S["pleats"], S["pleat_sh"]):
            poly(img, [p[b]], False, S["pleat_col"][b], 1, AA, SH)
            poly(fine, [q[b]], False, 112, 1, _L8, SH)
        poly(img, [S["binding"][b]], False, S["binding_col"][b], 2, AA, SH)
        ell(shade, S["mask_hi_e"][0][b], S["mask_hi_e"][1][b], rot, 0, 360, 142, -1, _L8, CS)
        for k in (0, 1):
            if S[f"ear{k}"][b]:
                poly(img, [S[f"loop{k}"][b], S[f"loop{k}b"][b]], False, S["loop_col"][b], 1, AA, SH)

    if lab["glasses"] != "none":
        frame, ft = S["frame"][b], S["frame_t"][b]
        tint, ta, ga = S["tint"][b], S["tint_a"][b], S["glare_a"][b]
        for k in (0, 1):
            ln = S[f"lens{k}"][b]
            box = S[f"lens{k}_box"][b]
            gl = S[f"glare{k}_e"]
            _blend(img, box, ta, lambda o, off: cv2.fillPoly(o, [ln - _I(off)], tint, AA, SH))
            _blend(
                img,
                box,
                ga,
                lambda o, off: cv2.ellipse(
                    o,
                    _pt(gl[0][b][0] / _ONE, gl[0][b][1] / _ONE, off),
                    gl[1][b],
                    rot - 30,
                    0,
                    360,
                    (250, 250, 250),
                    -1,
                    AA,
                    SH,
                ),
            )
            if S["rimless"][b]:
                _blend(
                    img, box, 0.35, lambda o, off: cv2.polylines(o, [ln - _I(off)], True, (200, 200, 205), 1, AA, SH)
                )
            else:
                poly(img, [ln], True, frame, ft, AA, SH)
        poly(img, [S["bridge"][b]], False, frame, ft, AA, SH)
        for k in (0, 1):
            if S[f"temple{k}"][b]:
                poly(img, [S[f"temple{k}_p"][b]], False, frame, ft, AA, SH)

    if lab["occluder"] != "none":
        ox, oy, oR = S["occ_at"][b]
        _occluder(img, rng, lab["occluder"], ox, oy, oR)

    # ---- one multiplicative pass: shading, light falloff, hair texture, exposure, colour temperature
    light = S["light"][b]
    g = rng.random((3, 3), dtype=np.float32) * 0.35 + 0.78
    g[:, 0] -= light * 0.1
    g[:, 2] += light * 0.1
    small = cv2.blur(shade, (3, 3))  # coarse shading x light field, at 28 px
    small = cv2.multiply(small, cv2.resize(g, (SIZE // 4, SIZE // 4), interpolation=cv2.INTER_LINEAR), dtype=cv2.CV_32F)
    factor = cv2.multiply(
        cv2.resize(small, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR),
        cv2.blur(fine, (3, 3)),
        scale=1.0 / (128.0 * 128.0),
        dtype=cv2.CV_32F,
    )
    streak = cv2.resize(rng.standard_normal((12, 42), dtype=np.float32), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    factor = cv2.add(factor, cv2.multiply(streak, hmask, scale=0.22 / 255.0, dtype=cv2.CV_32F))
    temp, gain = S["temp"][b], S["gain"][b]
    f3 = cv2.merge([factor * (gain * (1 + temp)), factor * gain, factor * (gain * (1 - temp))])
    x = cv2.multiply(img, f3, dtype=cv2.CV_8U)
    sigma = S["sigma"][b]
    if lab["dark"] == "1":  # under-exposure: gamma and gain down through a lookup table
        e = S["dk_e"][b]
        cast = np.array((0.9, 0.97, 1.12) if S["dk_cast"][b] else (1.0, 1.0, 1.0))
        lut = (np.linspace(0.0, 1.0, 256)[:, None] ** S["dk_gamma"][b]) * (e * cast)
        x = cv2.LUT(x, np.clip(lut + 0.5, 0, 255).astype(np.uint8).reshape(1, 256, 3))
        sigma = S["dk_sigma"][b]
    if lab["blur"] == "1":
        if S["bl_kind"][b]:
            x = cv2.GaussianBlur(x, (0, 0), 1.2 + 1.6 * S["bl_s"][b])
        else:  # motion blur along a random direction
            L = int(5 + 8 * S["bl_s"][b]) | 1
            k = np.zeros((L, L), np.float32)
            th = math.pi * S["bl_angle"][b]
            h = (L - 1) / 2
            cv2.line(
                k,
                _pt(h - h * math.cos(th), h - h * math.sin(th)),
                _pt(h + h * math.cos(th), h + h * math.sin(th)),
                1.0,
                1,
                cv2.LINE_8,
                SH,
            )
            x = cv2.filter2D(x, -1, k / max(float(k.sum()), 1e-6), borderType=cv2.BORDER_REFLECT101)
    elif S["soft"][b]:  # natural softness, so blur is not trivially separable
        x = cv2.blur(x, (2, 2))
    o = S["noise_at"][b]  # a contiguous window of the flat noise bank: a view, no copy
    out = cv2.addWeighted(x, 1.0, bank[o : o + _PIXELS].reshape(SIZE, SIZE, 3), sigma, 0.0, dtype=cv2.CV_8U)
    if lab["gray"] == "1":
        gray = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
        out = cv2.merge([gray, gray, gray])
    else:
        out = cv2.cvtColor(out, cv2.COLOR_RGB2BGR)
    return out, lab, S["quality"][b]


def render(seed: int, i: int, ident: int, noise_bank: np.ndarray | None = None) -> tuple[np.ndarray, dict, int]:
    """One image: (BGR uint8 112x112x3, labels, JPEG quality); identical to its copy in any block."""
    bank = _noise_bank(seed) if noise_bank is None else noise_bank
    return _render_batch(seed, [i], [ident], bank)[0]


def _noise_bank(seed: int) -> np.ndarray:
    """Flat Gaussian noise that images take windows of: fresh normals per pixel cost more than drawing."""
    return np.random.default_rng([seed, 2]).standard_normal(_NOISE_BANK * _PIXELS, dtype=np.float32)


# --------------------------------------------------------------------------- files


def _widths(n: int) -> tuple[int, int]:
    """Zero-padded widths: lexicographic order equals index order for every n."""
    return max(3, len(str((n - 1) // PER_FOLDER))), max(6, len(str(n - 1)))


def _rel(i: int, widths: tuple[int, int]) -> str:
    return f"{i // PER_FOLDER:0{widths[0]}d}/{i:0{widths[1]}d}.jpg"


def _render_block(task: tuple[int, int, int, int, str]) -> tuple[int, str, str]:
    """Render, encode and write one block of images; returns its list and csv lines."""
    seed, n, start, stop, root = task
    widths = _widths(n)
    bank = _noise_bank(seed)
    ids = identity_of(seed, n, np.arange(start, stop)).tolist()
    made: set[str] = set()
    paths, rows = [], []
    images = _render_batch(seed, list(range(start, stop)), ids, bank)
    for i, ident, (img, lab, q) in zip(range(start, stop), ids, images):
        rel = _rel(i, widths)
        folder = rel.split("/", 1)[0]
        if folder not in made:
            os.makedirs(os.path.join(root, folder), exist_ok=True)
            made.add(folder)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
        if not ok:
            raise RuntimeError(f"synth: JPEG encoding failed for image {i}")
        with open(os.path.join(root, rel), "wb") as f:
            f.write(buf.tobytes())
        paths.append(rel + "\n")
        rows.append(f"{rel},{ident},{','.join(lab[k] for k in COLUMNS[2:])}\n")
    return stop - start, "".join(paths), "".join(rows)


def _init_worker() -> None:
    cv2.setNumThreads(1)  # processes give the parallelism; threads would only contend


def _pool_context() -> mp.context.BaseContext:
    """Workers must not inherit a live cv2 thread pool: in a plain fork() child, cv2 deadlocks
    (pthread_cond_destroy) once the parent has run cv2 with threads, e.g. after a workers=1 run.
    A fork server is a clean process that has imported cv2 but never run it; forking from it is
    safe and nearly as cheap as fork()."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["introspect.synth"])  # import numpy + cv2 once, in the server
    return ctx


def _tasks(seed: int, n: int, root: str) -> Iterator[tuple[int, int, int, int, str]]:
    for start in range(0, n, BLOCK):
        yield seed, n, start, min(start + BLOCK, n), root


def _in_order(pool: ProcessPoolExecutor, tasks: Iterator, ahead: int) -> Iterator:
    """Results in task order with at most `ahead` blocks in flight, so memory stays flat for any n."""
    pending: deque = deque()
    for task in tasks:
        pending.append(pool.submit(_render_block, task))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def synthesize(
    n: int, seed: int, root: Path, list_path: Path, *, workers: int | None = None, progress: bool = True
) -> dict:
    """Write n synthetic face crops under root, their list and ground truth; streams, so 10 M fit.

    Images go to root/<i // 1000>/<i>.jpg (zero-padded), the list (paths relative to root, in
    index order) to list_path and the labels to attrs_path(list_path).  Both files appear only
    when complete.  workers > 1 uses processes from a fork server, so a calling script needs the
    usual ``if __name__ == "__main__":`` guard, as with any non-fork multiprocessing."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise SynthError(f"synth: n must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SynthError(f"synth: seed must be a non-negative integer, got {seed!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1):
        raise SynthError(f"synth: workers must be a positive integer, got {workers!r}")
    n, seed = int(n), int(seed)
    workers = min(int(workers or os.cpu_count() or 1), -(-n // BLOCK))
    root, list_path = Path(root), Path(list_path)
    csv_path = attrs_path(list_path)
    root.mkdir(parents=True, exist_ok=True)
    list_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_list = list_path.with_name(list_path.name + ".part")
    tmp_csv = csv_path.with_name(csv_path.name + ".part")
    tasks = _tasks(seed, n, str(root))

    t0 = time.perf_counter()
    try:
        with ExitStack() as stack:  # on error: stop the workers, close the files, drop the .part files
            if workers > 1:
                pool = stack.enter_context(ProcessPoolExecutor(workers, _pool_context(), _init_worker))
                results = _in_order(pool, tasks, ahead=2 * workers + 2)
            else:
                results = map(_render_block, tasks)
            fl = stack.enter_context(open(tmp_list, "w"))
            fc = stack.enter_context(open(tmp_csv, "w"))
            bar = stack.enter_context(tqdm(total=n, disable=not progress, unit="img", desc="synth", smoothing=0.1))
            fc.write(",".join(COLUMNS) + "\n")
            for count, paths, rows in results:
                fl.write(paths)
                fc.write(rows)
                bar.update(count)
        os.replace(tmp_list, list_path)
        os.replace(tmp_csv, csv_path)
    except BrokenProcessPool as e:
        raise RuntimeError(
            "synth: a worker process died (out of memory? or a calling script without `if __name__ == '__main__':`)"
        ) from e
    finally:
        for part in (tmp_list, tmp_csv):
            part.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    return {
        "n": n,
        "identities": max(1, n // 4),
        "seconds": seconds,
        "images_per_s": n / seconds if seconds > 0 else float("inf"),
        "root": str(root),
        "list": str(list_path),
        "attrs": str(csv_path),
        "workers": workers,
    }
