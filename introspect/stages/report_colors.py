"""The report's colours: one per cluster, as far apart as the eye tells for 40 clusters and more,
and kept away from the colours that mean something else on the map (noise, the labelled images
drawn beneath, new data drawn over, the white page).

A fixed list of 18 (matplotlib's tab20 less its greys) made a 40-cluster map reuse each colour
twice or three times. Here the palette is chosen greedily in OKLab (a space where Euclidean
distance follows perceived difference): each next colour is the sRGB candidate farthest from
every colour taken so far and from the reserved ones, among mid-light, saturated candidates
(an sRGB grid of step 15). At 40 colours the closest two are 0.094 apart in OKLab (the 18-colour
list's closest: 0.054; a just-noticeable difference is about 0.02).
The first colours are thus the most distinct, whatever the number of clusters.
"""

from __future__ import annotations

import functools

import numpy as np

NOISE_COLOR = "#9a9a9a"  # mid grey: rows no cluster took
LABELLED_COLOR = "#eed9b6"  # pale sand: the labelled images placed on the map (a sample), drawn beneath
SECOND_COLOR = "#111111"  # near black: a second labelling (new data), drawn over everything
PAGE_COLOR = "#ffffff"
RESERVED = (NOISE_COLOR, LABELLED_COLOR, SECOND_COLOR, PAGE_COLOR)
FIRST = "#1f77b4"  # matplotlib's first colour, for cluster 0
SIZE = 64  # colours in the palette; cluster ids beyond it reuse them (k = 64 is past every rule's grid)


def _hex_to_rgb(colors) -> np.ndarray:
    return np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in colors], dtype=float) / 255


def oklab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in 0..1 (N x 3) to OKLab (Ottosson 2020)."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m1 = np.array(
        [
            [0.4122214708, 0.5363325363, 0.0514459929],
            [0.2119034982, 0.6806995451, 0.1073969566],
            [0.0883024619, 0.2817188376, 0.6299787005],
        ]
    )
    m2 = np.array(
        [
            [0.2104542553, 0.7936177850, -0.0040720468],
            [1.9779984951, -2.4285922050, 0.4505937099],
            [0.0259040371, 0.7827717662, -0.8086757660],
        ]
    )
    return np.cbrt(lin @ m1.T) @ m2.T


def lab_of(colors) -> np.ndarray:
    """OKLab of '#rrggbb' strings."""
    return oklab(_hex_to_rgb(colors))


@functools.lru_cache(maxsize=1)
def palette() -> tuple[str, ...]:
    """`SIZE` cluster colours, each the candidate farthest (in OKLab) from all taken and reserved ones."""
    levels = np.arange(0, 256, 15)
    rgb = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    lab = oklab(rgb / 255)
    chroma = np.hypot(lab[:, 1], lab[:, 2])
    # visible on white, not a grey, not neon
    keep = (lab[:, 0] >= 0.45) & (lab[:, 0] <= 0.82) & (chroma >= 0.08) & (chroma <= 0.25)
    rgb, lab = rgb[keep], lab[keep]
    nearest = np.min(np.linalg.norm(lab[:, None] - lab_of((*RESERVED, FIRST))[None], axis=2), axis=1)
    out = [FIRST]
    while len(out) < SIZE:
        i = int(np.argmax(nearest))  # ties: the first in a fixed order, so the palette never changes
        out.append("#{:02x}{:02x}{:02x}".format(*rgb[i]))
        nearest = np.minimum(nearest, np.linalg.norm(lab - lab[i], axis=1))
    return tuple(out)


def color(k: int) -> str:
    """Cluster `k`'s colour; noise (-1, or any negative id) is grey."""
    return NOISE_COLOR if k < 0 else palette()[k % SIZE]
