"""Backgrounds: varied and defocused, so nothing outside the face separates the images."""

from __future__ import annotations

import cv2
import numpy as np

from .draw import AA, ONE, SHIFT, fixed_point, random_color, scaled
from .spec import SIZE


def background(rng: np.random.Generator) -> np.ndarray:
    """Varied, defocused backgrounds: drawn at 32 px and upscaled, which blurs for free."""
    u = rng.random(40).tolist()
    blobs = rng.random((16, 8)).tolist()  # position, size, colour: for the kinds that scatter shapes
    kind = int(u[0] * 5)
    small = np.empty((32, 32, 3), np.uint8)
    if kind == 0:  # smooth gradient between four corner colours
        g = np.array(
            [random_color(u[1:5]), random_color(u[5:9]), random_color(u[9:13]), random_color(u[13:17])], np.float32
        )
        small = cv2.resize(g.reshape(2, 2, 3), (32, 32), interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    elif kind == 1:  # indoor: wall, door / window / shelf rectangles, a room corner
        small[:] = random_color(u[1:5], 0.3, 60, 235)
        for x, y, w, h, *c in blobs[: 1 + int(u[5] * 3)]:
            x, y = -4 + 34 * x, -4 + 34 * y
            cv2.rectangle(
                small,
                fixed_point(x, y),
                fixed_point(x + 4 + 12 * w, y + 6 + 24 * h),
                random_color(c, 0.4),
                -1,
                AA,
                SHIFT,
            )
        if u[18] < 0.6:
            x = 32 * u[19]
            cv2.line(
                small,
                fixed_point(x, 0),
                fixed_point(x + (u[32] - 0.5) * 6, 32),
                random_color(u[33:37], 0.2, 30, 120),
                1,
                AA,
                SHIFT,
            )
    elif kind == 2:  # outdoor: sky over foliage / buildings
        small[:] = random_color(u[1:5], 0.35, 150, 250)
        horizon = 6 + 16 * u[5]
        ground = random_color(u[6:10], 0.5, 30, 150)
        cv2.rectangle(small, fixed_point(0, horizon), fixed_point(32, 32), ground, -1, AA, SHIFT)
        for x, y, r, f, *_ in blobs[: 4 + int(u[10] * 8)]:
            cv2.circle(
                small,
                fixed_point(32 * x, horizon - 6 + (38 - horizon) * y),
                int((2 + 4 * r) * ONE),
                scaled(ground, 0.6 + 0.8 * f),
                -1,
                AA,
                SHIFT,
            )
    elif kind == 3:  # bokeh lights
        small[:] = random_color(u[1:5], 0.4, 10, 90)
        for x, y, r, *c in blobs[: 6 + int(u[5] * 10)]:  # c: 5 uniforms, _color uses 4
            cv2.circle(
                small, fixed_point(32 * x, 32 * y), int((1 + 2.5 * r) * ONE), random_color(c, 0.7, 80), -1, AA, SHIFT
            )
    else:  # studio backdrop with a vignette
        c = random_color(u[1:5], 0.25, 70, 245)
        small[:] = c
        cv2.circle(small, (16 * 16, 14 * 16), int((20 + 14 * u[5]) * 16), scaled(c, 1.08 + 0.1 * u[6]), -1, AA, SHIFT)
    return cv2.resize(small, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
