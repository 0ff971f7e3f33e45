"""Image input: the reference's blob, and a corpus of bad or unusual files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from introspect.engine.images import Preprocess, is_truncated, read_batch, read_image

SIZE = (112, 112)
REFERENCE = Preprocess(size=SIZE, mean=(127.5,) * 3, std=(127.5,) * 3, rgb=True)


def texture(h=112, w=112, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (5, 5), 0)


# --------------------------------------------------------------------------- blob


def test_blob_equals_blob_from_images_exactly():
    rng = np.random.default_rng(0)
    imgs = (rng.random((6, 112, 112, 3)) * 256).astype(np.uint8)
    imgs[0] = np.arange(112 * 112 * 3).reshape(112, 112, 3) % 256  # every byte value
    ours = REFERENCE.blob(imgs)
    theirs = cv2.dnn.blobFromImages(list(imgs), 1 / 127.5, (112, 112), (127.5,) * 3, swapRB=True)
    assert ours.dtype == np.float32 and ours.shape == (6, 3, 112, 112)
    assert theirs.shape == ours.shape
    np.testing.assert_array_equal(ours, theirs)
    # the channel swap really happened: channel 0 of the blob is the image's R (BGR index 2)
    np.testing.assert_array_equal(ours[:, 0], (imgs[..., 2].astype(np.float32) - 127.5) * np.float32(1 / 127.5))


def test_blob_bgr_and_plain_settings():
    imgs = np.stack([texture(seed=1), texture(seed=2)])
    plain = Preprocess(size=SIZE)  # SFace: raw RGB 0..255
    np.testing.assert_array_equal(
        plain.blob(imgs), cv2.dnn.blobFromImages(list(imgs), 1.0, SIZE, (0, 0, 0), swapRB=True)
    )
    bgr = Preprocess(size=SIZE, mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 8.0), rgb=False)
    expect = (imgs.transpose(0, 3, 1, 2).astype(np.float32) - np.float32([10, 20, 30])[:, None, None]) / np.float32(
        [2, 4, 8]
    )[:, None, None]
    np.testing.assert_allclose(bgr.blob(imgs), expect, rtol=1e-6)


def test_blob_empty_batch_and_input_untouched():
    assert REFERENCE.blob(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 3, 112, 112)
    imgs = np.stack([texture()])
    before = imgs.copy()
    REFERENCE.blob(imgs)
    np.testing.assert_array_equal(imgs, before)


def test_preprocess_config_round_trip():
    pre = Preprocess.from_config({"size": [120, 100], "mean": [1, 2, 3], "std": [4, 5, 6], "rgb": False})
    assert pre.size == (120, 100) and pre.as_dict() == {
        "size": [120, 100],
        "mean": [1, 2, 3],
        "std": [4, 5, 6],
        "rgb": False,
    }
    with pytest.raises(ValueError):
        Preprocess(std=(1.0, 0.0, 1.0))


# --------------------------------------------------------------------------- the corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, np.ndarray]:
    d = tmp_path_factory.mktemp("corpus")
    img = texture()
    cv2.imwrite(str(d / "good.jpg"), img)
    data = (d / "good.jpg").read_bytes()
    (d / "zero.jpg").write_bytes(b"")
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "text.jpg").write_text("this is not an image\n")
    (d / "random.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    cv2.imwrite(str(d / "gray.jpg"), img[..., 1])
    cv2.imwrite(str(d / "rgba.png"), np.dstack([img, np.full(img.shape[:2], 77, np.uint8)]))
    cv2.imwrite(str(d / "deep.png"), img.astype(np.uint16) * 257)
    cv2.imwrite(str(d / "plain.png"), img)
    cv2.imwrite(str(d / "big.jpg"), texture(150, 200, seed=5))
    (d / "folder.jpg").mkdir()
    (d / "trailing.jpg").write_bytes(data + b"\x00" * 16 + b"\r\n")
    (d / "appended.jpg").write_bytes(data + b"APPENDED METADATA BLOCK")
    return d, img


def test_good_jpeg(corpus):
    d, _ = corpus
    got, reason = read_image(d / "good.jpg", SIZE)
    assert reason == ""
    np.testing.assert_array_equal(got, cv2.imread(str(d / "good.jpg")))


@pytest.mark.parametrize(
    "name, word",
    [
        ("missing.jpg", "missing"),
        ("zero.jpg", "empty"),
        ("truncated.jpg", "truncated"),
        ("text.jpg", "not a decodable image"),
        ("random.jpg", "not a decodable image"),
        ("folder.jpg", "directory"),
    ],
)
def test_bad_files_give_a_reason(corpus, name, word):
    d, _ = corpus
    img, reason = read_image(d / name, SIZE)
    assert img is None
    assert word in reason


def test_truncated_png_gives_a_reason(corpus):
    d, _ = corpus
    cut = d / "cut.png"
    cut.write_bytes((d / "plain.png").read_bytes()[:300])
    img, reason = read_image(cut, SIZE)
    assert img is None and reason


def test_grayscale_becomes_three_equal_channels(corpus):
    d, img = corpus
    got, reason = read_image(d / "gray.jpg", SIZE)
    assert reason == "" and got.shape == (112, 112, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[..., 0], got[..., 1])
    np.testing.assert_array_equal(got[..., 0], got[..., 2])
    np.testing.assert_array_equal(got[..., 0], cv2.imread(str(d / "gray.jpg"), cv2.IMREAD_GRAYSCALE))


def test_rgba_png_drops_alpha(corpus):
    d, img = corpus
    got, reason = read_image(d / "rgba.png", SIZE)
    assert reason == ""
    np.testing.assert_array_equal(got, img)  # PNG is lossless: exactly the BGR planes


def test_16_bit_png_becomes_8_bit(corpus):
    d, img = corpus
    got, reason = read_image(d / "deep.png", SIZE)
    assert reason == "" and got.dtype == np.uint8 and got.shape == (112, 112, 3)
    np.testing.assert_array_equal(got, img)  # v * 257 >> 8 == v


def test_cmyk_jpeg_becomes_bgr(corpus, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    d, img = corpus
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(img[..., ::-1]).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    got, reason = read_image(path, SIZE)
    assert reason == "" and got.shape == (112, 112, 3) and got.dtype == np.uint8
    # same picture (not inverted, not channel-swapped): close to the source up to JPEG loss
    assert np.abs(got.astype(int) - img).mean() < 8
    assert np.abs(got.astype(int) - img[..., ::-1]).mean() > 2 * np.abs(got.astype(int) - img).mean()


def test_other_size_is_resized(corpus):
    d, _ = corpus
    got, reason = read_image(d / "big.jpg", SIZE)
    assert reason == "" and got.shape == (112, 112, 3)
    src = cv2.imread(str(d / "big.jpg"))
    assert src.shape == (150, 200, 3)
    np.testing.assert_array_equal(got, cv2.resize(src, (112, 112), interpolation=cv2.INTER_LINEAR))


def test_non_square_target_size_is_height_width(corpus):
    d, _ = corpus
    got, reason = read_image(d / "good.jpg", (120, 100))
    assert reason == "" and got.shape == (120, 100, 3)
    got, _ = read_image(d / "big.jpg", (150, 200))  # already that size: untouched
    np.testing.assert_array_equal(got, cv2.imread(str(d / "big.jpg")))


def test_zero_padding_after_end_marker_is_not_truncation(corpus):
    d, _ = corpus
    got, reason = read_image(d / "trailing.jpg", SIZE)
    assert reason == ""
    np.testing.assert_array_equal(got, cv2.imread(str(d / "good.jpg")))


def test_data_appended_after_end_marker_is_not_truncation(corpus):
    d, _ = corpus
    assert cv2.imread(str(d / "appended.jpg")) is not None  # the reference reads it
    got, reason = read_image(d / "appended.jpg", SIZE)
    assert reason == ""
    np.testing.assert_array_equal(got, cv2.imread(str(d / "good.jpg")))


def test_is_truncated():
    assert is_truncated(b"\xff\xd8\xff\xe0 some data")
    assert not is_truncated(b"\xff\xd8 data \xff\xd9")
    assert not is_truncated(b"\xff\xd8 data \xff\xd9\x00\x00\n")
    assert not is_truncated(b"\x89PNG\r\n\x1a\n no end marker")  # only JPEGs are judged


def test_read_batch_mask_and_reasons_in_order(corpus):
    d, img = corpus
    paths = [str(d / n) for n in ["good.jpg", "missing.jpg", "gray.jpg", "zero.jpg", "rgba.png", "text.jpg", "big.jpg"]]
    imgs, ok, reasons = read_batch(paths, SIZE)
    assert ok.tolist() == [True, False, True, False, True, False, True]
    assert imgs.shape == (4, 112, 112, 3) and imgs.dtype == np.uint8
    assert "missing" in reasons[0] and "empty" in reasons[1] and "decodable" in reasons[2] and len(reasons) == 3
    for got, p in zip(imgs, [paths[i] for i in (0, 2, 4, 6)]):
        np.testing.assert_array_equal(got, read_image(p, SIZE)[0])


def test_read_batch_all_bad_and_empty(corpus):
    d, _ = corpus
    imgs, ok, reasons = read_batch([str(d / "missing.jpg"), ""], SIZE)
    assert imgs.shape == (0, 112, 112, 3) and ok.tolist() == [False, False] and len(reasons) == 2
    imgs, ok, reasons = read_batch([], SIZE)
    assert imgs.shape == (0, 112, 112, 3) and ok.shape == (0,) and reasons == []
