"""Tests for introspect.synth: synthetic faces with planted attributes (ground truth for the rest)."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from introspect import synth
from introspect.errors import UserError
from introspect.synth import COLUMNS, RATES, SynthError, attrs_path, identity_of, render, synthesize
from introspect.synth.camera import noise_bank
from introspect.synth.scene import render_batch
from introspect.synth.writer import shard_path, shard_widths

N_RATES = 3000  # enough for loose rate bounds on the rare attributes, still a few seconds


def _read_rows(list_path: Path) -> list[dict[str, str]]:
    with open(attrs_path(list_path), newline="") as f:
        return list(csv.DictReader(f))


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    d = tmp_path_factory.mktemp("synth_small")
    root, lst = d / "img", d / "lists" / "synth.txt"
    return root, lst, synthesize(300, 11, root, lst, workers=1, progress=False)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    d = tmp_path_factory.mktemp("synth_big")
    root, lst = d / "img", d / "synth.txt"
    synthesize(N_RATES, 3, root, lst, workers=2, progress=False)
    return root, _read_rows(lst)


def _load(root: Path, rows: list[dict[str, str]]) -> np.ndarray:
    return np.stack([cv2.imread(str(root / r["path"])) for r in rows]).astype(np.float32)


# --------------------------------------------------------------------------- API and files


@pytest.mark.parametrize("n", [0, -3])
def test_rejects_n_below_one(tmp_path: Path, n: int) -> None:
    with pytest.raises(ValueError, match="n must be a positive integer") as e:
        synthesize(n, 0, tmp_path / "img", tmp_path / "l.txt", progress=False)
    assert "\n" not in str(e.value)
    assert isinstance(e.value, UserError)  # the CLI shows it as one line
    assert not (tmp_path / "l.txt").exists()


def test_rejects_negative_seed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seed"):
        synthesize(5, -1, tmp_path / "img", tmp_path / "l.txt", progress=False)


def test_attrs_path_sits_beside_the_list() -> None:
    assert attrs_path(Path("lists/synth.txt")) == Path("lists/synth.attrs.csv")
    assert attrs_path(Path("/a/b/faces")) == Path("/a/b/faces.attrs.csv")


def test_summary(small: tuple[Path, Path, dict]) -> None:
    root, lst, s = small
    assert s["n"] == 300 and s["identities"] == 75
    assert s["images_per_s"] > 0 and s["seconds"] > 0
    assert s["root"] == str(root) and s["list"] == str(lst) and s["attrs"] == str(attrs_path(lst))


def test_list_csv_and_images(small: tuple[Path, Path, dict]) -> None:
    root, lst, _ = small
    lines = lst.read_text().splitlines()
    assert len(lines) == 300
    assert lines[0] == "000/000000.jpg" and lines[-1] == "000/000299.jpg"
    assert lines == sorted(lines)  # index order is also `find | sort` order
    for line in lines:
        assert not Path(line).is_absolute() and (root / line).is_file()
    header = attrs_path(lst).read_text().splitlines()[0]
    assert tuple(header.split(",")) == COLUMNS
    rows = _read_rows(lst)
    assert [r["path"] for r in rows] == lines
    for r in rows:
        for col, table in RATES.items():
            assert r[col] in {value for value, _ in table}
        assert 0 <= int(r["identity"]) < 75
    for line in lines[::37]:
        img = cv2.imread(str(root / line))
        assert img is not None and img.shape == (112, 112, 3) and img.dtype == np.uint8
        assert img.std() > 10  # a drawn scene, not a flat fill
    assert not list(lst.parent.glob("*.part"))


def test_failure_leaves_no_partial_list(tmp_path: Path) -> None:
    root, lst = tmp_path / "img", tmp_path / "synth.txt"
    root.mkdir()
    (root / "000").write_text("a file where the first shard folder should go")
    with pytest.raises(OSError):
        synthesize(5, 0, root, lst, workers=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img"]


def test_shard_names_keep_index_order_for_ten_million() -> None:
    widths = shard_widths(10_000_000)
    names = [shard_path(i, widths) for i in (0, 999, 1000, 123_456, 9_999_999)]
    assert names[0] == "0000/0000000.jpg" and names[-1] == "9999/9999999.jpg"
    assert names == sorted(names)
    assert len({n.split("/")[0] for n in names}) == 4  # 1000 images per folder


# --------------------------------------------------------------------------- determinism


def test_byte_identical_for_any_worker_count(small: tuple[Path, Path, dict], tmp_path: Path) -> None:
    root1, lst1, _ = small
    root2, lst2 = tmp_path / "img", tmp_path / "lists" / "synth.txt"
    synthesize(300, 11, root2, lst2, workers=2, progress=False)
    assert lst1.read_bytes() == lst2.read_bytes()
    assert attrs_path(lst1).read_bytes() == attrs_path(lst2).read_bytes()
    assert _tree_bytes(root1) == _tree_bytes(root2)


def test_other_seed_gives_other_data(small: tuple[Path, Path, dict], tmp_path: Path) -> None:
    root1, lst1, _ = small
    root2, lst2 = tmp_path / "img", tmp_path / "synth.txt"
    synthesize(300, 12, root2, lst2, workers=1, progress=False)
    assert lst1.read_text() == lst2.read_text()  # same names ...
    assert attrs_path(lst1).read_bytes() != attrs_path(lst2).read_bytes()  # ... other labels
    a, b = _tree_bytes(root1), _tree_bytes(root2)
    assert sum(a[k] != b[k] for k in a) == len(a)


def test_an_image_does_not_depend_on_its_block() -> None:
    bank = noise_bank(5)
    alone = render_batch(5, [42], [7], bank)[0]
    inside = render_batch(5, [40, 41, 42, 43], [3, 1, 7, 7], bank)[2]
    assert np.array_equal(alone[0], inside[0]) and alone[1:] == inside[1:]
    img, lab, q = synth.render(5, 42, 7)
    assert np.array_equal(img, alone[0]) and img.shape == (112, 112, 3) and 58 <= q <= 95


def test_identity_is_computable_per_image() -> None:
    whole = synth.identity_of(9, 10_000, np.arange(2000))
    parts = np.concatenate([synth.identity_of(9, 10_000, np.arange(s, s + 256)) for s in range(0, 2000, 256)])
    assert np.array_equal(whole, parts[:2000])
    assert whole.min() >= 0 and whole.max() < 2500


# Recorded from the single-module renderer (introspect/synth.py before the split into a package),
# with this project's numpy 2.4 / opencv 5.0 build: any drift in drawing, random-number order or
# encoding fails here.  The indices cover every attribute value (first of each in seed 3, n 3000).
PIN_INDICES = (0, 3, 8, 10, 11, 16, 21, 23, 52, 257, 332, 487)
PIN_RENDER_SHA256 = "9ce4ce25b92e4bc98582766efd531aab6fd6341e821437469eadb258f9c7e1d7"
PIN_FILES_SHA256 = "5ee764e9d8363e749a430a3b8a5b74b8b9936abb04348571e73e8ad01fa82a6c"


def test_pixels_are_pinned() -> None:
    h = hashlib.sha256()
    ids = identity_of(3, 3000, np.array(PIN_INDICES)).tolist()
    for i, ident in zip(PIN_INDICES, ids):
        img, lab, q = render(3, i, ident)
        h.update(img.tobytes())
        h.update((",".join(lab[k] for k in COLUMNS[2:]) + f",{q}\n").encode())
    assert h.hexdigest() == PIN_RENDER_SHA256


def test_files_are_pinned(tmp_path: Path) -> None:
    root, lst = tmp_path / "img", tmp_path / "l.txt"
    synthesize(64, 5, root, lst, workers=1, progress=False)
    h = hashlib.sha256(lst.read_bytes() + attrs_path(lst).read_bytes())
    for line in lst.read_text().splitlines():
        h.update((root / line).read_bytes())
    assert h.hexdigest() == PIN_FILES_SHA256


# --------------------------------------------------------------------------- identities and rates


def test_identity_count_can_be_chosen(tmp_path: Path) -> None:
    root, lst = tmp_path / "img", tmp_path / "l.txt"
    s = synthesize(200, 4, root, lst, workers=1, progress=False, identities=10)
    assert s["identities"] == 10
    assert {int(r["identity"]) for r in _read_rows(lst)} == set(range(10))
    assert np.array_equal(identity_of(4, 200, np.arange(200)), identity_of(4, 200, np.arange(200), 50))


@pytest.mark.parametrize("bad", [0, -2, True, 2.5, "10"])
def test_rejects_bad_identity_count(tmp_path: Path, bad: object) -> None:
    with pytest.raises(SynthError, match="identities must be a positive integer"):
        synthesize(5, 0, tmp_path / "img", tmp_path / "l.txt", progress=False, identities=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "l.txt").exists()


def test_rate_override_sets_the_share(tmp_path: Path) -> None:
    root, lst = tmp_path / "img", tmp_path / "l.txt"
    synthesize(600, 2, root, lst, workers=1, progress=False, rates={"glasses": (("none", 0.5), ("sun", 0.5))})
    counts = Counter(r["glasses"] for r in _read_rows(lst))
    assert set(counts) == {"none", "sun"}
    assert abs(counts["sun"] / 600 - 0.5) < 4 * np.sqrt(0.25 / 600)


def test_default_tables_given_explicitly_change_nothing(small: tuple[Path, Path, dict], tmp_path: Path) -> None:
    root1, lst1, _ = small
    root2, lst2 = tmp_path / "img", tmp_path / "lists" / "synth.txt"
    synthesize(300, 11, root2, lst2, workers=1, progress=False, rates=dict(RATES), identities=75)
    assert attrs_path(lst1).read_bytes() == attrs_path(lst2).read_bytes()
    assert _tree_bytes(root1) == _tree_bytes(root2)


def test_overridden_values_are_drawn_by_name() -> None:
    """A table may list values in any order or leave some out: a value still draws as itself.

    Only the attribute changes between these renders (same seed, image and identity)."""
    look = {v: render(6, 10, 3, rates={"glasses": ((v, 1.0),)}) for v in ("none", "clear", "sun")}
    assert [look[v][1]["glasses"] for v in look] == ["none", "clear", "sun"]
    assert not np.array_equal(look["none"][0], look["clear"][0])
    assert not np.array_equal(look["clear"][0], look["sun"][0])
    default = render(6, 10, 3)
    same = look[default[1]["glasses"]]
    assert np.array_equal(default[0], same[0]) and default[2] == same[2]
    _, lab, _ = render(6, 10, 3, rates={"pose": (("right", 0.999), ("left", 0.001))})
    assert lab["pose"] == "right"
    turned = [render(6, 10, 3, rates={"pose": ((p, 1.0),)})[0] for p in ("frontal", "left", "right")]
    assert not np.array_equal(turned[0], turned[1]) and not np.array_equal(turned[1], turned[2])


@pytest.mark.parametrize(
    ("rates", "message"),
    [
        ({"hat": (("none", 1.0),)}, "unknown column 'hat'"),
        ({"glasses": (("none", 0.5), ("monocle", 0.5))}, "unknown value 'monocle'"),
        ({"glasses": (("none", 0.5), ("sun", 0.4))}, "sum to 0.9, not 1"),
        ({"mask": (("none", 1.5), ("medical", -0.5))}, "must be a number >= 0"),
        ({"mask": (("none", 0.5), ("none", 0.5))}, "listed twice"),
        ({"mask": {"none": 1.0}}, r"must be \(\(value, probability\), ...\)"),
        ({"mask": 1.0}, r"must be \(\(value, probability\), ...\)"),
        ({"dark": ((1, 1.0),)}, "unknown value 1"),
        ([("dark", (("0", 1.0),))], "rates must map columns"),
    ],
)
def test_rejects_bad_rates_in_one_line(tmp_path: Path, rates: object, message: str) -> None:
    with pytest.raises(SynthError, match=message) as e:
        synthesize(5, 0, tmp_path / "img", tmp_path / "l.txt", progress=False, rates=rates)  # type: ignore[arg-type]
    assert "\n" not in str(e.value) and isinstance(e.value, UserError)
    assert not (tmp_path / "l.txt").exists()
    with pytest.raises(SynthError, match=message):
        render(0, 1, 0, rates=rates)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- planted attributes


def test_rates_match_the_documented_table(big: tuple[Path, list[dict[str, str]]]) -> None:
    _, rows = big
    assert len(rows) == N_RATES
    for col, table in RATES.items():
        counts = Counter(r[col] for r in rows)
        assert set(counts) == {value for value, _ in table}, f"{col}: every variant appears"
        for value, p in table:
            got = counts[value] / N_RATES
            tol = max(0.35 * p, 4 * np.sqrt(p * (1 - p) / N_RATES))
            assert abs(got - p) <= tol, f"{col}={value}: {got:.4f} vs documented {p}"


def test_attributes_are_drawn_independently(big: tuple[Path, list[dict[str, str]]]) -> None:
    _, rows = big
    glasses = np.array([r["glasses"] != "none" for r in rows])
    mask = np.array([r["mask"] != "none" for r in rows])
    dark = np.array([r["dark"] == "1" for r in rows])
    both = (glasses & mask).mean()
    assert abs(both - glasses.mean() * mask.mean()) < 0.01
    assert abs((glasses & dark).mean() - glasses.mean() * dark.mean()) < 0.01


def test_many_identities_with_few_images_each(big: tuple[Path, list[dict[str, str]]]) -> None:
    _, rows = big
    per_id = Counter(int(r["identity"]) for r in rows)
    assert max(per_id) < N_RATES // 4
    assert len(per_id) > 0.9 * (N_RATES // 4) * (1 - np.exp(-4))  # Poisson(4): ~98 % of ids used
    assert 3.5 < np.mean(list(per_id.values())) < 4.6
    assert max(per_id.values()) <= 16
    # attributes are per image: an identity's images do not share them
    by_id: dict[int, set[str]] = {}
    for r in rows:
        by_id.setdefault(int(r["identity"]), set()).add(r["pose"])
    assert sum(len(s) > 1 for s in by_id.values()) > 50


def test_gray_images_have_equal_channels(big: tuple[Path, list[dict[str, str]]]) -> None:
    root, rows = big
    gray = _load(root, [r for r in rows if r["gray"] == "1"][:40])
    color = _load(root, [r for r in rows if r["gray"] == "0"][:40])
    assert np.abs(gray[..., 0] - gray[..., 1]).max() <= 2 and np.abs(gray[..., 1] - gray[..., 2]).max() <= 2
    assert np.abs(color[..., 0] - color[..., 2]).mean(axis=(1, 2)).min() > 2


def test_dark_images_are_darker(big: tuple[Path, list[dict[str, str]]]) -> None:
    root, rows = big
    dark = _load(root, [r for r in rows if r["dark"] == "1"][:60]).mean(axis=(1, 2, 3))
    lit = _load(root, [r for r in rows if r["dark"] == "0"][:200]).mean(axis=(1, 2, 3))
    assert dark.mean() < 0.45 * lit.mean()
    assert np.median(dark) < np.percentile(lit, 5)


def test_blurred_images_are_softer(big: tuple[Path, list[dict[str, str]]]) -> None:
    root, rows = big

    def sharpness(rs: list[dict[str, str]]) -> np.ndarray:
        ok = [r for r in rs if r["dark"] == "0"]  # darkness also lowers contrast
        return np.array([cv2.Laplacian(cv2.imread(str(root / r["path"]), 0), cv2.CV_32F).var() for r in ok])

    blurred = sharpness([r for r in rows if r["blur"] == "1"][:80])
    sharp = sharpness([r for r in rows if r["blur"] == "0"][:200])
    assert np.median(blurred) < 0.5 * np.median(sharp)


def test_masks_and_sunglasses_change_the_face(big: tuple[Path, list[dict[str, str]]]) -> None:
    root, rows = big
    plain = [r for r in rows if r["dark"] == r["gray"] == r["blur"] == "0" and r["occluder"] == "none"]
    bare = _load(root, [r for r in plain if r["mask"] == "none" and r["glasses"] == "none"][:150])
    masked = _load(root, [r for r in plain if r["mask"] == "medical"][:60])
    sun = _load(root, [r for r in plain if r["glasses"] == "sun" and r["mask"] == "none"][:40])
    eyes = (slice(44, 60), slice(28, 84))
    lower = (slice(78, 100), slice(36, 76))

    def brightness(imgs: np.ndarray, region: tuple) -> float:
        return float(imgs[:, region[0], region[1]].mean())

    assert brightness(sun, eyes) < 0.8 * brightness(bare, eyes)  # dark lenses over the eyes

    # a mask replaces lips and skin by fabric: the mouth region's colour no longer matches the forehead's
    def mouth_vs_forehead(imgs: np.ndarray) -> np.ndarray:
        return np.abs(imgs[:, lower[0], lower[1]].mean(axis=(1, 2)) - imgs[:, 24:34, 40:72].mean(axis=(1, 2))).sum(1)

    assert np.median(mouth_vs_forehead(masked)) > 1.3 * np.median(mouth_vs_forehead(bare))


def test_turned_heads_move_the_nose(big: tuple[Path, list[dict[str, str]]]) -> None:
    """Left / right are planted as yaw: the outline shifts against the aligned features."""
    root, rows = big
    plain = [r for r in rows if r["dark"] == r["blur"] == "0" and r["occluder"] == "none" and r["mask"] == "none"]

    def lr_balance(pose: str) -> float:  # skin-ish brightness left of centre minus right of centre
        imgs = _load(root, [r for r in plain if r["pose"] == pose][:80]).mean(axis=3)
        band = imgs[:, 50:100]
        return float(band[:, :, 4:24].mean() - band[:, :, 88:108].mean())

    left, right, frontal = lr_balance("left"), lr_balance("right"), lr_balance("frontal")
    assert left != right
    assert (left - frontal) * (right - frontal) < 0  # opposite turns push opposite ways
