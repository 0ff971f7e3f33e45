"""Face detection (YuNet, through `cv2.FaceDetectorYN`) and 5-point alignment onto the ArcFace template.

A face net such as SFace was trained on crops whose eyes, nose tip and mouth corners sit at
fixed points of a 112 x 112 square (`TEMPLATE`); a raw photo squashed to that size is not such
a crop. The alignment is a similarity (rotation, uniform scale, translation) fitted from the
detector's five landmarks to the template, then one `warpAffine`.

The math is pure functions (`similarity`, `align`, `landmarks_error`); `Detector` wraps YuNet
with one `cv2.FaceDetectorYN` per thread (the OpenCV object keeps its input size and buffers and
is not thread-safe). `find` is what the align stage keeps of a photo: detections whose landmark
geometry is a face's (`plausible`), tried in four orientations, the same face counted once, ranked.

Orientation: YuNet fires on upside-down and sideways faces too (0.84 - 0.85 on scikit-image's
astronaut turned 90, 180 or 270 degrees, against 0.93 upright), with landmarks labelled as if the
face were upright, so the crop comes out upside down, and such landmarks pass every geometry check
(they *are* a face's proportions). So each photo is detected as given and turned 90, 180 and 270
degrees (`rotations = "always"`), and a face found in several orientations is kept in the one YuNet
is most confident of: it was trained on upright faces. Landmarks are mapped back to the photo as
given, where the similarity fit turns the crop upright.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import UserError
from ..synth.spec import TEMPLATE
from .plausible import judge

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
    rotation: int = 0  # degrees the photo was turned clockwise when YuNet found it
    reason: str = ""  # why its landmark geometry is no face's ('' : plausible), judged as found
    figure: float = float("nan")  # the measured figure `reason` is about (engine.plausible)

    @property
    def area(self) -> float:
        return float(self.box[2] * self.box[3])


ROTATION_MODES = ("always", "fallback", "never")
#: cv2.rotate's code for turning a photo clockwise by 90, 180, 270 degrees.
_TURN = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def unturn(points: np.ndarray, rotation: int, w: int, h: int) -> np.ndarray:
    """(x, y) pixel positions in a `w` x `h` photo turned clockwise by `rotation` -> the photo as given."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    x, y = p[:, 0], p[:, 1]
    if rotation == 90:  # (x, y) -> (h - 1 - y, x) when turning
        return np.stack([y, h - 1 - x], 1)
    if rotation == 180:
        return np.stack([w - 1 - x, h - 1 - y], 1)
    if rotation == 270:  # (x, y) -> (y, w - 1 - x) when turning
        return np.stack([w - 1 - y, x], 1)
    return p.copy()


@dataclass(frozen=True)
class DetectorSettings:
    """The pipeline's [align] keys that decide the detections."""

    score_threshold: float = 0.7
    nms_threshold: float = 0.3
    max_side: int = 640
    top_k: int = 5000
    rotations: str = "always"  # always | fallback (only when nothing plausible as given) | never

    def __post_init__(self) -> None:
        if self.rotations not in ROTATION_MODES:
            raise UserError(f"align.rotations = {self.rotations!r}: {' | '.join(ROTATION_MODES)}")
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

    def detect(self, image: np.ndarray, rotations: tuple[int, ...] = (0,)) -> list[Face]:
        """Faces in a BGR uint8 photo turned clockwise by each of `rotations` (degrees), highest score
        first; boxes and landmarks in the photo as given, `reason` judged in the turned photo."""
        h, w = image.shape[:2]
        scale = min(1.0, self.settings.max_side / max(h, w))
        small = image
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        sh, sw = small.shape[:2]
        sx, sy = w / sw, h / sh
        det = self._get()
        faces = []
        for rot in rotations:
            turned = small if rot == 0 else cv2.rotate(small, _TURN[rot])
            det.setInputSize((turned.shape[1], turned.shape[0]))
            _, rows = det.detect(turned)
            for r in [] if rows is None else rows:
                box, lm = tuple(float(v) for v in r[:4]), np.asarray(r[4:14], np.float64).reshape(5, 2)
                reason, fig = judge(box, lm)
                corners = unturn([(box[0], box[1]), (box[0] + box[2] - 1, box[1] + box[3] - 1)], rot, sw, sh)
                x0, y0 = corners.min(0)
                x1, y1 = corners.max(0) + 1
                lm = unturn(lm, rot, sw, sh) * (sx, sy)
                box = (float(x0 * sx), float(y0 * sy), float((x1 - x0) * sx), float((y1 - y0) * sy))
                faces.append(Face(box, lm, float(r[14]), rot, reason, fig))
        return sorted(faces, key=lambda f: -f.score)


#: `largest` chooses among the faces scoring within this of the most confident one.
SCORE_MARGIN = 0.1


def pick(faces: list[Face], which: str) -> list[Face]:
    """`all`: every face, largest first. `largest`: the photo's subject: the largest box among the faces
    YuNet is about as sure of as its best (score within `SCORE_MARGIN`).

    Why not the largest box outright: a doubtful large detection (a 141 x 365 strip at 0.80) then beats
    clear faces at 0.92 - 0.94. Why not the best score: a small face in the background at 0.95 would
    beat the subject at 0.90. Clear faces score 0.85 - 0.95 and a detection is kept from 0.7: a margin
    of 0.1 keeps any clear face in the running and no doubtful one against a clear one."""
    ordered = sorted(faces, key=lambda f: -f.area)
    if which == "largest" and faces:
        best = max(f.score for f in faces)
        return [next(f for f in ordered if f.score >= best - SCORE_MARGIN)]
    return ordered


def overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def find(detector: Detector, image: np.ndarray, which: str) -> tuple[list[Face], list[Face]]:
    """(the faces kept, as `pick` orders them; the detections rejected by their geometry).

    A face found in several orientations (boxes overlapping by more than the NMS threshold) is kept
    once, plausible before implausible, then in its most confident orientation; a rejected
    detection of a face kept in another orientation is not reported."""
    mode = detector.settings.rotations
    found = detector.detect(image, (0, 90, 180, 270) if mode == "always" else (0,))
    if mode == "fallback" and not any(not f.reason for f in found):
        found += detector.detect(image, (90, 180, 270))
    kept: list[Face] = []
    for f in sorted(found, key=lambda f: (bool(f.reason), -f.score)):
        if all(overlap(f.box, k.box) <= detector.settings.nms_threshold for k in kept):
            kept.append(f)
    return pick([f for f in kept if not f.reason], which), [f for f in kept if f.reason]
