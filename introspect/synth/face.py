"""Facial features: eyes, brows, nose and mouth, laid out on the turned head.

The eyes, the nose tip and the mouth corners are also the five landmarks the alignment fits,
so each of these parts reports them (`centers`, `tip`, `corners`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .draw import Canvas, Ellipses, Part, Points, color_list, column, frozen, xy
from .draws import ImageUniforms
from .geometry import Frame
from .identity import Traits

_SIDES = (-1.0, 1.0)  # left, right

# Eye outline samples: -1 at the inner corner, +1 at the outer one; lid heights along them.
_EYE_T = frozen(np.linspace(-1.0, 1.0, 11))
_EYE_UPPER = frozen((1 - _EYE_T**2) ** 0.7 * (1 - 0.18 * _EYE_T))
_EYE_LOWER = frozen((1 - _EYE_T**2) ** 0.8 * (1 + 0.15 * _EYE_T))
_IRIS = frozen(np.linspace(0, 2 * math.pi, 17)[:-1])
_IRIS_COS, _IRIS_SIN = frozen(np.cos(_IRIS)), frozen(np.sin(_IRIS))
# Brow samples from the inner end outwards, and the arch along them.
_BROW_T = frozen(np.linspace(0.0, 1.0, 7))
_BROW_ARCH = frozen(np.sin(np.pi * _BROW_T**0.85))
# Nose samples from the bridge to the tip, and how far out of the face each sticks.
_NOSE_T = frozen(np.linspace(0.0, 1.0, 6))
_NOSE_PROFILE = frozen(np.linspace(0.15, 1.0, 6) ** 1.3)
# Mouth samples across the lips, and how far out of the face each sticks.
_MOUTH_X = frozen(np.array([-1.0, -0.6, -0.28, 0.0, 0.28, 0.6, 1.0]))
_MOUTH_DZ = frozen(np.array([0.2, 0.7, 0.95, 1.0, 0.95, 0.7, 0.2]))


# --------------------------------------------------------------------------- eyes


@dataclass(frozen=True)
class Eye(Part):
    """One eye's shapes for a block: lids, white, iris and pupil clipped to the lids, shading."""

    white: Points
    iris: Points
    pupil: Points
    glint: Ellipses
    socket: Ellipses
    undereye: Ellipses
    crease: Points
    lid_shadow: Points
    low_lid: Points
    blink_line: Points
    upper: Points
    flick: Points  # the outer corner's lash flick
    center: np.ndarray  # landmark (B, 2), canvas pixels

    @classmethod
    def build(cls, f: Frame, t: Traits, v: ImageUniforms, k: int) -> Eye:
        G, sd = f.head, _SIDES[k]
        openf = t.eye_open * (0.85 + 0.3 * v.eye_open)
        gx, gy = (v.gaze_x - 0.5) * 2.0 - f.yaw * 1.5, (v.gaze_y - 0.5) * 1.0
        edx = sd * t.es + ((v.ejx0, v.ejx1)[k] - 0.5) * 0.8
        ecy = f.ey + ((v.ejy0, v.ejy1)[k] - 0.5) * 0.8
        ex = G.x(column(edx), -1.0)[:, 0]
        fs = G.foreshortening(column(edx))[:, 0]
        w = t.ew * fs
        up, lo = t.ew * openf * 0.62, t.ew * openf * 0.42
        tilt = column(t.eye_tilt * t.ew) * _EYE_T
        xs = column(ex) + column(sd * w) * _EYE_T
        uy = column(ecy) - tilt - column(up) * _EYE_UPPER
        ly = column(ecy) - tilt + column(lo) * _EYE_LOWER
        upper, lower = xy(xs, uy), xy(xs, ly)
        ir = t.iris_r * t.ew
        icx, icy = ex + gx * fs, ecy + gy - 0.2
        iw = ir * (0.55 + 0.45 * fs)
        disc = _LidClip(sd, ex, w, uy, ly, icx, icy)
        return cls(
            white=Points(np.concatenate([upper, lower[:, -2:0:-1]], 1)),
            iris=Points(disc.points(iw, ir)),
            pupil=Points(disc.points(iw * 0.42, ir * 0.42)),
            glint=Ellipses(xy(icx - 0.7 - f.light * 0.6, icy - 0.9), xy(0.8 + 0 * icx, 0.8)),
            socket=Ellipses(xy(ex, ecy - up * 0.8), xy(w * 1.25 + 1.5, up * 2.0 + 1.5)),
            undereye=Ellipses(xy(ex + sd * 0.5, ecy + lo + 2.0), xy(w * 0.9, 2.0 + 0 * w)),
            crease=Points(upper[:, 1:-1] - column(up * 0.9 + 1.4)[..., None] * (0.0, 1.0)),
            lid_shadow=Points(upper[:, 2:-2] + (0.0, 1.0)),
            low_lid=Points(lower[:, 1:-1] + (0.0, 0.6)),
            blink_line=Points(lower[:, 1:-1] - column(lo * 0.5)[..., None] * (0.0, 1.0)),
            upper=Points(upper),
            flick=Points(np.stack([upper[:, -1], upper[:, -1] + (sd * 1.3, -0.9)], 1)),
            center=np.stack([ex, ecy], -1),
        )


@dataclass(frozen=True)
class _LidClip:
    """Discs (iris, pupil) clipped to the lids analytically: the lid curves are uniform in t."""

    sd: float
    ex: np.ndarray
    w: np.ndarray
    uy: np.ndarray
    ly: np.ndarray
    icx: np.ndarray
    icy: np.ndarray

    def points(self, rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
        """A disc of radii (rx, ry) at the gaze point, squeezed between the lids: (B, 16, 2)."""
        ex, w = column(self.ex), column(self.w)
        px = np.clip(column(self.icx) + column(rx) * _IRIS_COS, column(self.ex - self.w), column(self.ex + self.w))
        pos = np.clip((self.sd * (px - ex) / w + 1.0) * 5.0, 0.0, 10.0)
        i0 = np.minimum(pos.astype(int), 9)
        fr = pos - i0
        top = np.take_along_axis(self.uy, i0, 1) * (1 - fr) + np.take_along_axis(self.uy, i0 + 1, 1) * fr
        bot = np.take_along_axis(self.ly, i0, 1) * (1 - fr) + np.take_along_axis(self.ly, i0 + 1, 1) * fr
        py = np.minimum(np.maximum(column(self.icy) + column(ry) * _IRIS_SIN, top), bot)
        return xy(px, py)


@dataclass(frozen=True)
class Eyes(Part):
    """Both eyes, their colours, and blinks (2.5 % of images)."""

    sides: tuple[Eye, ...]
    blink: list
    white_col: list
    lid_col: list
    lid_t: list  # upper lid line thickness: heavy lashes draw it thicker
    iris_col: list
    iris_ring: list
    blink_col: list

    @classmethod
    def build(cls, f: Frame, t: Traits, v: ImageUniforms) -> Eyes:
        skin = f.skin
        return cls(
            sides=(Eye.build(f, t, v, 0), Eye.build(f, t, v, 1)),
            blink=(v.blink < 0.025).tolist(),
            white_col=color_list(skin + ((238.0, 234.0, 228.0) - skin) * 0.9),
            lid_col=color_list(np.where(column(t.lash > 0.3), f.hair * 0.3, skin * 0.35)),
            lid_t=np.where(t.lash > 0.8, 2, 1).tolist(),
            iris_col=color_list(t.iris),
            iris_ring=color_list(t.iris * 0.55),
            blink_col=color_list(skin * 0.45),
        )

    def paint(self, cv: Canvas, b: int) -> None:
        for eye in self.sides:
            cv.fine.ellipse(eye.socket, b, cv.rot, 102)
            cv.fine.ellipse(eye.undereye, b, cv.rot, 116)
            cv.fine.stroke(eye.crease.px[b], 100)
            if self.blink[b]:
                cv.img.stroke(eye.blink_line.px[b], self.blink_col[b])
                continue
            cv.img.fill(eye.white.px[b], self.white_col[b])
            iris = eye.iris.px[b]
            cv.img.fill(iris, self.iris_col[b])
            cv.img.stroke(iris, self.iris_ring[b], 1, True)
            cv.img.fill(eye.pupil.px[b], (12, 10, 10))
            cv.img.ellipse(eye.glint, b, cv.rot, (250, 250, 250))
            cv.fine.stroke(eye.lid_shadow.px[b], 96)
            cv.fine.stroke(eye.low_lid.px[b], 104)
            cv.img.stroke(eye.upper.px[b], self.lid_col[b], self.lid_t[b])
            cv.img.stroke(eye.flick.px[b], self.lid_col[b])


# --------------------------------------------------------------------------- brows


@dataclass(frozen=True)
class Brows(Part):
    """Brows: tapered, arched strokes; they also get hair texture."""

    sides: tuple[Points, ...]
    col: list

    @classmethod
    def build(cls, f: Frame, t: Traits, v: ImageUniforms) -> Brows:
        th = column(t.brow_t) * (1.15 - 0.65 * _BROW_T)
        sides = []
        for sd in _SIDES:
            dx = sd * (column(t.es - t.ew * 0.95) + _BROW_T * column(t.ew * (0.95 + t.brow_len)))
            by = (
                column(f.ey - t.brow_gap - (v.brow_raise - 0.5) * 2.0)
                - column(t.brow_arch) * _BROW_ARCH
                + _BROW_T * 1.2
            )
            outline_x = np.concatenate([dx, dx[:, ::-1]], 1)
            outline_y = np.concatenate([by - th * 0.6, (by + th * 0.4)[:, ::-1]], 1)
            sides.append(Points(f.head.points(outline_x, outline_y, 1.5)))
        return cls(sides=tuple(sides), col=color_list(f.skin + (t.brow - f.skin) * 0.8))

    def paint(self, cv: Canvas, b: int) -> None:
        for brow in self.sides:
            cv.img.fill(brow.px[b], self.col[b])
            cv.hair_mask.fill(brow.px[b], 200)


# --------------------------------------------------------------------------- nose


@dataclass(frozen=True)
class Nose(Part):
    """Nose: flanks, ridge, nostrils, tip highlight and the shadow underneath, mostly as shading."""

    flanks: tuple[Points, ...]
    flank_level: tuple[list, ...]  # shading level: the side away from the light is darker
    nostrils: tuple[Ellipses, ...]
    nostril_shown: tuple[list, ...]
    wings: tuple[Ellipses, ...]
    ridge: Points
    ridge_edge: Points
    ridge_hi: Points
    turned: list
    tip_hi: Ellipses
    under: Ellipses
    ridge_col: list
    nostril_col: list
    tip: np.ndarray  # landmark (B, 2), canvas pixels

    @classmethod
    def build(cls, f: Frame, t: Traits) -> Nose:
        G, nw, ndz, nose_y, yaw = f.head, t.nose_w, f.ndz, f.nose_y, f.yaw
        ny = column(f.ey - 3) + column(nose_y - f.ey + 2) * _NOSE_T
        prof = _NOSE_PROFILE * column(ndz)
        shadow_side = np.where(f.light > 0, -1.0, 1.0)
        flanks, levels, nostrils, shown, wings = [], [], [], [], []
        for sd in _SIDES:
            flanks.append(Points(G.points(sd * (2.0 + column(nw * 0.6) * _NOSE_T), ny, prof * 0.55)))
            levels.append((np.where(shadow_side == sd, 98, 116) - np.where(sd * yaw < -0.2, 16, 0)).tolist())
            ndx = column(sd * nw * 0.42)
            fs = G.foreshortening(ndx)[:, 0]
            shown.append((G.facing(ndx, column(ndz * 0.5))[:, 0] >= 0).tolist())
            nostril_c = xy(G.x(ndx, column(ndz * 0.45))[:, 0], nose_y + 1.8)
            nostrils.append(Ellipses(nostril_c, xy(np.maximum(0.6, nw * 0.2 * fs), 1.05)))
            wing_c = xy(G.x(column(sd * nw * 0.85), column(ndz * 0.25))[:, 0], nose_y - 0.5)
            wings.append(Ellipses(wing_c, xy(2.8 * fs + 0.5, 3.2)))
        ridge = G.points(np.zeros((f.n, 6)), ny, prof)
        zero = f.zero()
        return cls(
            flanks=tuple(flanks),
            flank_level=tuple(levels),
            nostrils=tuple(nostrils),
            nostril_shown=tuple(shown),
            wings=tuple(wings),
            ridge=Points(ridge),
            ridge_edge=Points(ridge[:, 2:] + column(np.copysign(0.8, yaw))[..., None] * (1.0, 0.0)),
            ridge_hi=Points(ridge[:, 1:-1]),
            turned=(np.abs(yaw) > 0.2).tolist(),
            tip_hi=Ellipses(xy(G.x(zero, column(ndz))[:, 0], nose_y - 1.5), xy(nw * 0.32, 2.5)),
            under=Ellipses(xy(G.x(zero, column(ndz * 0.4))[:, 0], nose_y + 3.2), xy(nw * 0.75, 2.0)),
            ridge_col=color_list(f.skin * 0.8),
            nostril_col=color_list(f.skin + (f.skin * (0.42, 0.32, 0.3) - f.skin) * 0.85),
            tip=xy(G.x(zero, column(ndz))[:, 0], nose_y - 1.0),
        )

    def paint(self, cv: Canvas, b: int) -> None:
        for flank, level in zip(self.flanks, self.flank_level):
            cv.fine.stroke(flank.px[b], level[b], 2)
        if self.turned[b]:
            cv.fine.stroke(self.ridge.px[b], 94)
            cv.img.stroke(self.ridge_edge.px[b], self.ridge_col[b])
        cv.fine.stroke(self.ridge_hi.px[b], 148)
        cv.fine.ellipse(self.tip_hi, b, cv.rot, 152)
        cv.fine.ellipse(self.under, b, cv.rot, 90)
        for k, sd in enumerate(_SIDES):
            if self.nostril_shown[k][b]:
                cv.img.ellipse(self.nostrils[k], b, cv.rot + sd * 20, self.nostril_col[b])
                cv.fine.ellipse(self.wings[k], b, cv.rot, 94, 1, -90 + sd * 90 - 110, -90 + sd * 90 + 70)


# --------------------------------------------------------------------------- mouth


def _lip_rows(f: Frame, t: Traits, v: ImageUniforms, opening: np.ndarray) -> np.ndarray:
    """Heights (B, 5, 7) across the mouth: upper lip top, its bottom, lower lip top, its bottom, closed line."""
    mouth_y = f.mouth_y
    smile = (v.smile - 0.35) * 2.5
    lu, ll = t.lip_up, t.lip_lo
    line_y = column(mouth_y) + np.array([0.0, 0.2, 0.4, 0.5, 0.4, 0.2, 0.0]) * column(1 - np.minimum(smile, 1.0) * 0.6)
    line_y[:, [0, -1]] -= column(smile)
    rows = np.empty((f.n, 5, 7))
    rows[:, 0] = column(mouth_y) - np.stack([smile, lu * 0.55, lu + 0.3, lu * 0.72, lu + 0.3, lu * 0.55, smile], -1)
    rows[:, 1] = line_y - column(opening * 0.15)  # upper lip, bottom edge
    rows[:, 2] = line_y + column(opening * 0.85)  # lower lip, top edge
    rows[:, 3] = column(mouth_y + opening) + column(ll) * np.array([0.0, 0.75, 0.97, 1.0, 0.97, 0.75, 0.0])
    rows[:, 3, [0, -1]] = line_y[:, [0, -1]]
    rows[:, 4] = line_y + column(opening * 0.35)  # a closed mouth's line
    return rows


@dataclass(frozen=True)
class Mouth(Part):
    """Lips on the turned surface, sometimes open with teeth, and the shading around them."""

    upper_lip: Points
    lower_lip: Points
    inside: Points
    teeth: Points
    line: Points
    shading: tuple[tuple[Ellipses, int], ...]  # (ellipses, fine shading level)
    open: list
    teeth_shown: list
    lip_col: list
    upper_col: list
    line_col: list
    corners: np.ndarray  # landmarks (B, 2, 2), canvas pixels

    @classmethod
    def build(cls, f: Frame, t: Traits, v: ImageUniforms) -> Mouth:
        G, mw, B, zero = f.head, f.mw, f.n, f.zero()
        mm, mo = v.mouth_mode, v.mouth_open
        opening = np.where(mm < 0.18, 0.6 + 2.5 * mo, np.where(mm < 0.23, 3.0 + 3.5 * mo, 0.0))
        ldz = 0.12 * f.R
        rows = _lip_rows(f, t, v, opening)
        mdz = np.tile(_MOUTH_DZ * column(ldz), 5)
        M5 = G.points(np.tile(_MOUTH_X * column(mw), 5), rows.reshape(B, 35), mdz).reshape(B, 5, 7, 2)
        teeth_h = np.minimum(opening * 0.45, 2.6)
        philtrum_y = (f.nose_y + rows[:, 0, 3]) / 2 + 1.5
        shading = (
            (Ellipses(xy(G.x(zero, column(ldz * 0.6))[:, 0], rows[:, 3, 3] + 2.2), xy(mw * 0.45, 1.8)), 94),
            (Ellipses(xy(G.x(zero, column(ldz * 0.8))[:, 0], philtrum_y), xy(1.6 + 0 * mw, 2.5)), 118),
            (Ellipses(M5[:, 4, 0], xy(1.6 + 0 * mw, 1.6)), 102),
            (Ellipses(M5[:, 4, -1], xy(1.6 + 0 * mw, 1.6)), 102),
            (Ellipses(xy(G.x(zero, column(ldz))[:, 0], rows[:, 3, 3] - t.lip_lo * 0.45), xy(mw * 0.3, 0.9)), 150),
        )
        return cls(
            upper_lip=Points(np.concatenate([M5[:, 0], M5[:, 1, ::-1]], 1)),
            lower_lip=Points(np.concatenate([M5[:, 2], M5[:, 3, ::-1]], 1)),
            inside=Points(np.concatenate([M5[:, 1], M5[:, 2, ::-1]], 1)),
            teeth=Points(
                np.concatenate([M5[:, 1, 1:-1], M5[:, 1, -2:0:-1] + column(teeth_h)[..., None] * (0.0, 1.0)], 1)
            ),
            line=Points(np.where(column(opening > 0.5)[..., None], M5[:, 1], M5[:, 4])),
            shading=shading,
            open=(opening > 0.5).tolist(),
            teeth_shown=(opening > 1.2).tolist(),
            lip_col=color_list(t.lip),
            upper_col=color_list(t.lip * 0.9),
            line_col=color_list(t.lip * 0.5),
            corners=M5[:, 4, [0, -1]],
        )

    def paint(self, cv: Canvas, b: int) -> None:
        if self.open[b]:
            cv.img.fill(self.inside.px[b], (58, 22, 26))
            if self.teeth_shown[b]:
                cv.img.fill(self.teeth.px[b], (226, 220, 206))
        cv.img.fill(self.upper_lip.px[b], self.upper_col[b])
        cv.img.fill(self.lower_lip.px[b], self.lip_col[b])
        cv.img.stroke(self.line.px[b], self.line_col[b])
        for e, level in self.shading:
            cv.fine.ellipse(e, b, cv.rot, level)
