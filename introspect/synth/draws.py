"""The per-image random numbers: one uniform per field, drawn up front from default_rng([seed, 0, i]).

Drawing everything at once, in a fixed order, lets a block's geometry be computed with numpy
while each image's numbers stay its own: an image renders the same alone or in any block."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class ImageUniforms(NamedTuple):
    """Per-image uniforms (B,), in draw order; the first seven pick the planted attributes."""

    glasses: np.ndarray
    mask: np.ndarray
    pose: np.ndarray
    dark: np.ndarray
    gray: np.ndarray
    blur: np.ndarray
    occluder: np.ndarray
    yaw: np.ndarray
    cx: np.ndarray
    ey: np.ndarray
    skin: np.ndarray
    light: np.ndarray
    back_wide: np.ndarray
    collar: np.ndarray
    mouth_dy: np.ndarray
    mouth_w: np.ndarray
    nose_dy: np.ndarray
    stubble: np.ndarray
    eye_open: np.ndarray
    blink: np.ndarray
    gaze_x: np.ndarray
    gaze_y: np.ndarray
    ejx0: np.ndarray  # eye landmark jitter, left / right eye
    ejx1: np.ndarray
    ejy0: np.ndarray
    ejy1: np.ndarray
    brow_raise: np.ndarray
    mouth_mode: np.ndarray
    mouth_open: np.ndarray
    smile: np.ndarray
    bangs: np.ndarray
    mask_col: np.ndarray
    mask_top: np.ndarray
    mask_side: np.ndarray
    mask_bot: np.ndarray
    mask_loop: np.ndarray
    gl_shape: np.ndarray
    gl_w: np.ndarray
    gl_h: np.ndarray
    gl_frame: np.ndarray
    gl_thin: np.ndarray
    gl_t0: np.ndarray  # lens tint colour, four uniforms
    gl_t1: np.ndarray
    gl_t2: np.ndarray
    gl_t3: np.ndarray
    gl_alpha: np.ndarray
    gl_glare: np.ndarray
    gl_rimless: np.ndarray
    rot: np.ndarray
    scale: np.ndarray
    shift_x: np.ndarray
    shift_y: np.ndarray
    temp: np.ndarray
    gain: np.ndarray
    sigma: np.ndarray
    dk_gamma: np.ndarray
    dk_cast: np.ndarray
    dk_e: np.ndarray
    dk_sigma: np.ndarray
    bl_kind: np.ndarray
    bl_s: np.ndarray
    bl_angle: np.ndarray
    soft: np.ndarray
    noise: np.ndarray
    quality: np.ndarray
    cl0: np.ndarray  # clothes colour, four uniforms
    cl1: np.ndarray
    cl2: np.ndarray
    cl3: np.ndarray


def image_uniforms(rngs: list[np.random.Generator]) -> ImageUniforms:
    """The first len(ImageUniforms._fields) uniforms of each image's stream, as per-field arrays."""
    n = len(ImageUniforms._fields)
    return ImageUniforms(*np.array([r.random(n) for r in rngs]).T)
