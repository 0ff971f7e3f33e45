"""Is a YuNet detection a face? Its landmark geometry against the ArcFace template.

A score alone lets garbage through: the issue saw a dog's face at 0.86 and a 141 x 365 box at 0.80.
A face's five landmarks have the template's proportions up to head pose and expression; each
tolerance below is the template's figure widened by a stated pose or expression range, not fitted to
photos. Measured in the face's own frame (u: image-left eye to image-right eye, v: u turned 90
degrees towards the mouth), so an in-plane roll changes nothing. What it catches: boxes and landmark
sets no face has. What it cannot: YuNet draws face-shaped landmarks on almost anything it fires on
(on scikit-image's cat, cup, moon, motorcycles, at any score and orientation, every detection passed),
and an upside-down face's landmarks, labelled as if upright, are a face's too (see `align.find`).

- the mouth is below the eyes in the photo as detected (the eye-to-mouth line points downwards),
  and the landmarks are not mirrored (mouth centre on the v side of the eye line, mouth corners in
  the eyes' left-to-right order);
- the nose tip lies between eye line and mouth line: the template puts it at 0.50 of the way; a
  nose tip standing ~0.6 eye-to-mouth distances in front of the face moves by 0.6 sin(30) = 0.3 at
  30 degrees of pitch: [0.2, 0.8];
- eye-to-mouth distance / inter-ocular distance: 1.154 in the template; yaw shortens the
  inter-ocular distance by cos(yaw), pitch the eye-to-mouth one by cos(pitch), and faces differ by
  ~10 %: 1.154 cos(50) / 1.1 = 0.67 .. 1.154 * 1.1 / cos(75) = 4.90 (yaw up to 75 degrees: YuNet
  still finds near-profile faces, and squeezes their eyes together; pitch up to 50);
- mouth width / inter-ocular distance: 0.828 in the template; expression (a wide smile, pursed lips)
  changes it by up to half: 0.41 .. 1.24;
- the box: YuNet's box height is 2.78 eye-to-mouth distances on template-aligned faces (box w / h
  0.79); the eye-to-mouth distance shrinks by cos(pitch) at most to 0.64 (50 degrees), so the box
  height in eye-to-mouth distances must be within [2.78 / 2, 2.78 * 2 / 0.64] (factor 2 for box
  fitting), and the box's aspect w / h within [0.79 / 1.6, 0.79 * 1.6] = [0.49, 1.26] (a head's
  width is its height times 0.7 - 0.9 at any yaw; 1.6 is slack for hair and fitting). A 141 x 365
  box (0.39) is no face; YuNet's boxes on faces squeezed 2.5 - 3 times are 0.46 - 0.54.
"""

from __future__ import annotations

import numpy as np

from ..synth.spec import TEMPLATE

_T = np.asarray(TEMPLATE, np.float64)
#: Template figures (pixels of the 112 x 112 crop).
T_IOD = float(np.linalg.norm(_T[1] - _T[0]))  # 35.24
T_EYE_MOUTH = float(np.linalg.norm(_T[3:].mean(0) - _T[:2].mean(0)))  # 40.67
T_MOUTH = float(np.linalg.norm(_T[4] - _T[3]))  # 29.18
T_NOSE = float((_T[2] - _T[:2].mean(0)) @ (_T[3:].mean(0) - _T[:2].mean(0)) / T_EYE_MOUTH**2)  # 0.495

#: YuNet's box on template-aligned faces, in eye-to-mouth distances (height) and as w / h: medians over
#: 31 faces (scikit-image's two real photos, 29 synthetic ones) aligned onto a 448 x 448 canvas at twice
#: the template's scale; 5 - 95 %: height 2.54 - 3.13, aspect 0.72 - 0.86 (tests/test_align_garbage.py).
BOX_HEIGHT = 2.78
BOX_ASPECT = 0.79

_COS = {a: float(np.cos(np.radians(a))) for a in (50, 75)}
NOSE_RANGE = (T_NOSE - 0.3, T_NOSE + 0.3)  # 0.19 .. 0.79
RATIO_RANGE = (T_EYE_MOUTH / T_IOD * _COS[50] / 1.1, T_EYE_MOUTH / T_IOD * 1.1 / _COS[75])  # 0.67 .. 4.91
MOUTH_RANGE = (T_MOUTH / T_IOD * 0.5, T_MOUTH / T_IOD * 1.5)  # 0.41 .. 1.24
HEIGHT_RANGE = (BOX_HEIGHT / 2, BOX_HEIGHT * 2 / _COS[50])  # 1.39 .. 8.65
ASPECT_RANGE = (BOX_ASPECT / 1.6, BOX_ASPECT * 1.6)  # 0.49 .. 1.26


def geometry(box: tuple[float, float, float, float], landmarks: np.ndarray) -> dict[str, float]:
    """The figures `implausible` tests: in the face's frame, so they do not depend on roll."""
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    eyes, mouth = lm[:2].mean(0), lm[3:].mean(0)
    iod = float(np.linalg.norm(lm[1] - lm[0]))
    u = (lm[1] - lm[0]) / iod if iod > 0 else np.array([1.0, 0.0])
    v = np.array([-u[1], u[0]])  # u turned towards +y: "down" for an upright face
    down = mouth - eyes
    d = float(down @ v)  # eye-to-mouth distance along the face's own down axis
    dist = float(np.linalg.norm(down))
    return {
        "mouth_below": float(down[1]),  # > 0: the mouth is lower in the photo than the eyes
        "eye_mouth": d,
        "iod": iod,
        "nose": float((lm[2] - eyes) @ down / dist**2) if dist > 0 else float("nan"),
        "mouth_order": float((lm[4] - lm[3]) @ u),
        "ratio": dist / iod if iod > 0 else float("inf"),
        "mouth": float(np.linalg.norm(lm[4] - lm[3])) / iod if iod > 0 else float("inf"),
        "height": float(box[3]) / dist if dist > 0 else float("inf"),
        "aspect": float(box[2]) / float(box[3]) if box[3] > 0 else float("inf"),
    }


#: (reason, geometry key, allowed range), tested in this order after the sign checks.
RANGES = (
    ("nose not between eyes and mouth", "nose", NOSE_RANGE),
    ("eye-mouth / eye distance", "ratio", RATIO_RANGE),
    ("mouth / eye distance", "mouth", MOUTH_RANGE),
    ("box aspect", "aspect", ASPECT_RANGE),
    ("box height / eye-mouth distance", "height", HEIGHT_RANGE),
)


def implausible(box: tuple[float, float, float, float], landmarks: np.ndarray) -> str:
    """'' for a face-like detection, else the first failed check's name (a CSV reason; no figures, so
    reasons can be counted: `geometry` gives the figure)."""
    g = geometry(box, landmarks)
    if not np.isfinite(list(g.values())).all() or g["iod"] <= 0:
        return "landmarks degenerate"
    if g["mouth_below"] <= 0:
        return "mouth not below eyes"
    if g["eye_mouth"] <= 0 or g["mouth_order"] <= 0:
        return "landmarks mirrored"
    for reason, key, (lo, hi) in RANGES:
        if not lo <= g[key] <= hi:
            return reason
    return ""


def judge(box: tuple[float, float, float, float], landmarks: np.ndarray) -> tuple[str, float]:
    """(`implausible`'s reason, the measured figure it is about: nan for '' and the sign checks)."""
    reason = implausible(box, landmarks)
    key = {r: k for r, k, _ in RANGES}.get(reason)
    return reason, geometry(box, landmarks)[key] if key else float("nan")
