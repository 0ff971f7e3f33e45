"""bench/realset.py: the overlays are deterministic, each changes its own region, and no photo enters twice."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import realset  # noqa: E402

from introspect.errors import UserError  # noqa: E402

S = 112
EYES = np.s_[42:60, 24:88]  # around the template's eyes (y ~ 52)
LOWER = np.s_[84:108, 30:82]  # around the mouth corners (y ~ 92) and chin
FOREHEAD = np.s_[2:22, 30:82]


@pytest.fixture
def face() -> np.ndarray:
    """A textured colour crop: smooth gradients plus noise, so blur and grey have something to change."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:S, 0:S]
    base = np.stack([90 + x, 120 + y // 2, 200 - x // 2], axis=-1).astype(np.float32)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def changed(a: np.ndarray, b: np.ndarray, region) -> float:
    """Share of pixels in `region` that differ by more than 8 grey levels in some channel."""
    return float((np.abs(a[region].astype(int) - b[region].astype(int)).max(axis=-1) > 8).mean())


@pytest.mark.parametrize("name", realset.OVERLAYS)
def test_each_overlay_is_deterministic(face, name):
    a = realset.APPLY[name](face, np.random.default_rng(3))
    b = realset.APPLY[name](face, np.random.default_rng(3))
    assert a.shape == face.shape and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, face)


def test_glasses_darken_the_eyes_only(face):
    out = realset.glasses(face, np.random.default_rng(0))
    assert changed(face, out, EYES) > 0.5 and out[EYES].mean() < 0.5 * face[EYES].mean()
    assert changed(face, out, LOWER) == 0 and changed(face, out, FOREHEAD) == 0


def test_mask_covers_the_lower_face_only(face):
    out = realset.mask(face, np.random.default_rng(0))
    assert changed(face, out, LOWER) > 0.9
    assert changed(face, out, EYES) == 0 and changed(face, out, FOREHEAD) == 0
    assert out[LOWER].astype(float).std(axis=(0, 1)).max() < 3  # one flat colour, the noise gone


def test_dark_gray_blur_change_the_whole_crop_as_intended(face):
    rng = np.random.default_rng(0)
    d, g, b = realset.dark(face, rng), realset.gray(face, rng), realset.blur(face, rng)
    assert d.mean() < 0.5 * face.mean() and changed(face, d, FOREHEAD) > 0.9 and changed(face, d, LOWER) > 0.9
    assert np.array_equal(g[..., 0], g[..., 1]) and np.array_equal(g[..., 1], g[..., 2])
    assert not np.array_equal(face[..., 0], face[..., 1])
    lap = lambda im: np.abs(np.diff(im.astype(float), axis=1)).mean()  # noqa: E731
    assert lap(b) < 0.4 * lap(face) and abs(b.mean() - face.mean()) < 2


def test_draws_are_seeded_independent_and_spare_grey_photos():
    a, b = realset.draw_overlays(4000, seed=5), realset.draw_overlays(4000, seed=5)
    assert all(np.array_equal(a[k], b[k]) for k in realset.OVERLAYS)
    assert not np.array_equal(a["glasses"], realset.draw_overlays(4000, seed=6)["glasses"])
    for k in realset.OVERLAYS:
        assert abs(a[k].mean() - realset.RATE) < 0.03
    both = (a["glasses"] & a["mask"]).mean()
    assert abs(both - realset.RATE**2) < 0.015  # independent: P(both) = P(glasses) P(mask)
    grey = np.arange(4000) % 2 == 0
    c = realset.draw_overlays(4000, seed=5, grey_rows=grey)
    assert not c["gray"][grey].any() and np.array_equal(c["gray"][~grey], a["gray"][~grey])
    assert np.array_equal(c["mask"], a["mask"])


def test_attrs_row_has_the_synth_columns():
    flags = dict.fromkeys(realset.OVERLAYS, False) | {"glasses": True, "blur": True}
    row = realset.attrs_row("000001.png", 3, flags)
    assert tuple(row) == realset.COLUMNS
    assert row["glasses"] == "sun" and row["mask"] == "none" and row["blur"] == "1" and row["dark"] == "0"
    assert row["identity"] == "3" and row["pose"] == "frontal" and row["occluder"] == "none"


def _manifest(tmp_path, files: dict[str, bytes]) -> tuple:
    rows = []
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
        person = rel.split("/")[0]
        rows.append({"file": rel, "person": person, "source": "test", "license": "CC0", "sha256": realset.sha256(data)})
    realset.write_manifest(tmp_path / "manifest.csv", rows)
    return tmp_path, tmp_path / "manifest.csv"


def test_manifest_refuses_a_photo_twice_and_a_changed_photo(tmp_path):
    root, man = _manifest(tmp_path, {"a/1.jpg": b"one", "a/2.jpg": b"two", "b/1.jpg": b"three"})
    assert [r["person"] for r in realset.read_manifest(root, man)] == ["a", "a", "b"]
    root, man = _manifest(tmp_path, {"a/1.jpg": b"one", "b/9.jpg": b"one"})  # same bytes, two people
    with pytest.raises(UserError, match="same photo"):
        realset.read_manifest(root, man)
    root, man = _manifest(tmp_path, {"a/1.jpg": b"one"})
    (root / "a/1.jpg").write_bytes(b"edited")
    with pytest.raises(UserError, match="sha256"):
        realset.read_manifest(root, man)


def test_committed_manifests_list_each_photo_once():
    for path in sorted((REPO / "bench" / "real").glob("*.csv")):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        assert rows and tuple(rows[0]) == realset.MANIFEST_COLUMNS
        assert len({r["sha256"] for r in rows}) == len(rows) == len({r["file"] for r in rows})


def _repo(tmp_path, files: dict[str, bytes]):
    import subprocess

    repo = tmp_path / "repo"
    for rel, data in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes(data)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "photos"], check=True)
    return repo


def test_gather_london_pairs_neutral_and_smiling_and_skips_mac_droppings(tmp_path, face):
    import cv2

    jpg = [cv2.imencode(".jpg", np.roll(face, k, axis=1))[1].tobytes() for k in range(4)]
    files = {
        "inst/neutral_front/001_03.jpg": jpg[0],
        "inst/smiling_front/001_08.jpg": jpg[1],
        "inst/neutral_front/002_03.jpg": jpg[2],
        "inst/smiling_front/002_08.jpg": jpg[3],
        "inst/neutral_front/._001_03.jpg": b"resource fork",
        "inst/neutral_front/001_03.tem": b"template",
    }
    out = tmp_path / "photos"
    realset.gather("london", _repo(tmp_path, files), out)
    rows = realset.read_manifest(out, out / "manifest.csv")
    assert [(r["file"], r["person"]) for r in rows] == [
        ("london_001/001_03.jpg", "london_001"),
        ("london_001/001_08.jpg", "london_001"),
        ("london_002/002_03.jpg", "london_002"),
        ("london_002/002_08.jpg", "london_002"),
    ]
    assert all(r["license"] == "CC BY 4.0" and "webmorphR.stim@" in r["source"] for r in rows)
    assert (out / "london_002/002_08.jpg").read_bytes() == jpg[3]


def test_gather_orl_pads_grey_photos_and_orders_people_numerically(tmp_path):
    import cv2

    rng = np.random.default_rng(1)
    pgm = {
        f"resources/att_faces/s{s}/{i}.pgm": rng.integers(0, 255, (112, 92), dtype=np.uint8)
        for s in (2, 10)
        for i in (1, 2)
    }
    files = {k: cv2.imencode(".pgm", v)[1].tobytes() for k, v in pgm.items()}
    out = tmp_path / "photos"
    realset.gather("orl", _repo(tmp_path, files), out)
    rows = realset.read_manifest(out, out / "manifest.csv")
    assert [r["person"] for r in rows] == ["orl_s02", "orl_s02", "orl_s10", "orl_s10"]
    img = cv2.imread(str(out / rows[0]["file"]), cv2.IMREAD_GRAYSCALE)
    assert img.shape == (112 + 112, 92 + 112)
    assert np.array_equal(img[56:-56, 56:-56], pgm["resources/att_faces/s2/1.pgm"])
    assert "not redistributed" in rows[0]["license"]
