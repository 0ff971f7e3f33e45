"""The planted occluders: a hand, a phone, a microphone or a flat bar in front of the face.

They are rare, so they are drawn one image at a time, in crop coordinates, with the image's own
random numbers: 24 uniforms first, then whatever a hand needs for its fingers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .draw import (
    AA,
    SHIFT,
    Canvas,
    Part,
    apply_affine,
    bbox,
    blend,
    ellipse,
    fill_poly,
    fixed_point,
    float_filler,
    mix,
    polyline,
    random_color,
    scaled,
    tinted,
    xy,
)
from .geometry import Frame
from .identity import SKIN


def _hand(img: np.ndarray, rng: np.random.Generator, c: tuple, ang: float, size: float, skin: tuple) -> None:
    """A palm with fingers and a forearm running out of frame; the fingers point along ang."""
    fx, fy = math.cos(ang), math.sin(ang)  # finger direction
    px, py = -fy, fx  # across the palm
    dark = scaled(skin, 0.72)
    arm = (c[0] - fx * 120, c[1] - fy * 120)
    cv2.line(img, fixed_point(*c), fixed_point(*arm), scaled(skin, 0.92), max(1, int(size * 1.05)), AA, SHIFT)
    ellipse(img, c, (size * 0.62, size * 0.55), math.degrees(ang), skin)
    width = size * 0.24
    tips = []
    for k, length in enumerate((0.95, 1.05, 1.0, 0.8)):
        off = (k - 1.5) * width * 1.02
        bx, by = c[0] + fx * size * 0.35 + px * off, c[1] + fy * size * 0.35 + py * off
        spread = (k - 1.5) * rng.uniform(0.0, 0.12)
        dx, dy = math.cos(ang + spread), math.sin(ang + spread)
        L = size * length * rng.uniform(0.85, 1.05)
        tips.append((bx + dx * L, by + dy * L, dx, dy))
        cv2.line(
            img, fixed_point(bx, by), fixed_point(bx + dx * L, by + dy * L), skin, max(1, int(round(width))), AA, SHIFT
        )
    for k in range(3):  # gaps between the fingers
        off = (k - 1.0) * width * 1.02
        bx, by = c[0] + fx * size * 0.5 + px * off, c[1] + fy * size * 0.5 + py * off
        cv2.line(
            img, fixed_point(bx, by), fixed_point(bx + fx * size * 0.75, by + fy * size * 0.75), dark, 1, AA, SHIFT
        )
    for tx, ty, dx, dy in tips:  # nails
        ellipse(
            img,
            (tx - dx * width * 0.35, ty - dy * width * 0.35),
            (width * 0.3, width * 0.22),
            math.degrees(math.atan2(dy, dx)),
            tinted(skin, (1.05, 1.0, 1.02)),
        )
    side = 1 if rng.random() < 0.5 else -1  # thumb
    ta = ang + side * rng.uniform(0.7, 1.1)
    bx, by = c[0] + px * side * size * 0.45, c[1] + py * side * size * 0.45
    thumb_tip = fixed_point(bx + math.cos(ta) * size * 0.7, by + math.sin(ta) * size * 0.7)
    cv2.line(img, fixed_point(bx, by), thumb_tip, skin, max(1, int(round(width * 1.1))), AA, SHIFT)


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


def _hand_occluder(img: np.ndarray, rng: np.random.Generator, u: list, cx: float, ey: float, R: float) -> None:
    """A hand raised in front of the face, of any skin tone, mostly pointing up."""
    skin = mix(SKIN[int(u[0] * 7)], SKIN[int(u[1] * 8)], u[2])
    c = (cx + (u[3] * 1.6 - 0.8) * R, ey - 10 + 55 * u[4])
    ang = (u[5] - 0.5) * 2 * math.pi if u[6] < 0.3 else -math.pi / 2 + (u[5] - 0.5) * 2.0
    _hand(img, rng, c, ang, 20 + 10 * u[7], skin)


def _phone(img: np.ndarray, rng: np.random.Generator, u: list, cx: float, ey: float, R: float) -> None:
    """A phone beside the face: screen side (dark or lit, with glare) or back with a camera bump."""
    w, h = 22 + 10 * u[0], 44 + 18 * u[1]
    c = (cx + (1 if u[2] < 0.5 else -1) * (0.3 + 0.7 * u[3]) * R, ey + 40 * u[4])
    ang = (u[5] - 0.5) * 80
    body = random_color(u[6:10], 0.5, 15, 230) if u[10] < 0.5 else (24.0, 24.0, 28.0)
    shell = _rounded_rect(c, w, h, ang, 4.0)
    fill_poly(img, shell, body)
    polyline(img, shell, scaled(body, 0.6), 1, True)
    t = math.radians(ang)
    if u[11] < 0.55:  # screen side, dark or lit, with a glare
        scr = _rounded_rect(c, w - 3.5, h - 6, ang, 2.5)
        fill_poly(img, scr, random_color(u[12:16], 0.6, 120, 250) if u[16] < 0.5 else (10.0, 12.0, 16.0))
        blend(img, bbox(scr), 0.2, float_filler(np.array([scr[0], scr[len(scr) // 4], c]), (255, 255, 255)))
    else:  # back with a camera bump
        cc = (
            c[0] - w * 0.22 * math.cos(t) + h * 0.3 * math.sin(t),
            c[1] - w * 0.22 * math.sin(t) - h * 0.3 * math.cos(t),
        )
        fill_poly(img, _rounded_rect(cc, w * 0.42, w * 0.48, ang, 2.0), scaled(body, 0.7))
        for k in (-1, 1):
            ellipse(img, (cc[0] + k * 2.4 * math.sin(t), cc[1] - k * 2.4 * math.cos(t)), (2.0, 2.0), 0, (20, 20, 24))
    if u[17] < 0.6:  # fingers holding it
        skin = SKIN[int(u[18] * 8)]
        side = 1 if u[19] < 0.5 else -1
        for k in range(2 + int(u[20] * 2)):
            oy = (k - 1) * 7.0
            bx, by = (
                c[0] + side * (w / 2) * math.cos(t) - oy * math.sin(t),
                c[1] + side * (w / 2) * math.sin(t) + oy * math.cos(t),
            )
            start = fixed_point(bx + side * 4 * math.cos(t), by + side * 4 * math.sin(t))
            end = fixed_point(bx - side * 5 * math.cos(t), by - side * 5 * math.sin(t))
            cv2.line(img, start, end, skin, 6, AA, SHIFT)


def _mic(img: np.ndarray, rng: np.random.Generator, u: list, cx: float, ey: float, R: float) -> None:
    """An interview microphone from below: handle, sometimes a station flag, a mesh head."""
    r = 8 + 5 * u[0]
    c = (cx + (u[1] - 0.5) * 1.2 * R, ey + 25 + 25 * u[2])
    head = random_color(u[3:7], 0.1, 40, 190)
    ang = math.pi / 2 + (u[7] - 0.5) * 1.6
    hx, hy = math.cos(ang), math.sin(ang)
    L = 55 + 35 * u[8]
    handle = (20.0, 20.0, 22.0) if u[9] < 0.7 else random_color(u[10:14], 0.2, 100, 200)
    q = np.array(
        [
            [c[0] - hy * r * 0.45, c[1] + hx * r * 0.45],
            [c[0] + hy * r * 0.45, c[1] - hx * r * 0.45],
            [c[0] + hx * L + hy * r * 0.3, c[1] + hy * L - hx * r * 0.3],
            [c[0] + hx * L - hy * r * 0.3, c[1] + hy * L + hx * r * 0.3],
        ]
    )
    fill_poly(img, q, handle)
    if u[14] < 0.35:  # station flag cube
        fc = (c[0] + hx * r * 1.9, c[1] + hy * r * 1.9)
        cube = cv2.boxPoints((fc, (r * 1.5, r * 1.3), math.degrees(ang) - 90))
        fill_poly(img, cube, random_color(u[15:19], 0.8, 60, 230))
    ellipse(img, c, (r, r), 0, head)
    mesh = scaled(head, 0.65)
    for d in (-0.7 * r, -0.35 * r, 0.0, 0.35 * r, 0.7 * r):
        h = math.sqrt(max(0.0, r * r - d * d)) * 0.95
        cv2.line(img, fixed_point(c[0] - h, c[1] + d), fixed_point(c[0] + h, c[1] + d), mesh, 1, AA, SHIFT)
        cv2.line(img, fixed_point(c[0] + d, c[1] - h), fixed_point(c[0] + d, c[1] + h), mesh, 1, AA, SHIFT)
    ellipse(img, (c[0] - r * 0.35, c[1] - r * 0.35), (r * 0.3, r * 0.2), -30, scaled(head, 1.35))
    ellipse(img, c, (r, r), 0, scaled(head, 0.5), 1)


def _bar(img: np.ndarray, rng: np.random.Generator, u: list, cx: float, ey: float, R: float) -> None:
    """A censor bar, a strap, any flat coloured band."""
    L, t = 40 + 100 * u[0], 8 + 14 * u[1]
    c = (cx + (u[2] - 0.5) * 1.2 * R, ey - 15 + 60 * u[3])
    ang = (u[4] - 0.5) * 24 if u[5] < 0.6 else (u[4] - 0.5) * 180
    col = (0.0, 0.0, 0.0) if u[6] < 0.45 else random_color(u[7:11], 0.8, 20, 240)
    fill_poly(img, cv2.boxPoints((c, (L, t), ang)), col)


_KINDS = {"hand": _hand_occluder, "phone": _phone, "mic": _mic, "bar": _bar}


def occluder(img: np.ndarray, rng: np.random.Generator, kind: str, cx: float, ey: float, R: float) -> None:
    """Rare objects in front of the face, at random places and with varied looks (crop coordinates)."""
    u = rng.random(24).tolist()
    _KINDS[kind](img, rng, u, cx, ey, R)


@dataclass(frozen=True)
class Occluders(Part):
    """Where an occluder goes in each image: the face centre at eye level, and the face's half width."""

    anchor: np.ndarray  # canvas points (B, 2)
    R: np.ndarray
    kind: list  # per image: "none" or an occluder kind
    placement: list  # per image: (x, y, R) in the crop, set by align

    @classmethod
    def build(cls, f: Frame, kind: list) -> Occluders:
        return cls(anchor=xy(f.head.x(f.zero())[:, 0], f.ey), R=f.R, kind=kind, placement=[])

    def align(self, A: np.ndarray, scale: np.ndarray) -> None:
        at = apply_affine(A, self.anchor)
        self.placement[:] = np.stack([at[:, 0], at[:, 1], self.R * scale], -1).tolist()

    def paint(self, cv: Canvas, b: int) -> None:
        if self.kind[b] != "none":
            ox, oy, oR = self.placement[b]
            occluder(cv.img.pixels, cv.rng, self.kind[b], ox, oy, oR)
