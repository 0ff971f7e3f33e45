"""Face detection (YuNet, through `cv2.FaceDetectorYN`) and 5-point alignment onto the ArcFace template.

A face net such as SFace was trained on crops whose eyes, nose tip and mouth corners sit at
fixed points of a 112 x 112 square (`TEMPLATE`); a raw photo squashed to that size is not such
a crop. The alignment is a similarity (rotation, uniform scale, translation) fitted from the
detector's five landmarks to the template, then one `warpAffine`.

The math is pure functions (`similarity`, `align`, `landmarks_error`); `Detector` wraps YuNet
with one `cv2.FaceDetectorYN` per thread (the OpenCV object keeps its input size and buffers and
is not thread-safe).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import UserError
from ..synth.spec import TEMPLATE

#: The side of the template's square.
TEMPLATE_SIZE = 112
#: Landmark order, YuNet's and the template's: image-left eye, image-right eye, nose tip,
#: image-left mouth corner, image-right mouth corner (YuNet calls the first the *right* eye: the person's).
LANDMARKS = ("eye_l", "eye_r", "nose", "mouth_l", "mouth_r")


def template(size: int = TEMPLATE_SIZE) -> np.ndarray:
    """The 5 x 2 ArcFace template for a `size` x `size` crop (scaled from 112)."""
    return np.asarray(TEMPLATE, np.float64) * (size / TEMPLATE_SIZE)


def similarity(landmarks: np.ndarray, size: int = TEMPLATE_SIZE) -> np.ndarray:
    """The 2 x 3 similarity mapping five (x, y) landmarks onto the template (least median of squares).

    Raises ValueError for landmarks that are not 5 finite points or from which no similarity
    follows (all points on one spot).
    """
    src = np.asarray(landmarks, np.float64).reshape(-1, 2) if np.size(landmarks) == 10 else None
    if src is None or not np.isfinite(src).all():
        raise ValueError(f"landmarks should be 5 finite (x, y) points, got shape {np.shape(landmarks)}")
    if np.ptp(src, axis=0).max() < 1e-6:
        raise ValueError("landmarks are all on one point; no similarity maps them onto the template")
    m, _ = cv2.estimateAffinePartial2D(src, template(size), method=cv2.LMEDS)
    if m is None:
        raise ValueError("no similarity maps these landmarks onto the template")
    return m


def align(image: np.ndarray, landmarks: np.ndarray, size: int = TEMPLATE_SIZE) -> np.ndarray:
    """A `size` x `size` crop of `image` with the five landmarks moved onto the template."""
    return cv2.warpAffine(image, similarity(landmarks, size), (size, size), flags=cv2.INTER_LINEAR)


def landmarks_error(landmarks: np.ndarray, m: np.ndarray, size: int = TEMPLATE_SIZE) -> float:
    """Largest distance (pixels of the crop) between the mapped landmarks and the template."""
    src = np.asarray(landmarks, np.float64).reshape(5, 2)
    mapped = src @ m[:, :2].T + m[:, 2]
    return float(np.linalg.norm(mapped - template(size), axis=1).max())


@dataclass(frozen=True)
class Face:
    """One detection, in the full-resolution photo's pixels."""

    box: tuple[float, float, float, float]  # x, y, w, h
    landmarks: np.ndarray  # 5 x 2, in LANDMARKS order
    score: float

    @property
    def area(self) -> float:
        return float(self.box[2] * self.box[3])


@dataclass(frozen=True)
class DetectorSettings:
    """The pipeline's [align] keys that decide the detections."""

    score_threshold: float = 0.7
    nms_threshold: float = 0.3
    max_side: int = 640
    top_k: int = 5000

    def __post_init__(self) -> None:
        for name in ("score_threshold", "nms_threshold"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise UserError(f"align.{name} = {v} must be in 0 .. 1")
        if self.max_side < 32:
            raise UserError(f"align.max_side = {self.max_side} must be at least 32 (pixels)")


class Detector:
    """YuNet over whole photos: resized so the longer side is at most `max_side`, boxes and landmarks
    mapped back to full resolution. Safe to call from several threads (one OpenCV detector each)."""

    def __init__(self, model: str | Path, settings: DetectorSettings = DetectorSettings()) -> None:
        self.model = str(model)
        self.settings = settings
        self._local = threading.local()
        self._get()  # fail now, in the caller's thread, if OpenCV cannot load the model

    def _get(self):
        det = getattr(self._local, "det", None)
        if det is None:
            s = self.settings
            level = cv2.utils.logging.getLogLevel()
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # OpenCV 5 warns of its targets
            try:
                det = cv2.FaceDetectorYN.create(self.model, "", (320, 320), s.score_threshold, s.nms_threshold, s.top_k)
            except cv2.error as e:
                raise UserError(
                    f"OpenCV {cv2.__version__} cannot load the face detector {self.model} "
                    f"({' '.join(str(e).split())[:160]}); run `introspect model yunet`"
                ) from None
            finally:
                cv2.utils.logging.setLogLevel(level)
            self._local.det = det
        return det

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in a BGR uint8 photo, highest score first."""
        h, w = image.shape[:2]
        scale = min(1.0, self.settings.max_side / max(h, w))
        small = image
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        det = self._get()
        det.setInputSize((small.shape[1], small.shape[0]))
        _, rows = det.detect(small)
        if rows is None:
            return []
        sx, sy = w / small.shape[1], h / small.shape[0]
        faces = []
        for r in rows:
            box = (float(r[0] * sx), float(r[1] * sy), float(r[2] * sx), float(r[3] * sy))
            lm = np.asarray(r[4:14], np.float64).reshape(5, 2) * (sx, sy)
            faces.append(Face(box, lm, float(r[14])))
        return sorted(faces, key=lambda f: -f.score)


def pick(faces: list[Face], which: str) -> list[Face]:
    """`largest`: the one face with the largest box; `all`: every face, largest first."""
    ordered = sorted(faces, key=lambda f: -f.area)
    return ordered[:1] if which == "largest" else ordered
