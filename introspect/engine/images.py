"""Image input: decode, convert and normalize, never raising, hanging or ballooning on a bad file.

Every image is read as bytes and decoded with OpenCV (the reference's `cv2.imread`), so
grayscale, RGBA, CMYK, 16-bit PNGs and other sizes are converted the same way; what cannot be
used comes back as a short reason instead of an exception, so a long job records it and goes on.

Hostile lists and files are refused before they cost anything (`DecodeLimits`):

- the path is checked first: empty, containing NUL, missing, a symlink loop, unreadable;
- `os.stat` must say a regular file *before* it is opened (a FIFO would block the open, a
  device such as /dev/zero never ends), then it is opened non-blocking, checked again with
  `fstat`, and at most `max_bytes + 1` bytes are ever read;
- the header's width x height is parsed from those bytes (JPEG SOFn, PNG IHDR, GIF, BMP,
  WebP VP8/VP8L/VP8X, TIFF and BigTIFF, PNM, Sun raster) and over `max_pixels` is refused
  without decoding, so a 48 KB PNG declaring 20000 x 20000 never allocates gigabytes;
- formats not parsed here (AVIF, JPEG 2000, HDR, PFM, PAM) rely on OpenCV's own check,
  `OPENCV_IO_MAX_IMAGE_PIXELS`, which OpenCV reads once when cv2 is loaded: it defaults here to
  `MAX_PIXELS` when this module is imported before cv2 (export it to raise it); any `cv2.error`
  or `MemoryError` while decoding is a reason too.

So a decode's peak memory is bounded by about `max_pixels` x 3 bytes (x 2 for 16-bit) per thread.
"""

from __future__ import annotations

import functools
import os
import re
import stat
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

#: Largest width x height decoded (a 50 MP photo is generous; decoded it is 150 MB of BGR).
MAX_PIXELS = 50_000_000
#: Largest file read (bytes); a bigger one is refused from its size, before it is opened.
MAX_BYTES = 64 << 20

# OpenCV reads this once, when the library loads; its own default is 1 << 30 pixels (3 GB of BGR).
# It is the backstop for the formats whose header is not parsed below.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))

import cv2  # noqa: E402  (after the limit above)
import numpy as np  # noqa: E402
import onnx  # noqa: E402

from ..errors import UserError  # noqa: E402
from . import graph  # noqa: E402


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


@dataclass(frozen=True)
class DecodeLimits:
    """What one image may cost: its file's size and its decoded width x height.

    Pass them on as `read_batch(paths, size, out, **limits.as_dict())`.
    """

    max_pixels: int = MAX_PIXELS
    max_bytes: int = MAX_BYTES

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> DecodeLimits:
        """Raise ValueError unless both limits are positive integers."""
        for name in ("max_pixels", "max_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        return self

    def as_dict(self) -> dict:
        return asdict(self)


#: How far from the end a JPEG's end marker is looked for (cameras and tools append metadata).
EOI_WINDOW = 1 << 16


def is_truncated(data: bytes) -> bool:
    """A JPEG cut short still decodes (grey-filled) in libjpeg; its missing end marker tells.

    In the entropy-coded data 0xFF is always followed by 0x00 or a restart marker, so FF D9
    near the end is the end of image, whatever follows it.
    """
    return data[:2] == b"\xff\xd8" and data.rfind(b"\xff\xd9", max(2, len(data) - EOI_WINDOW)) < 0


# --------------------------------------------------------------------------- header sizes

# Start-of-frame markers (all but DHT C4, JPG C8, DAC CC), which carry the frame's height and width.
_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
_PNM = re.compile(rb"P[1-6](?:\s|#[^\r\n]*)+(\d+)(?:\s|#[^\r\n]*)+(\d+)")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the marker segments to the first SOFn, as libjpeg does (garbage before a marker skipped)."""
    n, i = len(data), 2
    while True:
        i = data.find(b"\xff", i)
        if i < 0:
            return None
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i + 2 >= n:
            return None
        m = data[i]
        i += 1
        if m == 0x00 or m == 0x01 or 0xD0 <= m <= 0xD8:  # not a marker, or one without a length
            continue
        if m == 0xD9 or m == 0xDA:  # end of image, or a scan before any frame header
            return None
        if m in _SOF:
            if i + 7 > n:
                return None
            return (data[i + 5] << 8) | data[i + 6], (data[i + 3] << 8) | data[i + 4]
        i += (data[i] << 8) | data[i + 1]


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """ImageWidth (256) and ImageLength (257) of the first IFD, TIFF or BigTIFF."""
    e = "<" if data[:2] == b"II" else ">"
    version = struct.unpack_from(e + "H", data, 2)[0]
    if version == 42:
        off = struct.unpack_from(e + "I", data, 4)[0]
        count, off, step, vat = struct.unpack_from(e + "H", data, off)[0], off + 2, 12, 8
    elif version == 43:
        off = struct.unpack_from(e + "Q", data, 8)[0]
        count, off, step, vat = struct.unpack_from(e + "Q", data, off)[0], off + 8, 20, 12
    else:
        return None
    fmt = {3: e + "H", 4: e + "I", 16: e + "Q"}  # SHORT, LONG, LONG8
    dims: dict[int, int] = {}
    for k in range(min(count, 1024)):
        tag, typ = struct.unpack_from(e + "HH", data, off + k * step)
        if tag in (256, 257) and typ in fmt:
            dims[tag] = struct.unpack_from(fmt[typ], data, off + k * step + vat)[0]
    return (dims[256], dims[257]) if len(dims) == 2 else None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a file's header, without decoding; None for a format not parsed here.

    JPEG, PNG, GIF, BMP, WebP, TIFF (and BigTIFF), PNM (P1-P6), Sun raster. Only reads
    `data`: a malformed header is None, never an exception.
    """
    try:
        head = data[:4]
        if head[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if head == b"\x89PNG":
            return struct.unpack_from(">II", data, 16) if data[12:16] == b"IHDR" else None
        if head == b"GIF8":  # the logical screen (OpenCV refuses frames outside it)
            w, h, flags = struct.unpack_from("<HHB", data, 6)
            block = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global colour table
            return (w, h) if data[block] in (0x21, 0x2C, 0x3B) else None  # a GIF goes on with a block
        if head[:2] == b"BM":
            if struct.unpack_from("<I", data, 14)[0] == 12:  # OS/2 BITMAPCOREHEADER
                return struct.unpack_from("<HH", data, 18)
            w, h = struct.unpack_from("<ii", data, 18)
            return abs(w), abs(h)  # a negative height is top-down
        if head == b"RIFF" and data[8:12] == b"WEBP":
            chunk = data[12:16]
            if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
                w, h = struct.unpack_from("<HH", data, 26)
                return w & 0x3FFF, h & 0x3FFF
            if chunk == b"VP8L" and data[20] == 0x2F:
                bits = struct.unpack_from("<I", data, 21)[0]
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            if chunk == b"VP8X":
                return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
            return None
        if head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return _tiff_size(data)
        if head == b"\x59\xa6\x6a\x95":  # Sun raster
            return struct.unpack_from(">II", data, 4)
        if head[:1] == b"P":
            m = _PNM.match(data, 0, 4096)
            return (int(m[1]), int(m[2])) if m else None
    except (struct.error, IndexError, ValueError, OverflowError):
        return None
    return None


# --------------------------------------------------------------------------- reading

_OPEN = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def _megs(n: int, unit: str, scale: int, units: str) -> str:
    """64 MB, 50 MP; an odd limit exactly: 1,000 bytes, 12,345 pixels."""
    return f"{n // scale} {unit}" if n % scale == 0 else f"{n:,} {units}"


def _not_regular(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "is a directory"
    for test, kind in ((stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "device"), (stat.S_ISBLK, "device")):
        if test(mode):
            return f"not a regular file ({kind})"
    return "not a regular file"


def read_bytes(path: str | bytes | os.PathLike, max_bytes: int = MAX_BYTES) -> tuple[bytes | None, str]:
    """A file's bytes, or (None, reason): only a regular file, never opened otherwise, never over `max_bytes`."""
    p = os.fspath(path)
    if not p:
        return None, "empty line in list"
    if ("\0" if isinstance(p, str) else b"\0") in p:
        return None, "path contains NUL"
    too_big = f"file larger than {_megs(max_bytes, 'MB', 1 << 20, 'bytes')}"
    try:
        st = os.stat(p)  # before opening: opening a FIFO blocks, reading /dev/zero never ends
        if not stat.S_ISREG(st.st_mode):
            return None, _not_regular(st.st_mode)
        if st.st_size > max_bytes:
            return None, too_big
        fd = os.open(p, _OPEN)
        try:
            st = os.fstat(fd)  # the file opened, should it have been swapped since
            if not stat.S_ISREG(st.st_mode):
                return None, _not_regular(st.st_mode)
            data = chunk = os.read(fd, min(st.st_size, max_bytes) + 1)
            parts, total = [data], len(data)
            while chunk and total <= max_bytes:  # to the end (it may have grown), never past max_bytes + 1
                chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
                parts.append(chunk)
                total += len(chunk)
            if len(parts) > 2:
                data = b"".join(parts)
        finally:
            os.close(fd)
    except FileNotFoundError:
        return None, "missing"
    except ValueError:  # a name the file system cannot encode
        return None, "invalid path"
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}"
    if total > max_bytes:
        return None, too_big
    if not data:
        return None, "empty file"
    return data, ""


def decode(data: bytes, size: tuple[int, int] | None, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray | None, str]:
    """Bytes -> H x W x 3 uint8 BGR at `size` (None: as stored), or (None, reason).

    An image over `max_pixels` is never decoded."""
    wh = image_size(data)
    if wh is not None and wh[0] * wh[1] > max_pixels:
        return None, f"image {wh[0]} x {wh[1]} exceeds {_megs(max_pixels, 'MP', 1_000_000, 'pixels')}"
    if is_truncated(data):
        return None, "truncated jpeg"
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            return None, "not a decodable image"
        if img.shape[0] * img.shape[1] > max_pixels:  # a header the parser did not read lied
            return None, f"image {img.shape[1]} x {img.shape[0]} exceeds {_megs(max_pixels, 'MP', 1_000_000, 'pixels')}"
        if size is not None and img.shape[:2] != tuple(size):
            img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    except cv2.error as e:
        if "CV_IO_MAX_IMAGE" in str(e):
            return None, "image exceeds OpenCV's OPENCV_IO_MAX_IMAGE_PIXELS"
        return None, f"decoder error: {(getattr(e, 'err', '') or str(e)).strip()[:100]}"
    except MemoryError:
        return None, "out of memory decoding"
    return img, ""


def _check(max_pixels: int, max_bytes: int) -> None:
    if max_pixels < 1 or max_bytes < 1:
        raise ValueError(f"max_pixels and max_bytes must be positive, not {max_pixels!r}, {max_bytes!r}")


def read_image(
    path: str | os.PathLike, size: tuple[int, int], *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES
) -> tuple[np.ndarray | None, str]:
    """One image as H x W x 3 uint8 BGR (OpenCV's order) at `size`, or (None, reason).

    A bad path or file is a reason, never an exception or a wait (see the module's docstring).
    """
    _check(max_pixels, max_bytes)
    data, reason = read_bytes(path, max_bytes)
    if data is None:
        return None, reason
    return decode(data, size, max_pixels)


def read_batch(
    paths: list[str],
    size: tuple[int, int],
    out: np.ndarray | None = None,
    *,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_BYTES,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode a batch: (the good images, packed, as a view of `out`; ok mask; reasons for the bad).

    Images stay uint8 BGR, N x H x W x 3: the net normalizes them (`graph.take_images`).
    Passing a reused `out` matters: filling fresh multi-MB arrays costs page faults that, in a
    VM, rival the decoding itself. One image's peak memory is bounded by the limits (`DecodeLimits`).
    """
    _check(max_pixels, max_bytes)
    return decode_batch(paths, functools.partial(read_bytes, max_bytes=max_bytes), size, out, max_pixels)


def decode_batch(
    items: list[str],
    read: Callable[[str], tuple[bytes | None, str]],
    size: tuple[int, int],
    out: np.ndarray | None = None,
    max_pixels: int = MAX_PIXELS,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`read_batch` for any source: `read(item)` gives the bytes (or None and a reason), decoded here.

    The same outputs: the good images packed into a view of `out`, the ok mask, the reasons in order.
    """
    _check(max_pixels, 1)
    if out is None:
        out = np.empty((len(items), size[0], size[1], 3), np.uint8)
    ok = np.zeros(len(items), bool)
    reasons = []
    k = 0
    for i, item in enumerate(items):
        data, reason = read(item)
        img = None
        if data is not None:
            img, reason = decode(data, size, max_pixels)
        if img is None:
            reasons.append(reason)
        else:
            out[k] = img
            ok[i] = True
            k += 1
    return out[:k], ok, reasons
