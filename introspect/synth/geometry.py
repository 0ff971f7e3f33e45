"""Head geometry for a block of images: a toy 3-D head, where its features sit, and the alignment.

Faces are laid out on an elliptic cylinder turned by a yaw angle, in canvas pixels (CANVAS x
CANVAS; frontal eyes near (46, 60) and (82, 60)).  A similarity fitted from the five landmarks
to the template, as a real detector + aligner would, plus a little detector jitter, then maps
everything into the SIZE crop.  A turned head therefore looks like a real aligned turned head:
eyes and mouth stay near the template while the outline, nose and ears move."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .draw import column, frozen, xy
from .draws import ImageUniforms
from .identity import Traits
from .spec import TEMPLATE

# Jaw samples from one ear to the other, through the chin.
_JAW = frozen(np.linspace(math.pi / 2, -math.pi / 2, 15))
_JAW_SIN, _JAW_COS = frozen(np.sin(_JAW)), frozen(np.abs(np.cos(_JAW)))


class HeadGeometry:
    """Toy heads for a batch: elliptic cylinders (half width R, depth D) turned by yaw.

    dx is measured across the face, dz out of it; only x changes when the head turns.  All
    per-image values are columns (B, 1), so methods take per-point offsets (B, k)."""

    def __init__(self, cx: np.ndarray, R: np.ndarray, D: np.ndarray, yaw: np.ndarray) -> None:
        c, s = np.cos(yaw), np.sin(yaw)
        self.sil = np.sqrt((R * c) ** 2 + (D * s) ** 2)  # silhouette half width
        self.cx, self.c, self.s, self.D, self.r2 = column(cx), column(c), column(s), column(D), column(1.0 / (R * R))
        self.lo, self.hi = column(cx - self.sil), column(cx + self.sil)

    def z(self, dx: np.ndarray) -> np.ndarray:
        """Depth of the surface at dx, before turning."""
        return self.D * np.sqrt(np.maximum(1.0 - dx * dx * self.r2, 0.0))

    def x(self, dx: np.ndarray, dz: np.ndarray | float = 0.0) -> np.ndarray:
        """Canvas x of the surface point at dx (raised by dz) after turning, kept inside the silhouette."""
        return np.clip(self.cx + dx * self.c + (self.z(dx) + dz) * self.s, self.lo, self.hi)

    def points(self, dx: np.ndarray, y: np.ndarray, dz: np.ndarray | float = 0.0) -> np.ndarray:
        """Canvas points (B, k, 2) of surface offsets dx at heights y."""
        return xy(self.x(dx, dz), y)

    def foreshortening(self, dx: np.ndarray) -> np.ndarray:
        """Horizontal foreshortening of a small feature at dx (the far eye gets narrow)."""
        q = np.maximum(1.0 - dx * dx * self.r2, 1e-3)
        return np.clip(self.c - self.D * dx * self.r2 / np.sqrt(q) * self.s, 0.15, 1.25)

    def facing(self, dx: np.ndarray, dz: np.ndarray | float = 0.0) -> np.ndarray:
        """Depth after turning: < 0 means the point went round the back of the head."""
        return -dx * self.s + (self.z(dx) + dz) * self.c


@dataclass(frozen=True)
class Frame:
    """Where a block's heads sit and where their features go, shared by every scene part (canvas pixels)."""

    n: int  # images in the block
    head: HeadGeometry
    pose: np.ndarray  # 0 frontal, 1 left, 2 right
    yaw: np.ndarray  # radians; > 0 turns the nose to larger x
    cx: np.ndarray  # face centre
    ey: np.ndarray  # eye line
    R: np.ndarray  # face half width
    light: np.ndarray  # key light from -x (negative) to +x (positive)
    skin: np.ndarray  # this image's skin colour (B, 3): the identity's, a little lighter or darker
    hair: np.ndarray
    style: np.ndarray
    yt: np.ndarray  # temple level: the top of the face's sides
    chin: np.ndarray
    gon: np.ndarray  # jaw angle height
    vol: np.ndarray  # hair volume above the cranium
    hx_sil: np.ndarray  # hair silhouette half width
    jaw_dx: np.ndarray  # jaw samples (B, 15): across the face ...
    jaw_y: np.ndarray  # ... and down
    ear_x: tuple[np.ndarray, ...]  # where the left / right ear joins the head
    ear_y: np.ndarray
    nose_y: np.ndarray
    ndz: np.ndarray  # how far the nose sticks out
    mouth_y: np.ndarray
    mw: np.ndarray  # mouth half width

    def zero(self) -> np.ndarray:
        """Offsets (B, 1) at the face's centre line."""
        return np.zeros((self.n, 1))


def head_frame(v: ImageUniforms, t: Traits, pose: np.ndarray) -> Frame:
    """Pose, head and feature placement for a block: identity traits plus this image's jitter."""
    turn = np.where(pose == 1, -1.0, 1.0)
    yaw = np.where(pose == 0, (v.yaw - 0.5) * 0.3, (0.38 + 0.4 * v.yaw) * turn)
    cx, ey = 63.0 + 2.0 * v.cx, 59.0 + 2.0 * v.ey
    R = t.R
    G = HeadGeometry(cx, R, t.depth * R, yaw)
    vol = 1.0 + 3.0 * t.volume
    gon = ey + t.gonion
    ear_x = tuple(cx + sd * R * G.c[:, 0] - 0.15 * R * G.s[:, 0] for sd in (-1.0, 1.0))
    return Frame(
        n=len(cx),
        head=G,
        pose=pose,
        yaw=yaw,
        cx=cx,
        ey=ey,
        R=R,
        light=(v.light - 0.5) * 1.6,
        skin=np.minimum(t.skin * column(0.97 + 0.06 * v.skin), 255.0),
        hair=t.hair,
        style=t.style,
        yt=ey - 4.0,
        chin=ey + t.chin,
        gon=gon,
        vol=vol,
        hx_sil=t.top_w * 1.04 + vol,
        jaw_dx=column(R * t.jaw_w) * _JAW_SIN,
        jaw_y=column(gon) + column(t.chin - t.gonion) * _JAW_COS ** column(t.jaw_q),
        ear_x=ear_x,
        ear_y=ey + t.ear_y,
        nose_y=ey + t.nose_y + (v.nose_dy - 0.5) * 1.2,
        ndz=t.nose_dz * R,
        mouth_y=ey + t.mouth_y + (v.mouth_dy - 0.5) * 1.5,
        mw=t.mouth_w * (0.95 + 0.1 * v.mouth_dy),
    )


def _similarity_batch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, ...]:
    """Least-squares similarities src (B, 5, 2) -> dst (5, 2), as face aligners fit them.

    Returns a, b, tx, ty of x' = a x - b y + tx, y' = b x + a y + ty."""
    ms, md = src.mean(1), dst.mean(0)
    s, d = src - ms[:, None], dst - md
    den = (s * s).sum((1, 2))
    a = (s * d).sum((1, 2)) / den
    b = (s[..., 0] * d[:, 1] - s[..., 1] * d[:, 0]).sum(1) / den
    return a, b, md[0] - (a * ms[:, 0] - b * ms[:, 1]), md[1] - (b * ms[:, 0] + a * ms[:, 1])


def alignment(landmarks: np.ndarray, v: ImageUniforms) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Canvas -> crop affines (B, 2, 3): the landmark similarity, then detector jitter (roll, scale, shift).

    Also returns each affine's scale (B,) and rotation in degrees, which ellipses need: the
    geometry is transformed, not the pixels (no resampling, and a warp would cost more than
    the drawing)."""
    a, b, tx, ty = _similarity_batch(landmarks, TEMPLATE)
    rot, sc = np.radians((v.rot - 0.5) * 9.0), 0.95 + 0.1 * v.scale
    ja, jb = sc * np.cos(rot), sc * np.sin(rot)
    jx = 56.0 - (ja - jb) * 56.0 + (v.shift_x - 0.5) * 4.0
    jy = 56.0 - (jb + ja) * 56.0 + (v.shift_y - 0.5) * 4.0
    A = np.empty((len(a), 2, 3))
    A[:, 0, 0], A[:, 0, 1], A[:, 0, 2] = ja * a - jb * b, -(ja * b + jb * a), ja * tx - jb * ty + jx
    A[:, 1, 0], A[:, 1, 1], A[:, 1, 2] = jb * a + ja * b, ja * a - jb * b, jb * tx + ja * ty + jy
    scale = np.hypot(A[:, 0, 0], A[:, 1, 0])
    return A, scale, np.degrees(np.arctan2(A[:, 1, 0], A[:, 0, 0])).tolist()
