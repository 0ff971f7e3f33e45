"""The head itself: clothes, neck and cranium, ears, the face's skin and shading, cheeks.

Each part is a dataclass of a block's geometry (built once with numpy) with a `paint` that
issues one image's cv2 calls; see scene.py for the order they are painted in."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .draw import (
    AA,
    SHIFT,
    Canvas,
    Ellipses,
    Part,
    Points,
    apply_affine,
    color_list,
    column,
    frozen,
    join,
    random_colors,
    round_fixed,
    upper_arc,
    xy,
)
from .draws import ImageUniforms
from .geometry import Frame
from .identity import Traits
from .spec import CANVAS

# Forehead samples from one temple to the other.
_FOREHEAD = frozen(np.linspace(-math.pi / 2, math.pi / 2, 11))
_FOREHEAD_SIN, _FOREHEAD_COS = frozen(np.sin(_FOREHEAD)), frozen(np.cos(_FOREHEAD))
_SIDES = (-1.0, 1.0)  # left, right


def _neck(f: Frame) -> np.ndarray:
    """Neck quadrilateral (B, 4, 2), from the jaw angle down out of the canvas; it turns less than the face."""
    nx = f.cx - 6 * f.head.s[:, 0]
    return join(
        xy(nx - 0.62 * f.R, f.gon),
        xy(nx + 0.62 * f.R, f.gon),
        xy(nx + 0.66 * f.R, CANVAS + 2.0),
        xy(nx - 0.66 * f.R, CANVAS + 2.0),
    )


@dataclass(frozen=True)
class Body(Part):
    """Clothes (with an optional collar), the neck and the cranium behind the face."""

    cloth: Ellipses
    collar: Ellipses
    neck: Points
    head: Points
    cloth_col: list
    collar_col: list
    has_collar: list
    neck_col: list
    skin: list

    @classmethod
    def build(cls, f: Frame, t: Traits, v: ImageUniforms) -> Body:
        G, cx, R = f.head, f.cx, f.R
        cloth = random_colors(np.stack([v.cl0, v.cl1, v.cl2, v.cl3], -1), 0.6, 15, 235)
        nx = cx - 6 * G.s[:, 0]
        side_w = np.minimum(G.sil, R * 0.98)
        hy0 = f.ey + t.gonion * 0.8
        head = join(
            upper_arc(cx, f.yt, t.top_w, t.top_h),
            xy(cx + side_w, hy0),  # tapers into the neck
            xy(cx + side_w * 0.8, f.gon + 6),
            xy(nx + 0.64 * R, f.gon + 16),
            xy(nx - 0.64 * R, f.gon + 16),
            xy(cx - side_w * 0.8, f.gon + 6),
            xy(cx - side_w, hy0),
        )
        return cls(
            cloth=Ellipses(xy(cx - 10 * G.s[:, 0], CANVAS + 36.0), xy(R * 2.3, 50.0)),
            collar=Ellipses(xy(cx - 4 * G.s[:, 0], CANVAS - 12.0), xy(R * 0.75, 9.0)),
            neck=Points(_neck(f)),
            head=Points(head),
            cloth_col=color_list(cloth),
            collar_col=color_list(cloth * 0.75),
            has_collar=(v.collar < 0.5).tolist(),
            neck_col=color_list(f.skin * 0.82),
            skin=color_list(f.skin),
        )

    def paint(self, cv: Canvas, b: int) -> None:
        cv.img.ellipse(self.cloth, b, cv.rot, self.cloth_col[b])
        if self.has_collar[b]:
            cv.img.ellipse(self.collar, b, cv.rot, self.collar_col[b], 1, 0, 180)
        cv.img.fill(self.neck.px[b], self.neck_col[b])
        cv.hair_mask.fill(self.neck.px[b], 0)
        cv.img.fill(self.head.px[b], self.skin[b])
        cv.hair_mask.fill(self.head.px[b], 0)


@dataclass(frozen=True)
class Ears(Part):
    """Ears on the sides of the head; one hides behind it when the head turns away."""

    outer: tuple[Ellipses, ...]
    inner: tuple[Ellipses, ...]
    shadow: tuple[Ellipses, ...]
    visible: tuple[list, ...]
    col: list
    inner_col: list
    rim_col: list

    @classmethod
    def build(cls, f: Frame, t: Traits) -> Ears:
        G, R, ear_y = f.head, f.R, f.ear_y
        ear_skin = f.skin * (0.97, 0.9, 0.9)
        outer, inner, shadow, visible = [], [], [], []
        for k, sd in enumerate(_SIDES):
            depth = G.facing(column(sd * R), column(-0.15 * R))[:, 0]
            w = t.ear_w * np.clip(0.55 + 1.5 * (depth / R + 0.15), 0.3, 1.7)
            ecx = f.ear_x[k] + sd * w * 0.55
            visible.append((depth >= -0.45 * R).tolist())
            outer.append(Ellipses(xy(ecx, ear_y), xy(w, t.ear_h)))
            inner.append(Ellipses(xy(ecx - sd * w * 0.15, ear_y + 1), xy(w * 0.5, t.ear_h * 0.55)))
            shadow.append(Ellipses(xy(ecx, ear_y), xy(w + 1, t.ear_h + 1)))
        return cls(
            outer=tuple(outer),
            inner=tuple(inner),
            shadow=tuple(shadow),
            visible=tuple(visible),
            col=color_list(ear_skin),
            inner_col=color_list(ear_skin * 0.75),
            rim_col=color_list(ear_skin * 0.8),
        )

    def paint(self, cv: Canvas, b: int) -> None:
        for k, sd in enumerate(_SIDES):
            if not self.visible[k][b]:
                continue
            angle = cv.rot + sd * 8
            cv.img.ellipse(self.outer[k], b, angle, self.col[b])
            cv.img.ellipse(self.inner[k], b, angle, self.inner_col[b])
            cv.img.ellipse(self.outer[k], b, angle, self.rim_col[b], 1, -90 - sd * 90 - 60, -90 - sd * 90 + 160)
            cv.fine.ellipse(self.shadow[k], b, angle, 110)


@dataclass(frozen=True)
class Face(Part):
    """The face's outline on the turned surface (forehead arc, sides, jaw) and its coarse shading."""

    outline: Points
    domes: tuple[Points, ...]  # nested, ever brighter: a rounded, lit face
    jawline: Points
    neck_shadow: Points
    skin: list

    @classmethod
    def build(cls, f: Frame, t: Traits) -> Face:
        G, R, yt, ey = f.head, f.R, f.yt, f.ey
        nf, nj = len(_FOREHEAD_SIN), f.jaw_dx.shape[1]
        fdx = np.concatenate(
            [
                column(t.top_w * 0.99) * _FOREHEAD_SIN,
                column(R),
                column(R * 0.995),
                f.jaw_dx,
                column(-R * 0.995),
                column(-R),
            ],
            1,
        )
        side_y = column(ey + t.gonion * 0.6)
        fy = np.concatenate(
            [column(yt) - column(t.top_h) * _FOREHEAD_COS, column(yt), side_y, f.jaw_y, side_y, column(yt)], 1
        )
        face = G.points(fdx, fy, np.where(fy > column(f.gon), column(0.05 * R), 0.0))
        fc = xy(G.x(f.zero())[:, 0], ey + 12.0)[:, None]
        lshift = xy(f.light * 12.0, -4.0)[:, None]
        return cls(
            outline=Points(face),
            domes=tuple(Points(fc + (face - fc) * k + lshift * (1 - k)) for k in (0.84, 0.66, 0.46)),
            jawline=Points(face[:, nf + 2 : nf + 2 + nj] + (0.0, 3.0)),
            neck_shadow=Points(_neck(f)[:, :2] + (0.0, 6.0)),
            skin=color_list(f.skin),
        )

    def paint(self, cv: Canvas, b: int) -> None:
        face = self.outline.px[b]
        cv.img.fill(face, self.skin[b])
        cv.hair_mask.fill(face, 0)
        cv.shade.fill(face, 102)
        for level, dome in zip((120, 132, 140), self.domes):
            cv.shade.fill(dome.px[b], level)
        cv.shade.stroke(self.jawline.px[b], 68)
        cv.shade.stroke(self.neck_shadow.px[b], 96, 2)


@dataclass(frozen=True)
class Cheeks(Part):
    """Blush, a mole, freckles: identity marks that ride on the turned surface."""

    blush: tuple[Ellipses, ...]
    mole: Ellipses
    has_blush: list
    has_mole: list
    blush_col: list
    mole_col: list
    freckle_col: list
    freckles: list  # per image: canvas points (m, 2), or None
    freckle_px: list  # the same in the crop, fixed point: set by align

    @classmethod
    def build(cls, f: Frame, t: Traits) -> Cheeks:
        G, R, ey, skin = f.head, f.R, f.ey, f.skin
        blush = []
        for sd in _SIDES:
            bdx = column(sd * R * 0.55)
            blush.append(Ellipses(xy(G.x(bdx)[:, 0], ey + 19), xy(8 * G.foreshortening(bdx)[:, 0], 6.0)))
        mdx = column(t.mole_x)
        mole_axes = xy(t.mole_r * G.foreshortening(mdx)[:, 0], t.mole_r)
        return cls(
            blush=tuple(blush),
            mole=Ellipses(xy(G.x(mdx)[:, 0], ey + t.mole_y), mole_axes),
            has_blush=(t.blush > 0.3).tolist(),
            has_mole=(t.mole & (G.facing(mdx)[:, 0] > 0)).tolist(),
            blush_col=color_list(skin + ((220.0, 80.0, 90.0) - skin) * column(0.04 + 0.1 * (t.blush - 0.3))),
            mole_col=color_list(skin * (0.45, 0.35, 0.3)),
            freckle_col=color_list(skin + (skin * (0.75, 0.6, 0.5) - skin) * 0.35),
            freckles=[_freckles(f, t, b, fr) for b, fr in enumerate(t.freckles)],
            freckle_px=[None] * f.n,
        )

    def align(self, A: np.ndarray, scale: np.ndarray) -> None:
        super().align(A, scale)
        for b, fr in enumerate(self.freckles):  # rare (~7 % of identities), so per image
            if fr is not None:
                self.freckle_px[b] = round_fixed(apply_affine(A[b : b + 1], fr[None]))[0]

    def paint(self, cv: Canvas, b: int) -> None:
        if self.has_blush[b]:
            for e in self.blush:
                cv.img.ellipse(e, b, cv.rot, self.blush_col[b])
        if self.freckle_px[b] is not None:
            col = self.freckle_col[b]
            for p in self.freckle_px[b].tolist():
                cv2.circle(cv.img.pixels, p, 11, col, -1, AA, SHIFT)
        if self.has_mole[b]:
            cv.img.ellipse(self.mole, b, cv.rot, self.mole_col[b])


def _freckles(f: Frame, t: Traits, b: int, fr: np.ndarray | None) -> np.ndarray | None:
    """Image b's freckles (offsets dx / R, dy below the eyes) as canvas points on its turned head."""
    if fr is None:
        return None
    G, R = f.head, f.R
    z = t.depth[b] * R[b] * np.sqrt(np.maximum(1.0 - fr[:, 0] ** 2, 0.0))
    x = np.clip(f.cx[b] + fr[:, 0] * R[b] * G.c[b, 0] + z * G.s[b, 0], G.lo[b, 0], G.hi[b, 0])
    return xy(x, f.ey[b] + fr[:, 1])
