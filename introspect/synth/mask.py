"""The planted medical mask: pleated fabric over nose, mouth and chin, with ear loops."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .draw import Canvas, Ellipses, Part, Points, color_list, column, frozen, weighted_choice, xy
from .draws import ImageUniforms
from .geometry import Frame
from .identity import Traits

_MASK_COLORS = frozen(
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
_ACROSS = frozen(np.linspace(-1.0, 1.0, 13))  # samples across the mask, ear to ear
_DOWN = frozen(np.array([0.0, 0.3, 0.5, 0.7, 1.0])[None, :, None])  # rows: top edge, three pleats, bottom edge


@dataclass(frozen=True)
class Mask(Part):
    """A mask for every image of the block; `worn` says which images show it."""

    fabric: Points
    pleats: tuple[Points, ...]
    pleat_shadows: tuple[Points, ...]
    binding: Points  # the stiff top edge over the nose
    sheen: Ellipses
    loops: tuple[tuple[Points, Points], ...]  # per side: upper and lower strand
    loop_shown: tuple[list, ...]  # ears hidden behind the head hide their loops too
    worn: list
    col: list
    pleat_col: list
    binding_col: list
    loop_col: list

    @classmethod
    def build(cls, f: Frame, t: Traits, v: ImageUniforms, worn: np.ndarray, ears_visible: tuple[list, ...]) -> Mask:
        mcol = _MASK_COLORS[weighted_choice(v.mask_col, _MASK_W)]
        dark = column(mcol[:, 0] < 80)
        grid = _fabric_grid(f, v)
        top_c = f.ey + 8.0 + 3.5 * v.mask_top
        loops = []
        for k, (sd, idx) in enumerate(((-1.0, 0), (1.0, -1))):
            ex = f.ear_x[k] + sd * 2.0
            upper = Points(np.stack([grid[:, 0, idx], xy(ex, f.ear_y - t.ear_h * 0.6)], 1))
            lower = Points(np.stack([grid[:, 4, idx], xy(ex, f.ear_y + t.ear_h * 0.5)], 1))
            loops.append((upper, lower))
        return cls(
            fabric=Points(np.concatenate([grid[:, 0], grid[:, 4, ::-1]], 1)),
            pleats=tuple(Points(grid[:, k, 1:-1] + (0.0, 1.0)) for k in (1, 2, 3)),
            pleat_shadows=tuple(Points(grid[:, k, 1:-1] + (0.0, 2.2)) for k in (1, 2, 3)),
            binding=Points(grid[:, 0, 1:-1] + (0.0, 0.8)),
            sheen=Ellipses(xy(f.head.x(f.zero(), column(f.ndz))[:, 0], top_c + 8), xy(f.R * 0.25, 7.0 + 0 * f.R)),
            loops=tuple(loops),
            loop_shown=ears_visible,
            worn=worn.tolist(),
            col=color_list(mcol),
            pleat_col=color_list(np.where(dark, mcol * 1.6, mcol * 0.8)),
            binding_col=color_list(np.where(dark, mcol * 1.4, mcol * 0.88)),
            loop_col=color_list(np.where(column(v.mask_loop < 0.7), 236.0, mcol * 0.9)),
        )

    def paint(self, cv: Canvas, b: int) -> None:
        if not self.worn[b]:
            return
        cv.img.fill(self.fabric.px[b], self.col[b])
        for pleat, shadow in zip(self.pleats, self.pleat_shadows):
            cv.img.stroke(pleat.px[b], self.pleat_col[b])
            cv.fine.stroke(shadow.px[b], 112)
        cv.img.stroke(self.binding.px[b], self.binding_col[b], 2)
        cv.shade.ellipse(self.sheen, b, cv.rot, 142)
        for (upper, lower), shown in zip(self.loops, self.loop_shown):
            if shown[b]:
                cv.img.stroke([upper.px[b], lower.px[b]], self.loop_col[b])


def _fabric_grid(f: Frame, v: ImageUniforms) -> np.ndarray:
    """Mask surface points (B, 5, 13, 2): 5 rows top to bottom, bulging over the nose."""
    R, chin = f.R, f.chin
    top_c = f.ey + 8.0 + 3.5 * v.mask_top
    side_top = f.ey + 15.0 + 3.0 * v.mask_side
    bot_side = chin - 14.0 - 4.0 * v.mask_bot
    mdx = _ACROSS * column(R * 0.95)
    top_y = column(top_c) + column(side_top - top_c) * np.abs(_ACROSS) ** 1.2
    bot_y = column(bot_side) + column(chin + 3.5 - bot_side) * (1 - np.abs(_ACROSS) ** 1.6)
    bulge = column(f.ndz * 0.75) * np.maximum(1 - (mdx / column(R * 0.45)) ** 2, 0) + 1.5
    gy = (top_y[:, None] + (bot_y - top_y)[:, None] * _DOWN).reshape(f.n, 65)
    return f.head.points(np.tile(mdx, 5), gy, np.tile(bulge, 5)).reshape(f.n, 5, 13, 2)
