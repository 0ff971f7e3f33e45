"""introspect align against garbage: landmark geometry, photos turned 90/180/270 degrees (and EXIF
orientation), the ranking of faces, masked faces, a cat and a cup, and the CSVs that record rejections."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_align import NON_FACES, read_csv, real_photos, stage_config, wheel_photos, yunet_file

from introspect.engine import align, plausible
from introspect.stages import align as stage

TURN = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def template_face(m: np.ndarray | None = None) -> tuple[tuple[float, float, float, float], np.ndarray]:
    """The template's landmarks (moved by the similarity `m`) in a box shaped as YuNet draws one."""
    lm = align.template()
    if m is not None:
        lm = lm @ m[:, :2].T + m[:, 2]
    d = np.linalg.norm(lm[3:].mean(0) - lm[:2].mean(0))
    h = plausible.BOX_HEIGHT * d
    w = plausible.BOX_ASPECT * h
    cx, cy = lm.mean(0)
    return (cx - w / 2, cy - h / 2, w, h), lm


@pytest.fixture(scope="session")
def yunet() -> Path:
    return yunet_file()


# --------------------------------------------------------------------------- geometry, no detector


@pytest.mark.parametrize("angle", [-40, 0, 25])
def test_template_is_plausible_at_any_roll(angle):
    m = cv2.getRotationMatrix2D((56, 56), angle, 3.0)
    box, lm = template_face(m)
    assert plausible.judge(box, lm)[0] == ""


def test_each_check_names_what_is_wrong():
    box, lm = template_face()
    upside_down = lm * (1, -1)
    assert plausible.implausible((box[0], -box[1] - box[3], box[2], box[3]), upside_down) == "mouth not below eyes"
    assert plausible.implausible(box, lm[[1, 0, 2, 3, 4]]) == "landmarks mirrored"  # eye labels swapped
    high_nose = lm.copy()
    high_nose[2, 1] = lm[:2, 1].mean()  # nose tip on the eye line
    assert plausible.implausible(box, high_nose) == "nose not between eyes and mouth"
    wide_mouth = lm.copy()
    wide_mouth[3, 0] -= 15
    wide_mouth[4, 0] += 15  # mouth 59 px wide, eyes 35 apart
    reason, figure = plausible.judge(box, wide_mouth)
    assert reason == "mouth / eye distance" and figure == pytest.approx(59.18 / 35.24, abs=0.01)
    tall = (box[0], box[1], 141 / 365 * box[3], box[3])  # the 141 x 365 box
    assert plausible.judge(tall, lm) == ("box aspect", pytest.approx(141 / 365))
    small = (box[0], box[1], box[2] / 3, box[3] / 3)  # landmarks reaching far out of their box
    assert plausible.implausible(small, lm) == "box height / eye-mouth distance"


def test_ranges_hold_the_template_and_come_from_it():
    """The ranges are the template's figures widened by stated factors (engine/plausible.py)."""
    assert plausible.T_IOD == pytest.approx(35.24, abs=0.01) and plausible.T_NOSE == pytest.approx(0.495, abs=0.001)
    for _, key, (lo, hi) in plausible.RANGES:
        g = plausible.geometry(*template_face())
        assert lo < g[key] < hi, key
    assert plausible.RATIO_RANGE == pytest.approx((0.675, 4.907), abs=0.001)
    assert plausible.ASPECT_RANGE == pytest.approx((0.494, 1.264), abs=0.001)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_unturn_maps_positions_in_a_turned_photo_back(rotation):
    h, w = 7, 11
    rng = np.random.default_rng(rotation)
    for _ in range(5):
        x, y = int(rng.integers(w)), int(rng.integers(h))
        img = np.zeros((h, w), np.uint8)
        img[y, x] = 255
        ty, tx = np.argwhere(cv2.rotate(img, TURN[rotation]))[0]
        assert align.unturn([(tx, ty)], rotation, *img.shape[::-1][:2]).tolist() == [[x, y]]


# --------------------------------------------------------------------------- YuNet on real photos


def draw_mask(img: np.ndarray, lm: np.ndarray, color=(235, 205, 160)) -> np.ndarray:
    """A surgical-mask-like polygon from the nose bridge to below the chin, ear to ear, with 3 pleats."""
    lm = np.asarray(lm, np.float64)
    eyes, mouth = lm[:2].mean(0), lm[3:].mean(0)
    iod = np.linalg.norm(lm[1] - lm[0])
    u = (lm[1] - lm[0]) / iod
    v = np.array([-u[1], u[0]])
    d = (mouth - eyes) @ v
    shape = [(-1.35, 0.3), (0, 0.2), (1.35, 0.3), (1.2, 1.5), (0.4, 1.95), (-0.4, 1.95), (-1.2, 1.5)]
    poly = np.array([eyes + a * iod * u + b * d * v for a, b in shape])
    out = img.copy()
    cv2.fillPoly(out, [np.round(poly * 16).astype(np.int32)], color, cv2.LINE_AA, shift=4)
    for k in (0.8, 1.1, 1.4):
        a, b = (np.round(eyes + s * 1.05 * iod * u + k * d * v).astype(int) for s in (-1, 1))
        cv2.line(out, tuple(a.tolist()), tuple(b.tolist()), tuple(int(c * 0.85) for c in color), 2, cv2.LINE_AA)
    return out


def stretched_astronaut(img: np.ndarray) -> np.ndarray:
    """Scikit-image's astronaut stretched 3 times in height, cut to 512 x 512 around her face: YuNet
    finds it at 0.80 in a tall box (w / h 0.46). YuNet's boxes on squeezed faces do not get much
    thinner (0.46 - 0.54 from 2.5 to 3 times); stretched further, it finds nothing."""
    tall = cv2.resize(img, None, fx=1.0, fy=3.0)
    return np.ascontiguousarray(tall[36:548])


def test_box_constants_are_yunets_on_aligned_real_faces(yunet):
    """BOX_HEIGHT and BOX_ASPECT: YuNet's box on the real faces moved onto the template (twice its
    scale, mid-canvas) is within 25 % of the stated medians."""
    det = align.Detector(yunet)
    for name, path in real_photos().items():
        img = cv2.imread(str(path))
        face = align.find(det, img, "largest")[0][0]
        dst = align.template() * 2 + 112
        m, _ = cv2.estimateAffinePartial2D(face.landmarks, dst, method=cv2.LMEDS)
        canvas = cv2.warpAffine(img, m, (448, 448), borderMode=cv2.BORDER_REPLICATE)
        again = align.find(det, canvas, "largest")[0][0]
        g = plausible.geometry(again.box, again.landmarks)
        assert 1 / 1.25 < g["height"] / plausible.BOX_HEIGHT < 1.25, name
        assert 1 / 1.25 < g["aspect"] / plausible.BOX_ASPECT < 1.25, name


def test_photos_turned_90_180_270_give_upright_crops(yunet):
    """Each face is kept in the orientation YuNet is most sure of: the crop equals the unturned photo's
    crop and the rotation is recorded. Detected as given, the turned astronaut is a 0.84 - 0.85 face."""
    det, as_given = align.Detector(yunet), align.Detector(yunet, align.DetectorSettings(rotations="never"))
    for name, path in real_photos().items():
        img = cv2.imread(str(path))
        kept, _ = align.find(det, img, "largest")
        assert len(kept) == 1 and kept[0].rotation == 0, name
        ref = align.align(img, kept[0].landmarks).astype(np.float64)
        for r, code in TURN.items():
            turned = cv2.rotate(img, code)
            kept, _ = align.find(det, turned, "largest")
            assert len(kept) == 1 and kept[0].rotation == (360 - r) % 360, (name, r)
            crop = align.align(turned, kept[0].landmarks).astype(np.float64)
            assert np.abs(crop - ref).mean() < 2, (name, r)
            if name == "astronaut.png":
                wrong, _ = align.find(as_given, turned, "largest")  # the garbage, kept for comparison
                assert wrong and np.abs(align.align(turned, wrong[0].landmarks) - ref).mean() > 30


def test_fallback_turns_only_when_nothing_is_found(yunet):
    camera = cv2.rotate(cv2.imread(str(real_photos()["camera.png"])), cv2.ROTATE_90_CLOCKWISE)
    assert align.find(align.Detector(yunet, align.DetectorSettings(rotations="never")), camera, "all")[0] == []
    kept, _ = align.find(align.Detector(yunet, align.DetectorSettings(rotations="fallback")), camera, "all")
    assert [f.rotation for f in kept] == [270]


def test_a_cat_and_a_cup_are_no_faces(yunet):
    """scikit-image's cat (YuNet's best: 0.62, turned 90 degrees) and coffee cup (0.50): nothing kept."""
    det = align.Detector(yunet)
    for name, path in wheel_photos(NON_FACES).items():
        kept, rejected = align.find(det, cv2.imread(str(path)), "all")
        assert kept == [] and rejected == [], name


def test_a_tall_false_box_is_rejected_and_not_chosen(yunet):
    """A face stretched into a tall box beside a real one: `largest` took the tall box before."""
    img = cv2.imread(str(real_photos()["astronaut.png"]))
    photo = np.concatenate([img, stretched_astronaut(img)], axis=1)
    kept, rejected = align.find(align.Detector(yunet), photo, "largest")
    assert len(kept) == 1 and kept[0].box[0] < 512 and kept[0].box[2] / kept[0].box[3] > 0.7
    assert [(f.reason, f.box[0] > 512, f.score > 0.7) for f in rejected] == [("box aspect", True, True)]
    assert rejected[0].area > kept[0].area


def test_masked_faces_are_found(yunet):
    """A drawn surgical mask over both real faces, blue and white: found at the default threshold, in
    place (scores 0.78 - 0.91 over 48 reframed copies, see the report in the commit)."""
    det = align.Detector(yunet)
    for name, path in real_photos().items():
        img = cv2.imread(str(path))
        face = align.find(det, img, "largest")[0][0]
        for color in ((235, 205, 160), (245, 245, 245)):
            kept, _ = align.find(det, draw_mask(img, face.landmarks, color), "all")
            assert len(kept) == 1 and kept[0].score > 0.7, name
            assert align.overlap(kept[0].box, face.box) > 0.6
            # eyes in place: within 0.15 box heights (the cameraman, yawed, loses 9 px of 82 under the white mask)
            assert np.abs(kept[0].landmarks[:2] - face.landmarks[:2]).max() < 0.15 * face.box[3]


# --------------------------------------------------------------------------- the stage's records


def exif_rotated_jpeg(img: np.ndarray) -> bytes:
    """`img` stored turned 90 degrees counter-clockwise with EXIF orientation 6 ("turn 90 clockwise to show")."""
    ok, jpg = cv2.imencode(".jpg", cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">HHHIHHI", 1, 0x0112, 3, 1, 6, 0, 0)
    app1 = b"Exif\x00\x00" + tiff
    jpg = jpg.tobytes()
    return jpg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpg[2:]


def test_stage_records_rotation_and_rejections(yunet, tmp_path):
    img = cv2.imread(str(real_photos()["astronaut.png"]))
    root = tmp_path / "photos"
    root.mkdir()
    cv2.imwrite(str(root / "upright.png"), img)
    cv2.imwrite(str(root / "upside_down.png"), cv2.rotate(img, cv2.ROTATE_180))
    cv2.imwrite(str(root / "stretched.png"), stretched_astronaut(img))
    (root / "exif.jpg").write_bytes(exif_rotated_jpeg(img))
    (root / "cat.png").write_bytes(wheel_photos(NON_FACES)["chelsea.png"].read_bytes())
    names = ["upright.png", "upside_down.png", "stretched.png", "exif.jpg", "cat.png"]
    lst = tmp_path / "photos.txt"
    lst.write_text("".join(n + "\n" for n in names))
    cfg = stage_config(tmp_path, lst, root, yunet)
    summary = stage.run(cfg, progress=False)
    assert (summary.faces, summary.failures, summary.rejected) == (3, 2, 1)
    out = Path(cfg["align"]["list"])
    faces_csv, failures_csv = stage.sidecars(out)
    faces = read_csv(faces_csv)
    assert list(faces[0]) == stage.FACE_COLUMNS and stage.FACE_COLUMNS[-1] == "rotation"
    # the EXIF-tagged photo is decoded upright (OpenCV applies the orientation), so no turn is needed
    assert [(r["source_path"], r["rotation"]) for r in faces] == [
        ("upright.png", "0"),
        ("upside_down.png", "180"),
        ("exif.jpg", "0"),
    ]
    crops = [cv2.imread(str(tmp_path / "aligned" / c)).astype(np.float64) for c in out.read_text().split()]
    assert max(np.abs(c - crops[0]).mean() for c in crops[1:]) < 6  # JPEG round trips only
    assert {r["path"]: r["reason"] for r in read_csv(failures_csv)} == {
        "stretched.png": "no plausible face (box aspect)",
        "cat.png": "no face found",
    }
    rejected = read_csv(stage.rejected_csv(out))
    assert list(rejected[0]) == stage.REJECTED_COLUMNS
    assert [(r["path"], r["rotation"], r["reason"]) for r in rejected] == [("stretched.png", "0", "box aspect")]
    assert float(rejected[0]["score"]) > 0.7 and float(rejected[0]["figure"]) < plausible.ASPECT_RANGE[0]
