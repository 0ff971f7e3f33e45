"""Image input: decode, convert and normalize, never raising on a bad file.

Every image is read as bytes and decoded with OpenCV (the reference's `cv2.imread`), so
grayscale, RGBA, CMYK, 16-bit PNGs and other sizes are converted the same way; what cannot be
used comes back as a reason instead of an exception, so a long job records it and goes on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import cv2
import numpy as np
import onnx

from ..errors import UserError
from . import graph


@dataclass(frozen=True)
class Preprocess:
    """How pixels become the net's input: resize, channel order, (x - mean) / std, NCHW.

    The reference's `blobFromImages(imgs, 1/127.5, (112, 112), (127.5,) * 3, swapRB=True)` is
    `Preprocess(size=(112, 112), mean=(127.5,) * 3, std=(127.5,) * 3, rgb=True)`.
    """

    size: tuple[int, int] = (112, 112)  # (height, width)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # in the net's channel order
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    rgb: bool = True
    _params: cv2.dnn.Image2BlobParams = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if any(s == 0 for s in self.std):
            raise ValueError("preprocess.std must not contain 0")
        p = cv2.dnn.Image2BlobParams()
        p.scalefactor = tuple(1.0 / float(s) for s in self.std)
        p.size = (int(self.size[1]), int(self.size[0]))  # OpenCV's (width, height)
        p.mean = tuple(float(m) for m in self.mean)
        p.swapRB = bool(self.rgb)
        object.__setattr__(self, "_params", p)

    @classmethod
    def from_config(cls, cfg: dict) -> Preprocess:
        """From the pipeline's [preprocess]; a malformed value is the user's to fix, in one line."""
        for key, n in (("size", 2), ("mean", 3), ("std", 3)):
            v = cfg[key]
            if len(v) != n or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                raise UserError(f"preprocess.{key} = {v!r} should be {n} numbers")
        if any(x == 0 for x in cfg["std"]):
            raise UserError(f"preprocess.std = {cfg['std']!r} must not contain 0")
        if any(x < 1 for x in cfg["size"]):
            raise UserError(f"preprocess.size = {cfg['size']!r} must be positive")
        return cls(tuple(int(x) for x in cfg["size"]), tuple(cfg["mean"]), tuple(cfg["std"]), bool(cfg["rgb"]))

    def in_graph(self, model: onnx.ModelProto, input_name: str) -> onnx.ModelProto:
        """The net taking decoded uint8 images and doing this normalization itself (`graph.take_images`)."""
        return graph.take_images(model, input_name, self.size, self.mean, self.std, self.rgb)

    def as_dict(self) -> dict:
        return {"size": list(self.size), "mean": list(self.mean), "std": list(self.std), "rgb": self.rgb}

    def blob(self, images: np.ndarray) -> np.ndarray:
        """N x H x W x 3 uint8 BGR (OpenCV's order) -> N x 3 x H x W float32 net input.

        OpenCV's own blob code (the reference's `blobFromImages`, with a per-channel scale).
        The stages do this arithmetic in the net instead (`graph.take_images`, the same
        numbers); this is the oracle the tests hold that to, and what merge checks with.
        """
        if len(images) == 0:
            return np.zeros((0, 3, *self.size), np.float32)
        return cv2.dnn.blobFromImagesWithParams(images, self._params)


#: How far from the end a JPEG's end marker is looked for (cameras and tools append metadata).
EOI_WINDOW = 1 << 16


def is_truncated(data: bytes) -> bool:
    """A JPEG cut short still decodes (grey-filled) in libjpeg; its missing end marker tells.

    In the entropy-coded data 0xFF is always followed by 0x00 or a restart marker, so FF D9
    near the end is the end of image, whatever follows it.
    """
    return data[:2] == b"\xff\xd8" and data.find(b"\xff\xd9", max(2, len(data) - EOI_WINDOW)) < 0


def read_image(path: str | os.PathLike, size: tuple[int, int]) -> tuple[np.ndarray | None, str]:
    """One image as H x W x 3 uint8 BGR (OpenCV's order) at `size`, or (None, reason)."""
    if not str(path):
        return None, "empty line in list"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None, "missing"
    except IsADirectoryError:
        return None, "is a directory"
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}"
    if not data:
        return None, "empty file"
    if is_truncated(data):
        return None, "truncated jpeg"
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        return None, "not a decodable image"
    h, w = size
    if img.shape[:2] != (h, w):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    return img, ""


def read_batch(
    paths: list[str], size: tuple[int, int], out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode a batch: (the good images, packed, as a view of `out`; ok mask; reasons for the bad).

    Images stay uint8 BGR, N x H x W x 3: the net normalizes them (`graph.take_images`).
    Passing a reused `out` matters: filling fresh multi-MB arrays costs page faults that, in a
    VM, rival the decoding itself.
    """
    if out is None:
        out = np.empty((len(paths), size[0], size[1], 3), np.uint8)
    ok = np.zeros(len(paths), bool)
    reasons = []
    k = 0
    for i, p in enumerate(paths):
        img, reason = read_image(p, size)
        if img is None:
            reasons.append(reason)
        else:
            out[k] = img
            ok[i] = True
            k += 1
    return out[:k], ok, reasons
