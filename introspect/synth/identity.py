"""Identities: which images share a person, and the traits that make them that person.

An identity fixes skin tone, face shape, eye spacing / size / colour, brows, nose, mouth,
lips, hair colour and style, ears, beard, moles and freckles, all drawn from
``default_rng([seed, 1, identity])`` so every image of it agrees, whichever block renders it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .draw import column, weighted_choice

SKIN = (
    (255, 228, 208),
    (243, 204, 176),
    (231, 183, 150),
    (212, 158, 118),
    (188, 130, 92),
    (156, 102, 70),
    (120, 78, 52),
    (88, 57, 40),
)
_HAIR = (
    (22, 19, 18),
    (48, 33, 24),
    (92, 62, 40),
    (140, 100, 64),
    (128, 58, 32),
    (204, 170, 110),
    (228, 212, 176),
    (150, 148, 146),
    (214, 212, 206),
    (168, 34, 44),
    (44, 74, 160),
    (222, 122, 172),
    (104, 52, 132),
)
_HAIR_W = (24, 22, 16, 8, 5, 8, 3, 6, 3, 1.5, 1, 1, 1)
_HAIR_W_DARK = (60, 55, 16, 3, 2, 2.4, 0.9, 6, 3, 1.5, 1, 1, 1)
_EYES = ((58, 34, 20), (96, 58, 30), (118, 92, 50), (76, 106, 68), (78, 118, 168), (118, 128, 138))
_EYES_W = (36, 24, 10, 8, 15, 7)
_EYES_W_DARK = (60, 30, 8, 2, 3, 1.5)
_LIPSTICK = ((176, 28, 46), (204, 92, 124), (118, 36, 60), (192, 122, 112), (150, 40, 40))

STYLES = ("bald", "buzz", "short", "medium", "long", "bangs", "bun")
_STYLES_W = (0.05, 0.10, 0.32, 0.15, 0.23, 0.10, 0.05)
BALD, BUZZ, SHORT, MEDIUM, LONG, BANGS, BUN = range(len(STYLES))
BEARDS = ("none", "stubble", "mustache", "goatee", "full")
_BEARDS_W = (0.66, 0.11, 0.05, 0.07, 0.11)
STUBBLE, MUSTACHE, GOATEE = 1, 2, 3  # indices into BEARDS ("full" is the default shape)


# --------------------------------------------------------------------------- who is in which image


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A strong 64-bit mix, so identity assignment is random yet computable per image."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def default_identities(n: int) -> int:
    """About four images per identity unless the caller says otherwise."""
    return max(1, n // 4)


def identity_of(seed: int, n: int, index: np.ndarray | int, identities: int | None = None) -> np.ndarray:
    """Identity of image(s) `index`: hash(seed, i) mod the identity count, so no table of size n is needed.

    The count is `identities`, or ``max(1, n // 4)`` when None."""
    n_ids = default_identities(n) if identities is None else identities
    key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    h = _splitmix64(np.asarray(index, dtype=np.uint64) ^ key)
    return (h % np.uint64(n_ids)).astype(np.int64)


# --------------------------------------------------------------------------- what an identity looks like


class IdentityUniforms(NamedTuple):
    """Per-identity uniforms (B,), drawn in this field order from default_rng([seed, 1, identity])."""

    tone: np.ndarray
    beard_ok: np.ndarray
    lipstick: np.ndarray
    lipstick_c: np.ndarray
    lipstick_a: np.ndarray
    R: np.ndarray
    mole: np.ndarray
    freckles: np.ndarray
    depth: np.ndarray
    top_w: np.ndarray
    top_h: np.ndarray
    chin: np.ndarray
    gonion: np.ndarray
    jaw_w: np.ndarray
    jaw_q: np.ndarray
    es: np.ndarray
    ew: np.ndarray
    eye_open: np.ndarray
    eye_tilt: np.ndarray
    iris_r: np.ndarray
    lash: np.ndarray
    brow_gap: np.ndarray
    brow_t: np.ndarray
    brow_arch: np.ndarray
    brow_len: np.ndarray
    nose_y: np.ndarray
    nose_w: np.ndarray
    nose_dz: np.ndarray
    mouth_y: np.ndarray
    mouth_w: np.ndarray
    lip_up: np.ndarray
    lip_lo: np.ndarray
    hairline: np.ndarray
    part: np.ndarray
    volume: np.ndarray
    ear_h: np.ndarray
    ear_w: np.ndarray
    ear_y: np.ndarray
    blush: np.ndarray
    red: np.ndarray
    yel: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    style: np.ndarray
    beard: np.ndarray
    mole_x: np.ndarray
    mole_y: np.ndarray
    mole_r: np.ndarray
    n_freckles: np.ndarray


_N_UNIFORMS = len(IdentityUniforms._fields)
_TONE, _FRECKLES, _N_FRECKLES = (IdentityUniforms._fields.index(k) for k in ("tone", "freckles", "n_freckles"))


@dataclass(frozen=True)
class Traits:
    """Identity traits for a block of images, one row per image: colours (B, 3), sizes in canvas pixels (B,).

    Lengths are relative to the eye line (ey) and the face centre unless said otherwise."""

    skin: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    lip: np.ndarray
    brow: np.ndarray
    style: np.ndarray  # index into STYLES
    beard: np.ndarray  # index into BEARDS
    R: np.ndarray  # half width of the face
    depth: np.ndarray  # head depth / R
    top_w: np.ndarray  # cranium half width
    top_h: np.ndarray  # cranium height above the temples
    chin: np.ndarray
    gonion: np.ndarray  # jaw angle, below the eyes
    jaw_w: np.ndarray
    jaw_q: np.ndarray  # jaw curve exponent: square or pointed
    es: np.ndarray  # half the eye spacing
    ew: np.ndarray  # eye half width
    eye_open: np.ndarray
    eye_tilt: np.ndarray
    iris_r: np.ndarray
    lash: np.ndarray
    brow_gap: np.ndarray
    brow_t: np.ndarray
    brow_arch: np.ndarray
    brow_len: np.ndarray
    nose_y: np.ndarray
    nose_w: np.ndarray
    nose_dz: np.ndarray  # how far the nose sticks out, / R
    mouth_y: np.ndarray
    mouth_w: np.ndarray
    lip_up: np.ndarray
    lip_lo: np.ndarray
    hairline: np.ndarray
    part: np.ndarray
    volume: np.ndarray
    ear_h: np.ndarray
    ear_w: np.ndarray
    ear_y: np.ndarray
    blush: np.ndarray
    mole: np.ndarray
    mole_x: np.ndarray
    mole_y: np.ndarray
    mole_r: np.ndarray
    freckles: list  # per image: (m, 2) freckle offsets (dx / R, dy), or None (~7 % of identities have them)


def _identity_draws(seed: int, idents: list[int]) -> tuple[np.ndarray, list]:
    """Each distinct identity's uniforms and freckles, from its own stream; rows follow `idents`."""
    cache: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    rows, freckles = [], []
    for ident in idents:
        if ident not in cache:
            rng = np.random.default_rng([seed, 1, int(ident)])
            u = rng.random(_N_UNIFORMS)
            fr = None
            if u[_TONE] ** 1.15 < 0.35 and u[_FRECKLES] < 0.18:
                m = 15 + int(25 * u[_N_FRECKLES])
                fr = np.stack([rng.normal(0.0, 0.35, m), rng.normal(14.0, 6.0, m)], -1)
            cache[ident] = (u, fr)
        rows.append(cache[ident][0])
        freckles.append(cache[ident][1])
    return np.array(rows), freckles


def _skin_color(u: IdentityUniforms, tone: np.ndarray) -> np.ndarray:
    """Interpolate the skin palette by tone, then shift towards red or yellow."""
    k = tone * (len(SKIN) - 1)
    j = np.minimum(k.astype(int), len(SKIN) - 2)
    sk = np.array(SKIN, np.float64)
    skin = sk[j] + (sk[j + 1] - sk[j]) * column(k - j)
    red, yel = (u.red - 0.5) * 24, (u.yel - 0.5) * 20
    skin += np.stack([red, yel * 0.6, -red * 0.6 - yel], -1)
    return np.clip(skin, 20.0, 255.0)


def _lip_color(u: IdentityUniforms, skin: np.ndarray, beard: np.ndarray) -> np.ndarray:
    """Lips from the skin, with lipstick on some beardless faces."""
    lip = skin * (0.86, 0.62, 0.64) + (18.0, 2.0, 8.0)
    stick = np.array(_LIPSTICK, np.float64)[(u.lipstick_c * len(_LIPSTICK)).astype(int)]
    wear = ((beard == 0) & (u.lipstick < 0.18)) * (0.5 + 0.4 * u.lipstick_a)
    return lip + (stick - lip) * column(wear)


def _brow_color(hair: np.ndarray) -> np.ndarray:
    """Brows darker than the hair; dyed blue / purple hair keeps natural brows."""
    brow = np.where(column(hair[:, 0] < 170), hair * 0.75, hair * 0.55)
    dyed = (hair[:, 2] > 120) & (hair[:, 0] < 120)
    return np.where(column(dyed), np.array([50.0, 36.0, 28.0]), brow)


def _proportions(u: IdentityUniforms) -> dict[str, np.ndarray]:
    """Face shape and feature sizes in canvas pixels, from the uniforms."""
    R = 35.5 + 6.5 * u.R
    return dict(
        R=R,
        depth=0.78 + 0.17 * u.depth,
        top_w=R * (1.0 + 0.08 * u.top_w),
        top_h=52 + 8 * u.top_h,
        chin=52 + 10 * u.chin,
        gonion=17 + 13 * u.gonion,
        jaw_w=0.8 + 0.16 * u.jaw_w,
        jaw_q=0.55 + 0.5 * u.jaw_q,
        es=16.0 + 3.5 * u.es,
        ew=6.6 + 1.7 * u.ew,
        eye_open=0.42 + 0.2 * u.eye_open,
        eye_tilt=-0.06 + 0.16 * u.eye_tilt,
        iris_r=0.44 + 0.08 * u.iris_r,
        lash=u.lash,
        brow_gap=8.5 + 4.0 * u.brow_gap,
        brow_t=1.6 + 2.4 * u.brow_t,
        brow_arch=0.5 + 3.2 * u.brow_arch,
        brow_len=1.05 + 0.45 * u.brow_len,
        nose_y=17.5 + 5.0 * u.nose_y,
        nose_w=7.0 + 3.5 * u.nose_w,
        nose_dz=0.22 + 0.14 * u.nose_dz,
        mouth_y=37.5 + 5.0 * u.mouth_y,
        mouth_w=12.5 + 4.5 * u.mouth_w,
        lip_up=1.6 + 2.2 * u.lip_up,
        lip_lo=2.6 + 3.0 * u.lip_lo,
        hairline=27 + 13 * u.hairline,
        part=-1 + 2 * u.part,
        volume=u.volume,
        ear_h=8.5 + 4.0 * u.ear_h,
        ear_w=3.8 + 2.4 * u.ear_w,
        ear_y=7.0 + 6.0 * u.ear_y,
        blush=u.blush,
        mole=u.mole < 0.25,
        mole_x=(u.mole_x - 0.5) * 1.6 * R,
        mole_y=-8 + 56 * u.mole_y,
        mole_r=0.6 + 0.7 * u.mole_r,
    )


def identity_traits(seed: int, idents: list[int]) -> Traits:
    """Identity traits for a block of images, from one identity-seeded stream each, so every image agrees."""
    rows, freckles = _identity_draws(seed, idents)
    u = IdentityUniforms(*rows.T)
    tone = u.tone**1.15
    skin = _skin_color(u, tone)
    dark = tone > 0.55
    hair = np.array(_HAIR, np.float64)[
        np.where(dark, weighted_choice(u.hair, _HAIR_W_DARK), weighted_choice(u.hair, _HAIR_W))
    ]
    iris = np.array(_EYES, np.float64)[
        np.where(dark, weighted_choice(u.iris, _EYES_W_DARK), weighted_choice(u.iris, _EYES_W))
    ]
    style = weighted_choice(u.style, _STYLES_W)
    may_beard = ~np.isin(style, (LONG, BANGS, BUN)) | (u.beard_ok < 0.1)
    beard = np.where(may_beard, weighted_choice(u.beard, _BEARDS_W), 0)
    return Traits(
        skin=skin,
        hair=hair,
        iris=iris,
        lip=_lip_color(u, skin, beard),
        brow=_brow_color(hair),
        style=style,
        beard=beard,
        freckles=freckles,
        **_proportions(u),
    )
