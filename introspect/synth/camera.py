"""The camera: lighting and shading, exposure and colour temperature, the planted dark / blur /
gray attributes, sensor noise; it turns a painted scene into the final BGR crop."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .draw import SHIFT, Canvas, fixed_point
from .draws import ImageUniforms
from .spec import SIZE

PIXELS = SIZE * SIZE * 3
_NOISE_BANK = 3  # per-seed Gaussian noise, in images' worth; each image takes a window at a random offset


def noise_bank(seed: int) -> np.ndarray:
    """Flat Gaussian noise that images take windows of: fresh normals per pixel cost more than drawing."""
    return np.random.default_rng([seed, 2]).standard_normal(_NOISE_BANK * PIXELS, dtype=np.float32)


@dataclass(frozen=True)
class Camera:
    """Per-image camera settings for a block (lists of Python scalars, read one image at a time)."""

    light: list  # key light direction, -1 (from -x) .. 1
    temp: list  # colour temperature: red up, blue down
    gain: list  # exposure
    sigma: list  # noise level
    dk_gamma: list  # under-exposure (dark images): gamma, ...
    dk_e: list  # ... exposure, ...
    dk_sigma: list  # ... noise level ...
    dk_cast: list  # ... and whether there is a blue cast
    bl_gauss: list  # blurred images: Gaussian, else motion blur
    bl_s: list  # blur strength
    bl_angle: list  # motion blur direction, / pi
    soft: list  # mild softness on sharp images, so blur is not trivially separable
    noise_at: list  # offset of the image's window in the noise bank
    quality: list  # JPEG quality

    @classmethod
    def build(cls, v: ImageUniforms, light: np.ndarray, bank_len: int) -> Camera:
        return cls(
            light=light.tolist(),
            temp=((v.temp - 0.5) * 0.16).tolist(),
            gain=(0.85 + 0.27 * v.gain).tolist(),
            sigma=(1.2 + 3.0 * v.sigma).tolist(),
            dk_gamma=(1.25 + 0.8 * v.dk_gamma).tolist(),
            dk_e=((0.24 + 0.24 * v.dk_e) * 255.0).tolist(),
            dk_sigma=(4.0 + 5.0 * v.dk_sigma).tolist(),
            dk_cast=(v.dk_cast >= 0.5).tolist(),
            bl_gauss=(v.bl_kind < 0.5).tolist(),
            bl_s=v.bl_s.tolist(),
            bl_angle=v.bl_angle.tolist(),
            soft=(v.soft < 0.2).tolist(),
            noise_at=(v.noise * (bank_len - PIXELS)).astype(int).tolist(),
            quality=(58 + 38 * v.quality).astype(int).tolist(),
        )

    def develop(self, cv: Canvas, b: int, lab: dict[str, str], bank: np.ndarray) -> np.ndarray:
        """The finished BGR uint8 crop of image b from its painted layers."""
        x = self._expose(cv, b)
        sigma = self.sigma[b]
        if lab["dark"] == "1":
            x = self._underexpose(x, b)
            sigma = self.dk_sigma[b]
        if lab["blur"] == "1":
            x = self._blur(x, b)
        elif self.soft[b]:
            x = cv2.blur(x, (2, 2))
        o = self.noise_at[b]  # a contiguous window of the flat noise bank: a view, no copy
        out = cv2.addWeighted(x, 1.0, bank[o : o + PIXELS].reshape(SIZE, SIZE, 3), sigma, 0.0, dtype=cv2.CV_8U)
        if lab["gray"] == "1":
            gray = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
            return cv2.merge([gray, gray, gray])
        return cv2.cvtColor(out, cv2.COLOR_RGB2BGR)

    def _expose(self, cv: Canvas, b: int) -> np.ndarray:
        """One multiplicative pass: shading, light falloff, hair texture, exposure, colour temperature."""
        light, rng = self.light[b], cv.rng
        g = rng.random((3, 3), dtype=np.float32) * 0.35 + 0.78
        g[:, 0] -= light * 0.1
        g[:, 2] += light * 0.1
        small = cv2.blur(cv.shade.pixels, (3, 3))  # coarse shading x light field, at 28 px
        field = cv2.resize(g, (SIZE // 4, SIZE // 4), interpolation=cv2.INTER_LINEAR)
        small = cv2.multiply(small, field, dtype=cv2.CV_32F)
        factor = cv2.multiply(
            cv2.resize(small, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR),
            cv2.blur(cv.fine.pixels, (3, 3)),
            scale=1.0 / (128.0 * 128.0),
            dtype=cv2.CV_32F,
        )
        streak = cv2.resize(
            rng.standard_normal((12, 42), dtype=np.float32), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR
        )
        factor = cv2.add(factor, cv2.multiply(streak, cv.hair_mask.pixels, scale=0.22 / 255.0, dtype=cv2.CV_32F))
        temp, gain = self.temp[b], self.gain[b]
        f3 = cv2.merge([factor * (gain * (1 + temp)), factor * gain, factor * (gain * (1 - temp))])
        return cv2.multiply(cv.img.pixels, f3, dtype=cv2.CV_8U)

    def _underexpose(self, x: np.ndarray, b: int) -> np.ndarray:
        """Planted darkness: gamma and gain down through a lookup table, sometimes a blue cast."""
        e = self.dk_e[b]
        cast = np.array((0.9, 0.97, 1.12) if self.dk_cast[b] else (1.0, 1.0, 1.0))
        lut = (np.linspace(0.0, 1.0, 256)[:, None] ** self.dk_gamma[b]) * (e * cast)
        return cv2.LUT(x, np.clip(lut + 0.5, 0, 255).astype(np.uint8).reshape(1, 256, 3))

    def _blur(self, x: np.ndarray, b: int) -> np.ndarray:
        """Planted blur: Gaussian, or motion blur along a random direction."""
        if self.bl_gauss[b]:
            return cv2.GaussianBlur(x, (0, 0), 1.2 + 1.6 * self.bl_s[b])
        L = int(5 + 8 * self.bl_s[b]) | 1
        k = np.zeros((L, L), np.float32)
        th = math.pi * self.bl_angle[b]
        h = (L - 1) / 2
        start = fixed_point(h - h * math.cos(th), h - h * math.sin(th))
        end = fixed_point(h + h * math.cos(th), h + h * math.sin(th))
        cv2.line(k, start, end, 1.0, 1, cv2.LINE_8, SHIFT)
        return cv2.filter2D(x, -1, k / max(float(k.sum()), 1e-6), borderType=cv2.BORDER_REFLECT101)
