"""The planted glasses: clear or sun lenses in five shapes, frames, bridge, temples, glare."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from .draw import (
    AA,
    ONE,
    SHIFT,
    Canvas,
    Ellipses,
    Part,
    Points,
    blend,
    color_list,
    column,
    fixed_point,
    frozen,
    random_colors,
    round_fixed,
    weighted_choice,
    xy,
)
from .draws import ImageUniforms
from .geometry import Frame
from .identity import Traits

_SIDES = (-1.0, 1.0)  # left, right
_FRAMES = frozen(
    np.array(
        [(18, 18, 20), (64, 40, 26), (196, 164, 96), (190, 192, 198), (150, 30, 36), (30, 44, 96), (120, 110, 104)],
        np.float64,
    )
)
_FRAMES_W = (0.4, 0.15, 0.12, 0.12, 0.07, 0.07, 0.07)
_LENS_SHAPES = ("round", "oval", "rect", "aviator", "cat")
_LENS_W = (0.18, 0.22, 0.34, 0.14, 0.12)
_LENS = frozen(np.linspace(0, 2 * math.pi, 21)[:-1])
_LENS_COS, _LENS_SIN = frozen(np.cos(_LENS)), frozen(np.sin(_LENS))
_GLARE = (250, 250, 250)
_RIMLESS_EDGE = (200, 200, 205)

DrawFn = Callable[[np.ndarray, np.ndarray], None]


def _lens_tables() -> tuple[np.ndarray, np.ndarray]:
    """Unit lens outlines per side and shape (cat-eye is mirrored), shape (2, 5, 20)."""
    ca, sa = _LENS_COS, _LENS_SIN
    xs = [ca, ca, np.sign(ca) * np.abs(ca) ** (1 / 3), ca, np.sign(ca) * np.abs(ca) ** 0.8]
    ys = [
        sa,
        sa,
        np.sign(sa) * np.abs(sa) ** (1 / 3) * 0.95,
        np.where(sa > 0, sa * 1.2, sa * 0.85),
        sa - 0.35 * np.maximum(ca, 0) * (sa < 0),
    ]
    lx = np.array([[x * (sd if k == 4 else 1.0) for k, x in enumerate(xs)] for sd in _SIDES])
    ly = np.array([ys, ys])
    return frozen(lx), frozen(ly)


_LENS_X, _LENS_Y = _lens_tables()


@dataclass(frozen=True)
class Glasses(Part):
    """Glasses for every image of the block; `worn` says which images show them."""

    lenses: tuple[Points, ...]
    glares: tuple[Ellipses, ...]
    temples: tuple[Points, ...]
    temple_shown: tuple[list, ...]  # the far temple hides behind a turned head
    bridge: Points
    worn: list
    rimless: list
    frame_col: list
    frame_t: list
    tint: list
    tint_alpha: list
    glare_alpha: list

    @classmethod
    def build(cls, f: Frame, t: Traits, v: ImageUniforms, worn: np.ndarray, sun: np.ndarray) -> Glasses:
        G, cx, R = f.head, f.cx, f.R
        shape = weighted_choice(v.gl_shape, _LENS_W)
        hw = t.ew * (1.45 + 0.4 * v.gl_w) * np.where(sun, 1.1, 1.0)
        hh = np.where(
            shape == _LENS_SHAPES.index("round"), hw * 0.95, t.ew * (1.0 + 0.35 * v.gl_h) * np.where(sun, 1.1, 1.0)
        )
        gz = G.z(column(t.es))[:, 0] + 4.0  # lenses float in front of the eyes
        gly = f.ey + 1.0
        tints = np.stack([v.gl_t0, v.gl_t1, v.gl_t2, v.gl_t3], -1)
        lenses, glares, temples, shown = [], [], [], []
        for k, sd in enumerate(_SIDES):
            lx = column(cx) + (sd * column(t.es) + column(hw) * _LENS_X[k][shape]) * G.c + column(gz) * G.s
            ln = xy(lx, column(gly) + column(hh) * _LENS_Y[k][shape])
            lenses.append(ln)
            lo, hi, c = ln.min(1), ln.max(1), ln.mean(1)
            rw = (hi[:, 0] - lo[:, 0]) * 0.22
            glares.append(Ellipses(xy(c[:, 0] + rw * 0.6, c[:, 1] - hh * 0.35), xy(rw, hh * 0.16)))
            shown.append((sd * f.yaw <= 0.25).tolist())
            out_i = np.argmax(sd * ln[..., 0], 1)
            outer = np.take_along_axis(ln, out_i[:, None, None], 1)[:, 0] + column(hh * 0.3) * (0.0, -1.0)
            ear_pt = xy(cx + sd * R * G.c[:, 0] - 0.1 * R * G.s[:, 0], f.ear_y - t.ear_h * 0.5)
            temples.append(Points(np.stack([outer, ear_pt], 1)))
        il = np.take_along_axis(lenses[0], np.argmax(lenses[0][..., 0], 1)[:, None, None], 1)[:, 0]
        ir = np.take_along_axis(lenses[1], np.argmin(lenses[1][..., 0], 1)[:, None, None], 1)[:, 0]
        up3 = column(hh * 0.3) * (0.0, -1.0)
        bridge = np.stack([il + up3, xy(cx + gz * 1.1 * G.s[:, 0], gly - hh * 0.45), ir + up3], 1)
        return cls(
            lenses=(Points(lenses[0]), Points(lenses[1])),
            glares=tuple(glares),
            temples=tuple(temples),
            temple_shown=tuple(shown),
            bridge=Points(bridge),
            worn=worn.tolist(),
            rimless=(~sun & (v.gl_rimless < 0.15)).tolist(),
            frame_col=color_list(_FRAMES[weighted_choice(v.gl_frame, _FRAMES_W)]),
            frame_t=np.where((v.gl_thin < 0.6) & ~sun, 1, 2).tolist(),
            tint=color_list(
                np.where(column(sun), random_colors(tints, 0.5, 20, 90), random_colors(tints, 0.3, 150, 240))
            ),
            tint_alpha=np.where(sun, 0.86 + 0.12 * v.gl_alpha, 0.06 + 0.14 * v.gl_alpha).tolist(),
            glare_alpha=(0.18 + np.where(sun, 0.25, 0.15) * v.gl_glare).tolist(),
        )

    def paint(self, cv: Canvas, b: int) -> None:
        if not self.worn[b]:
            return
        img, frame, ft = cv.img.pixels, self.frame_col[b], self.frame_t[b]
        for lens, glare in zip(self.lenses, self.glares):
            ln = lens.px[b]
            box = (np.concatenate([ln.min(0), ln.max(0)]) / ONE).tolist()
            blend(img, box, self.tint_alpha[b], _fixed_filler(ln, self.tint[b]))
            blend(img, box, self.glare_alpha[b], _glare_painter(glare.centers[b], glare.axes[b], cv.rot - 30))
            if self.rimless[b]:
                blend(img, box, 0.35, _fixed_outliner(ln, _RIMLESS_EDGE))
            else:
                cv.img.stroke(ln, frame, ft, True)
        cv.img.stroke(self.bridge.px[b], frame, ft)
        for temple, shown in zip(self.temples, self.temple_shown):
            if shown[b]:
                cv.img.stroke(temple.px[b], frame, ft)


# `blend` painters: they draw crop-coordinate shapes into a copy of a small region at `off`.


def _fixed_filler(pts: np.ndarray, color: tuple) -> DrawFn:
    def draw(overlay: np.ndarray, off: np.ndarray) -> None:
        cv2.fillPoly(overlay, [pts - round_fixed(off)], color, AA, SHIFT)

    return draw


def _fixed_outliner(pts: np.ndarray, color: tuple) -> DrawFn:
    def draw(overlay: np.ndarray, off: np.ndarray) -> None:
        cv2.polylines(overlay, [pts - round_fixed(off)], True, color, 1, AA, SHIFT)

    return draw


def _glare_painter(center: list, axes: list, angle: float) -> DrawFn:
    def draw(overlay: np.ndarray, off: np.ndarray) -> None:
        c = fixed_point(center[0] / ONE, center[1] / ONE, off)
        cv2.ellipse(overlay, c, axes, angle, 0, 360, _GLARE, -1, AA, SHIFT)

    return draw
