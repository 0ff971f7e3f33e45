"""Hair: long hair behind the head, the hairdo on top, and beards.

Hair is painted in three passes (behind the head, on the face, over the head) so each part is
a small class; all of them also mark the hair mask, where the camera pass adds strand texture."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .draw import (
    ONE,
    Canvas,
    Ellipses,
    Part,
    Points,
    bbox,
    blend,
    color_list,
    column,
    float_filler,
    frozen,
    join,
    upper_arc,
    xy,
)
from .draws import ImageUniforms
from .geometry import Frame
from .identity import BALD, BANGS, BUN, BUZZ, GOATEE, LONG, MEDIUM, MUSTACHE, STUBBLE, Traits
from .spec import CANVAS

_SIDES = (-1.0, 1.0)  # left, right
# Hairline samples across the forehead, and the zigzag of bangs.
_HAIRLINE_T = frozen(np.linspace(-1.0, 1.0, 15))
_BANGS_ZIGZAG = frozen(np.where(np.arange(15) % 2 == 0, 0.0, -2.5))
_STYLE_SIDE = frozen(np.array([0.0, -2.0, 1.0, 26.0, 40.0, 4.0, -4.0]))  # per style: sides end this far below the eyes


@dataclass(frozen=True)
class BackHair(Part):
    """Long hair falling behind the head, down out of the frame (painted first, only for long styles)."""

    outline: Points
    col: list
    style: list

    @classmethod
    def build(cls, f: Frame, t: Traits, v: ImageUniforms) -> BackHair:
        wide = f.hx_sil + 4 + 10 * v.back_wide
        outline = join(
            xy(f.cx - wide, CANVAS + 2.0),
            upper_arc(f.cx, f.yt, f.hx_sil, t.top_h + f.vol),
            xy(f.cx + wide, CANVAS + 2.0),
        )
        return cls(outline=Points(outline), col=color_list(f.hair * 0.8), style=f.style.tolist())

    def paint(self, cv: Canvas, b: int) -> None:
        if self.style[b] == LONG:
            cv.img.fill(self.outline.px[b], self.col[b])
            cv.hair_mask.fill(self.outline.px[b], 255)


@dataclass(frozen=True)
class Beard(Part):
    """Stubble, mustache, goatee or full beard; the shape follows the mouth, nose and jaw."""

    full: Points  # also the shape of stubble
    goatee: Points
    mustache: Points
    kind: list  # index into identity.BEARDS, 0 = none
    col: list
    stubble_col: list

    @classmethod
    def build(cls, f: Frame, t: Traits, v: ImageUniforms) -> Beard:
        G, R = f.head, f.R
        outlines = _beard_outlines(f, t)
        on_surface = [
            Points(G.points(p[..., 0], p[..., 1], np.where(np.abs(p[..., 0]) < column(R * 0.5), column(0.1 * R), 0.0)))
            for p in outlines
        ]
        return cls(
            *on_surface,
            kind=t.beard.tolist(),
            col=color_list(f.hair * 0.85),
            stubble_col=color_list(f.skin + (f.hair * 0.6 - f.skin) * column(0.22 + 0.15 * v.stubble)),
        )

    def paint(self, cv: Canvas, b: int) -> None:
        kind = self.kind[b]
        if not kind:
            return
        shape = self.mustache if kind == MUSTACHE else self.goatee if kind == GOATEE else self.full
        pts = shape.px[b]
        cv.img.fill(pts, (self.stubble_col if kind == STUBBLE else self.col)[b])
        cv.hair_mask.fill(pts, 90 if kind == STUBBLE else 255)


def _beard_outlines(f: Frame, t: Traits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full beard, goatee and mustache outlines as (dx across the face, y) points (B, k, 2)."""
    ey, mw, mouth_y, chin, Rb = f.ey, f.mw, f.mouth_y, f.chin, f.R
    up = mouth_y - t.lip_up - 2.5
    n45 = f.nose_y + 4.5
    full = np.stack(
        [
            xy(Rb * 0.97, ey + 4),
            xy(Rb * 0.82, ey + 16),
            xy(Rb * 0.6, ey + 24),
            xy(mw + 3, up - 1),
            xy(mw * 0.4, n45),
            xy(-mw * 0.4, n45),
            xy(-mw - 3, up - 1),
            xy(-Rb * 0.6, ey + 24),
            xy(-Rb * 0.82, ey + 16),
            xy(-Rb * 0.97, ey + 4),
        ],
        1,
    )
    full = np.concatenate([full, xy(f.jaw_dx * 1.03, f.jaw_y + 2.5)[:, ::-1]], 1)
    goatee = np.stack(
        [
            xy(mw + 2, up + 1),
            xy(mw * 0.4, up - 4),
            xy(-mw * 0.4, up - 4),
            xy(-mw - 2, up + 1),
            xy(-mw - 1.5, mouth_y + 4),
            xy(-mw * 0.7, chin + 2),
            xy(0 * mw, chin + 3),
            xy(mw * 0.7, chin + 2),
            xy(mw + 1.5, mouth_y + 4),
        ],
        1,
    )
    st = np.maximum(up - 3.5 - 2.5 * t.volume, n45)  # top edge: 4-6 px above the lip
    mustache = np.stack(
        [
            xy(mw + 1.5, mouth_y + 0.5),
            xy(mw * 0.45, st),
            xy(0 * mw, st + 0.6),
            xy(-mw * 0.45, st),
            xy(-mw - 1.5, mouth_y + 0.5),
            xy(-mw * 0.55, up + 2.8),
            xy(0 * mw, up + 2.3),
            xy(mw * 0.55, up + 2.8),
        ],
        1,
    )
    return full, goatee, mustache


@dataclass(frozen=True)
class TopHair(Part):
    """The hairdo over the head: its outline down to the hairline, side locks, a bun, a sheen."""

    outline: Points
    hairline: Points
    locks: tuple[Points, ...]
    lock_shown: tuple[list, ...]
    sheen: Ellipses
    sheen_angle: list
    bald_sheen: Ellipses
    bun: Ellipses
    style: list
    col: list
    buzz_col: list

    @classmethod
    def build(cls, f: Frame, t: Traits, v: ImageUniforms) -> TopHair:
        G, R, cx, ey, yt, style = f.head, f.R, f.cx, f.ey, f.yt, f.style
        hy = _hairline_y(f, t, v)
        line3 = G.points(_HAIRLINE_T * column(R * 0.97), hy, 0.5)
        side_y = ey + _STYLE_SIDE[style]
        long_ = (style == MEDIUM) | (style == LONG)
        sil_out = f.hx_sil + 2.0 * long_
        inner = np.where(long_, 0.99, 1.0) * R
        outline = join(
            xy(cx - sil_out, side_y),
            upper_arc(cx, yt, f.hx_sil, t.top_h + f.vol),
            xy(cx + sil_out, side_y),
            xy(G.x(column(inner))[:, 0], side_y),
            line3[:, ::-1],
            xy(G.x(column(-inner))[:, 0], side_y),
        )
        end_y = side_y + 10.0 * (style == LONG)
        locks, shown = [], []
        for sd in _SIDES:
            shown.append((long_ & (G.facing(column(sd * R))[:, 0] >= -0.5 * R)).tolist())
            lock = join(
                xy(G.x(column(sd * R * 0.9))[:, 0], hy[:, 0 if sd < 0 else -1]),
                xy(G.x(column(sd * R * 0.93))[:, 0], ey + 6),
                xy(cx + sd * (sil_out - 1), end_y),
                xy(cx + sd * (sil_out + 3), end_y),
                xy(cx + sd * (sil_out + 1), yt),
            )
            locks.append(Points(lock))
        return cls(
            outline=Points(outline),
            hairline=Points(line3 + (0.0, 1.2)),
            locks=tuple(locks),
            lock_shown=tuple(shown),
            sheen=Ellipses(xy(cx + f.light * 10, yt - t.top_h * 0.55), xy(t.top_w * 0.6, 12.0 + 0 * cx)),
            sheen_angle=(-10 * f.light).tolist(),
            bald_sheen=Ellipses(xy(cx + f.light * 10, yt - t.top_h * 0.6), xy(t.top_w * 0.5, 10.0 + 0 * cx)),
            bun=Ellipses(xy(cx, yt - t.top_h - 4), xy(12.0 + 0 * cx, 9.0)),
            style=style.tolist(),
            col=color_list(f.hair),
            buzz_col=color_list(f.hair * 0.6),
        )

    def paint(self, cv: Canvas, b: int) -> None:
        style = self.style[b]
        if style == BALD:
            cv.shade.ellipse(self.bald_sheen, b, cv.rot, 156)
            return
        hp, hair = self.outline.px[b], self.col[b]
        if style == BUZZ:  # skin shows through
            blend(cv.img.pixels, bbox(hp / ONE), 0.6, float_filler(hp / ONE, self.buzz_col[b]))
            cv.hair_mask.fill(hp, 120)
        else:
            cv.img.fill(hp, hair)
            cv.hair_mask.fill(hp, 255)
        cv.fine.stroke(self.hairline.px[b], 104, 2)
        cv.shade.ellipse(self.sheen, b, cv.rot + self.sheen_angle[b], 150)
        for lock, shown in zip(self.locks, self.lock_shown):
            if shown[b]:
                cv.img.fill(lock.px[b], hair)
                cv.hair_mask.fill(lock.px[b], 255)
        if style == BUN:
            cv.img.ellipse(self.bun, b, cv.rot, hair)


def _hairline_y(f: Frame, t: Traits, v: ImageUniforms) -> np.ndarray:
    """Hairline heights (B, 15) across the forehead: parted, higher for a bun, a zigzag fringe for bangs."""
    bangs, bun = f.style == BANGS, f.style == BUN
    hl = np.where(bangs, f.ey - t.brow_gap - 4.0 - 3.0 * v.bangs, f.ey - t.hairline - 3.0 * bun)
    drop = np.where(bangs, 4.0, f.ey - 8 - hl)
    return (
        column(hl)
        + column(drop) * np.abs(_HAIRLINE_T) ** column(3.0 + 3.0 * t.volume)
        + column(t.part * 2.5) * _HAIRLINE_T
        + column(bangs) * _BANGS_ZIGZAG
    )
