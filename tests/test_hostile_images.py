"""Hostile inputs (issue 12): each is a recorded failure with a short reason, at once, without gigabytes.

Everything is generated here and small: the "3 GB" file is sparse, the bombs are a few KB.
"""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
import threading
import zlib
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pytest

from introspect.engine import images
from introspect.engine.images import MAX_BYTES, MAX_PIXELS, DecodeLimits, image_size, read_batch, read_bytes, read_image

SIZE = (112, 112)
ROOT = Path(__file__).resolve().parents[1]


def texture(h=112, w=112, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (5, 5), 0)


def encode(ext: str, img: np.ndarray, params=()) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


def forged_jpeg(w: int, h: int) -> bytes:
    """A real 112 x 112 JPEG whose frame header (SOF0) claims w x h."""
    data = bytearray(encode(".jpg", texture()))
    i = data.index(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@cache
def png_bomb(w: int = 20000, h: int = 20000) -> bytes:
    """A valid 1-bit grayscale PNG of zeros: 20000 x 20000 compresses to a few tens of KB."""
    row = b"\0" * (1 + (w + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row * 1000) for _ in range(h // 1000)) + z.compress(row * (h % 1000)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """name -> (path, the expected reason, or its start)."""
    d = tmp_path_factory.mktemp("hostile")
    good = encode(".jpg", texture())
    files = {
        "forged.jpg": (forged_jpeg(65000, 65000), "image 65000 x 65000 exceeds 50 MP"),
        "bomb.png": (png_bomb(), "image 20000 x 20000 exceeds 50 MP"),
        "empty.jpg": (b"", "empty file"),
        "truncated.jpg": (good[: len(good) // 2], "truncated jpeg"),
    }
    out = {}
    for name, (data, reason) in files.items():
        (d / name).write_bytes(data)
        out[name] = (str(d / name), reason)
    with open(d / "huge.jpg", "wb") as f:
        f.truncate(3 << 30)  # sparse: no disk used
    out["huge.jpg"] = (str(d / "huge.jpg"), "file larger than 64 MB")
    os.mkfifo(d / "fifo.jpg")
    out["fifo.jpg"] = (str(d / "fifo.jpg"), "not a regular file (fifo)")
    (d / "dir.jpg").mkdir()
    out["dir.jpg"] = (str(d / "dir.jpg"), "is a directory")
    os.symlink(d / "loop_b.jpg", d / "loop_a.jpg")
    os.symlink(d / "loop_a.jpg", d / "loop_b.jpg")
    out["loop_a.jpg"] = (str(d / "loop_a.jpg"), "unreadable: Too many levels of symbolic links")
    out["nul"] = (str(d / "good.jpg") + "\0.jpg", "path contains NUL")
    out["missing.jpg"] = (str(d / "missing.jpg"), "missing")
    if os.path.exists("/dev/zero"):
        out["/dev/zero"] = ("/dev/zero", "not a regular file (device)")
    (d / "good.jpg").write_bytes(good)
    return out


def good_path(hostile) -> str:
    return os.path.join(os.path.dirname(hostile["empty.jpg"][0]), "good.jpg")


def call_with_timeout(fn, *args, timeout=10.0, **kwargs):
    """fn(*args) on a daemon thread: a hang fails the test instead of stalling the suite."""
    box = []
    t = threading.Thread(target=lambda: box.append(fn(*args, **kwargs)), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn.__name__}{args} hung"
    return box[0]


NAMES = [
    "forged.jpg",
    "bomb.png",
    "empty.jpg",
    "truncated.jpg",
    "huge.jpg",
    "fifo.jpg",
    "dir.jpg",
    "loop_a.jpg",
    "nul",
    "missing.jpg",
    "/dev/zero",
]


@pytest.mark.parametrize("name", NAMES)
def test_each_hostile_file_is_a_reason(hostile, name):
    if name not in hostile:
        pytest.skip(f"{name} not on this system")
    path, reason = hostile[name]
    before = peak_rss_mb()
    img, got = call_with_timeout(read_image, path, SIZE)
    assert img is None and got == reason
    assert peak_rss_mb() - before < 200  # a decoded bomb would be gigabytes
    img, got = read_image(good_path(hostile), SIZE)  # and the next image still decodes
    assert got == "" and img.shape == (112, 112, 3)


def test_a_batch_of_all_of_them_goes_on(hostile):
    good = good_path(hostile)
    bad = [hostile[n] for n in NAMES if n in hostile] + [hostile["bomb.png"]] * 8
    paths = [good]
    for p, _ in bad:
        paths += [p, good]
    before = peak_rss_mb()
    imgs, ok, reasons = call_with_timeout(read_batch, paths, SIZE)
    assert peak_rss_mb() - before < 200
    assert ok.tolist() == [True] + [False, True] * len(bad)
    assert reasons == [r for _, r in bad]
    expect = cv2.imread(good)
    assert len(imgs) == len(bad) + 1
    for img in imgs:
        np.testing.assert_array_equal(img, expect)


def test_nul_in_bytes_and_pathlike(hostile):
    assert read_image(os.fsencode(hostile["nul"][0]), SIZE) == (None, "path contains NUL")
    assert read_image(Path(good_path(hostile)), SIZE)[1] == ""


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads a chmod 000 file anyway")
def test_unreadable_file(tmp_path):
    p = tmp_path / "secret.jpg"
    p.write_bytes(encode(".jpg", texture()))
    p.chmod(0)
    try:
        assert read_image(p, SIZE) == (None, "unreadable: Permission denied")
    finally:
        p.chmod(0o600)


def test_the_bomb_is_a_real_png():
    """The builder makes PNGs OpenCV decodes: only the header check stands between it and 1.2 GB."""
    small = png_bomb(200, 300)
    img = cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (300, 200, 3) and not img.any()
    big = png_bomb()
    assert len(big) < 200_000 and image_size(big) == (20000, 20000)


def test_the_forged_jpeg_would_reach_opencv():
    data = forged_jpeg(65000, 65000)
    assert len(data) < 10_000 and image_size(data) == (65000, 65000)
    assert not images.is_truncated(data)  # so only the pixel check refuses it


def test_byte_limit_is_exact_and_reads_are_bounded(tmp_path, monkeypatch):
    data = encode(".jpg", texture())
    p = tmp_path / "a.jpg"
    p.write_bytes(data)
    n = len(data)
    assert read_image(p, SIZE, max_bytes=n)[1] == ""
    assert read_image(p, SIZE, max_bytes=n - 1) == (None, f"file larger than {n - 1:,} bytes")
    # a file larger than stat said (it grew, or a file system that does not know): still bounded
    big = tmp_path / "grown.jpg"
    big.write_bytes(b"\xff" * (3 << 20))
    real_fstat, real_stat = os.fstat, os.stat

    def small(st):
        return os.stat_result((*tuple(st)[:6], 10, *tuple(st)[7:10]))

    monkeypatch.setattr(os, "fstat", lambda fd: small(real_fstat(fd)))
    monkeypatch.setattr(os, "stat", lambda p, **k: small(real_stat(p, **k)))
    reads = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, k: reads.append(k) or real_read(fd, k))
    assert read_bytes(big, max_bytes=1 << 20) == (None, "file larger than 1 MB")
    assert sum(reads) <= (1 << 20) + 1


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux /proc")
def test_a_regular_file_that_says_size_zero_is_read_whole():
    data, reason = read_bytes("/proc/self/status")
    assert reason == "" and data.startswith(b"Name:") and data.endswith(b"\n")


# --------------------------------------------------------------------------- header sizes


def _formats() -> dict[str, bytes]:
    img = texture(23, 37, seed=3)  # 37 wide, 23 tall: width and height told apart
    out = {
        "jpeg": encode(".jpg", img),
        "jpeg progressive": encode(".jpg", img, (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
        "png": encode(".png", img),
        "png 16-bit": encode(".png", img.astype(np.uint16) * 257),
        "bmp": encode(".bmp", img),
        "webp lossy": encode(".webp", img, (cv2.IMWRITE_WEBP_QUALITY, 80)),
        "webp lossless": encode(".webp", img, (cv2.IMWRITE_WEBP_QUALITY, 101)),
        "tiff": encode(".tiff", img),
        "ppm": encode(".ppm", img),
        "pgm": encode(".pgm", img[..., 0]),
        "sun raster": encode(".ras", img),
        "pnm comment": b"P6\n# a comment 99 99\n37 23\n255\n" + img[..., ::-1].tobytes(),
    }
    try:
        out["gif"] = encode(".gif", img)
    except cv2.error:
        pass
    try:
        from PIL import Image
    except ImportError:
        return out
    import io

    def pil(fmt, mode="RGB", **kw):
        b = io.BytesIO()
        Image.fromarray(img[..., ::-1]).convert(mode).save(b, fmt, **kw)
        return b.getvalue()

    exif = Image.Exif()
    exif[0x010E] = "a description"  # ImageDescription: an APP1 segment before the frame header
    out["jpeg exif"] = pil("JPEG", exif=exif.tobytes())
    out["jpeg cmyk"] = pil("JPEG", "CMYK")
    out["webp vp8x"] = pil("WEBP", "RGBA")
    out["bigtiff"] = pil("TIFF", big_tiff=True)
    out["gif pil"] = pil("GIF", "P")
    return out


FORMATS = _formats()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_header_size_of_every_parsed_format(fmt, tmp_path):
    data = FORMATS[fmt]
    assert image_size(data) == (37, 23)
    p = tmp_path / "img"
    p.write_bytes(data)
    img, reason = read_image(p, SIZE, max_pixels=37 * 23)
    assert reason == "", "a real image within the limit must decode"
    assert read_image(p, SIZE, max_pixels=37 * 23 - 1) == (None, "image 37 x 23 exceeds 850 pixels")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xd8",
        b"\xff\xd8\xff",
        b"\xff\xd8\xff\xe0\xff\xff",
        b"\xff\xd8\xff\xda\x00\x02",  # a scan before any frame
        b"\x89PNG\r\n\x1a\n\x00\x00",
        b"GIF8",
        b"GIF89a garbage",  # no block after the screen descriptor: OpenCV's to judge (it refuses)
        b"BM\x00",
        b"RIFF\x00\x00\x00\x00WEBPVP8 ",
        b"II*\x00\xff\xff\xff\xff",
        b"MM\x00+\x00\x08\x00\x00" + b"\xff" * 8,
        b"P5\n",
        b"P5 " + b"9" * 5000 + b" 1\n",
        b"not an image",
    ],
)
def test_malformed_headers_are_none_not_exceptions(data):
    assert image_size(data) is None


def test_forged_headers_of_other_formats_are_refused(tmp_path):
    img = texture(23, 37)
    png = bytearray(encode(".png", img))
    png[16:24] = struct.pack(">II", 30000, 30000)
    bmp = bytearray(encode(".bmp", img))
    bmp[18:26] = struct.pack("<ii", 10000, -10000)  # top-down
    gif = b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0) + b"\x2c" + b"\x00" * 20
    webp = b"RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x00\x00\x00\x00" + (16383).to_bytes(3, "little") * 2
    for name, data, wh in [
        ("png", png, (30000, 30000)),
        ("bmp", bmp, (10000, 10000)),
        ("gif", gif, (65535, 65535)),
        ("webp", webp, (16384, 16384)),
    ]:
        p = tmp_path / name
        p.write_bytes(bytes(data))
        assert read_image(p, SIZE) == (None, f"image {wh[0]} x {wh[1]} exceeds 50 MP"), name


# --------------------------------------------------------------------------- OpenCV's own limit, errors


def test_opencv_limit_backstops_formats_not_parsed(tmp_path):
    """A PAM header (not parsed here) claiming 10000 x 10000: OpenCV refuses it from its own limit.

    OpenCV reads OPENCV_IO_MAX_IMAGE_PIXELS when it loads, so this runs in a fresh process that
    imports images.py first (as the stages do).
    """
    p = tmp_path / "bomb.pam"
    p.write_bytes(b"P7\nWIDTH 10000\nHEIGHT 10000\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n" + b"\0" * 300)
    assert image_size(p.read_bytes()) is None
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    code = (
        "import sys; from introspect.engine.images import read_image; "
        "print(read_image(sys.argv[1], (112, 112))[1]); import os; print(os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(p)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["image exceeds OpenCV's OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS)]


@pytest.mark.parametrize(
    "exc, reason",
    [
        (
            cv2.error("OpenCV(5.0.0) loadsave.cpp:79: error: (-215:Assertion failed) pixels <= CV_IO_MAX_IMAGE_PIXELS"),
            "image exceeds OpenCV's OPENCV_IO_MAX_IMAGE_PIXELS",
        ),
        (cv2.error("Failed to allocate 123 bytes"), "decoder error: Failed to allocate 123 bytes"),
        (MemoryError(), "out of memory decoding"),
    ],
)
def test_decoder_errors_are_reasons(tmp_path, monkeypatch, exc, reason):
    p = tmp_path / "a.jpg"
    p.write_bytes(encode(".jpg", texture()))

    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(images.cv2, "imdecode", boom)
    assert read_image(p, SIZE) == (None, reason)
    imgs, ok, reasons = read_batch([str(p), str(p)], SIZE)
    assert ok.tolist() == [False, False] and reasons == [reason, reason]


# --------------------------------------------------------------------------- limits


def test_decode_limits():
    assert DecodeLimits() == DecodeLimits(MAX_PIXELS, MAX_BYTES)
    assert DecodeLimits().as_dict() == {"max_pixels": 50_000_000, "max_bytes": 64 << 20}
    assert DecodeLimits(5, 6).validate() == DecodeLimits(5, 6)
    for bad in (0, -1, 1.5, True, "5"):
        with pytest.raises(ValueError):
            DecodeLimits(max_pixels=bad)
        with pytest.raises(ValueError):
            DecodeLimits(max_bytes=bad)
    with pytest.raises(ValueError):
        read_image("x.jpg", SIZE, max_pixels=0)
    with pytest.raises(ValueError):
        read_batch([], SIZE, max_bytes=-1)


def test_limits_pass_through_read_batch(hostile):
    good = good_path(hostile)
    limits = DecodeLimits(max_pixels=100 * 100, max_bytes=1 << 20)
    imgs, ok, reasons = read_batch([good], SIZE, **limits.as_dict())
    assert ok.tolist() == [False] and reasons == ["image 112 x 112 exceeds 10,000 pixels"]
    imgs, ok, reasons = read_batch([good], SIZE, max_bytes=10)
    assert reasons == ["file larger than 10 bytes"]
