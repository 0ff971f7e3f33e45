"""Real faces for `bench/discovery.py`: every photo once, several photos per person, overlays drawn independently.

The issue-17 real-overlay figure came from a set where each photo appeared 15-20 times under
different overlays, so a row's "same-person neighbours" were copies of the same photo.  This
script builds the honest version: one row per photo, a person's rows are *different* photos, and
each crop gets each overlay independently at a fixed rate from a seeded RNG.

    # 1. photos grouped by person + a manifest (file, person, source, license, sha256)
    python bench/realset.py gather london --repo PATH/webmorphR.stim --out /work/scratch/photos-london
    python bench/realset.py gather orl --repo PATH/eigenfaces --out /work/scratch/photos-orl
    # 2. align (largest face), overlays, list + attrs CSV, then extract with SFace (fraction 1)
    python bench/realset.py build --photos /work/scratch/photos-london --out /work/scratch/real
    python bench/discovery.py --data /work/scratch/real

Sources (bench/real/*.csv are their manifests; no image is committed):

- ``london``: Face Research Lab London Set (DeBruine & Jones 2017, figshare 5047666 v5, CC BY 4.0),
  as shipped in github.com/debruine/webmorphR.stim (inst/neutral_front, inst/smiling_front):
  102 people x 2 photos (neutral, smiling; front, same session).
- ``orl``: the AT&T / ORL Database of Faces (40 people x 10 photos, 92 x 112 grey, taken
  1992-94), as shipped in github.com/JFonseca25/eigenfaces (resources/att_faces).  Its terms ask
  for credit to AT&T Laboratories Cambridge and grant no redistribution: the photos stay out of git.
  Grey photos: the ``gray`` overlay would change nothing, so it is never drawn there (always 0).

Output (`build --out DIR`): ``DIR/images/<NNNNNN>.png`` (one per aligned photo), ``DIR/list.txt``,
``DIR/list.attrs.csv`` (`introspect.synth.spec.COLUMNS`; pose "frontal", occluder "none"),
``DIR/list.source.csv`` (row -> file, person, photo sha256, source, license), ``DIR/aligned/`` (the align stage's
crops and CSVs) and ``DIR/run/`` (`introspect extract`, fraction 1.0: ``subset.h5`` = ``full.h5``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from introspect.errors import UserError  # noqa: E402
from introspect.synth.spec import COLUMNS, SIZE, TEMPLATE  # noqa: E402

MANIFEST_COLUMNS = ("file", "person", "source", "license", "sha256")
OVERLAYS = ("glasses", "mask", "dark", "gray", "blur")
#: Fixed per-overlay rate: high enough that a few hundred photos give >= 5 positives per attribute.
RATE = 0.15

LONDON = (
    "Face Research Lab London Set (DeBruine & Jones 2017, doi:10.6084/m9.figshare.5047666.v5) "
    "via github.com/debruine/webmorphR.stim@{commit}:{path}"
)
ORL = "AT&T/ORL Database of Faces (AT&T Laboratories Cambridge) via github.com/JFonseca25/eigenfaces@{commit}:{path}"


# --------------------------------------------------------------------------- overlays


def _eyes_and_mouth(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The template's landmarks scaled to a `size` crop: eyes (2, 2), nose (2,), mouth corners (2, 2)."""
    t = TEMPLATE * (size / SIZE)
    return t[:2], t[2], t[3:]


def glasses(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A dark band over both eyes (sunglasses-like): two near-black lenses joined by a bridge."""
    out = img.copy()
    s = img.shape[0]
    eyes, _, _ = _eyes_and_mouth(s)
    half_w, half_h = s * rng.uniform(0.12, 0.14), s * rng.uniform(0.07, 0.09)
    shade = np.array(rng.uniform(10, 40, 3), dtype=np.uint8).tolist()
    for x, y in eyes:
        cv2.ellipse(out, (round(x), round(y)), (round(half_w), round(half_h)), 0, 0, 360, shade, -1, cv2.LINE_AA)
    y = round(eyes[:, 1].mean() - s * 0.02)
    cv2.line(out, (round(eyes[0, 0]), y), (round(eyes[1, 0]), y), shade, max(2, s // 40), cv2.LINE_AA)
    return out


def mask(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A filled polygon over nose tip to chin (medical-mask-like), light blue or white."""
    out = img.copy()
    s = img.shape[0]
    _, nose, mouth = _eyes_and_mouth(s)
    top = nose[1] - s * rng.uniform(0.0, 0.04)
    left, right = mouth[0, 0] - s * 0.20, mouth[1, 0] + s * 0.20
    poly = np.array(
        [
            (left, top + s * 0.03),
            (nose[0], top - s * 0.02),
            (right, top + s * 0.03),
            (right - s * 0.03, s * 0.93),
            (nose[0], s * 1.02),
            (left + s * 0.03, s * 0.93),
        ]
    )
    colour = [(235, 215, 190), (235, 235, 235), (220, 225, 175)][int(rng.integers(3))]  # BGR: blue, white, teal
    cv2.fillPoly(out, [np.round(poly).astype(np.int32)], colour, cv2.LINE_AA)
    return out


def dark(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Under-exposed: gamma up and gain down, so mid-tones drop most."""
    gamma, gain = rng.uniform(1.8, 2.4), rng.uniform(0.45, 0.6)
    x = img.astype(np.float32) / 255.0
    return np.clip(255.0 * gain * x**gamma, 0, 255).round().astype(np.uint8)


def gray(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Grey-scale, kept as 3 channels so the net's input is unchanged in shape."""
    return cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)


def blur(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur, sigma 1.8-2.6 px on a 112 crop (scaled with the crop)."""
    sigma = rng.uniform(1.8, 2.6) * img.shape[0] / SIZE
    return cv2.GaussianBlur(img, (0, 0), sigma)


APPLY = {"glasses": glasses, "mask": mask, "dark": dark, "gray": gray, "blur": blur}


def draw_overlays(n: int, seed: int, rate: float = RATE, grey_rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Independent Bernoulli(rate) per overlay and row; `grey_rows` never get `gray` (it would be a no-op)."""
    rng = np.random.default_rng(seed)
    drawn = {name: rng.random(n) < rate for name in OVERLAYS}
    if grey_rows is not None:
        drawn["gray"] &= ~np.asarray(grey_rows, dtype=bool)
    return drawn


def apply_overlays(img: np.ndarray, flags: dict[str, bool], rng: np.random.Generator) -> np.ndarray:
    """Occluders first (glasses, mask), then the photometric ones (dark, gray, blur), as a camera would."""
    for name in OVERLAYS:
        if flags[name]:
            img = APPLY[name](img, rng)
    return img


def attrs_row(path: str, identity: int, flags: dict[str, bool]) -> dict[str, str]:
    """One attrs-CSV row in `synth.spec.COLUMNS`: identity an integer (as synth's), glasses "sun", mask "medical"."""
    return {
        "path": path,
        "identity": str(int(identity)),
        "glasses": "sun" if flags["glasses"] else "none",
        "mask": "medical" if flags["mask"] else "none",
        "pose": "frontal",
        "dark": str(int(flags["dark"])),
        "gray": str(int(flags["gray"])),
        "blur": str(int(flags["blur"])),
        "occluder": "none",
    }


# --------------------------------------------------------------------------- manifest


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(photos: Path, manifest: Path) -> list[dict[str, str]]:
    """The manifest's rows, each photo checked present, unchanged (sha256) and *not a duplicate*."""
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or any(c not in rows[0] for c in MANIFEST_COLUMNS):
        raise UserError(f"{manifest}: needs columns {', '.join(MANIFEST_COLUMNS)}")
    seen: dict[str, str] = {}
    for r in rows:
        p = photos / r["file"]
        if not p.is_file():
            raise UserError(f"{manifest}: {r['file']} is not under {photos}; run `realset.py gather` first")
        h = sha256(p.read_bytes())
        if h != r["sha256"]:
            raise UserError(f"{p}: sha256 {h[:12]} is not the manifest's {r['sha256'][:12]}: another photo")
        if h in seen:
            raise UserError(f"{r['file']} is the same photo as {seen[h]}: each photo must appear once")
        seen[h] = r["file"]
    return rows


def write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        w.writerows(rows)


# --------------------------------------------------------------------------- gather


def _git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True).stdout


def gather(source: str, repo: Path, out: Path) -> Path:
    """Copy one source's photos out of its git repository (bare or checked out) into out/<person>/."""
    commit = _git(repo, "rev-parse", "HEAD").decode().strip()
    names = _git(repo, "ls-tree", "-r", "--name-only", "HEAD").decode().splitlines()
    rows = []
    if source == "london":
        picks = [
            n
            for n in names
            if n.startswith(("inst/neutral_front/", "inst/smiling_front/")) and n.endswith(".jpg") and "/._" not in n
        ]
        for n in sorted(picks, key=lambda n: Path(n).name):  # a person's photos together
            person = "london_" + Path(n).stem.split("_")[0]
            data = _git(repo, "show", f"HEAD:{n}")
            rel = f"{person}/{Path(n).name}"
            rows.append((rel, person, LONDON.format(commit=commit, path=n), "CC BY 4.0", data))
    elif source == "orl":
        picks = [n for n in names if n.startswith("resources/att_faces/s") and n.endswith(".pgm")]
        for n in sorted(picks, key=lambda n: (int(Path(n).parent.name[1:]), int(Path(n).stem))):
            person = f"orl_s{int(Path(n).parent.name[1:]):02d}"
            img = cv2.imdecode(np.frombuffer(_git(repo, "show", f"HEAD:{n}"), np.uint8), cv2.IMREAD_GRAYSCALE)
            # The face fills the 92 x 112 frame; the detector needs some context around it.
            img = cv2.copyMakeBorder(img, 56, 56, 56, 56, cv2.BORDER_REPLICATE)
            ok, png = cv2.imencode(".png", img)
            rel = f"{person}/{Path(n).stem}.png"
            lic = "research use, credit AT&T Laboratories Cambridge; not redistributed"
            rows.append((rel, person, ORL.format(commit=commit, path=n) + " (edge-padded 56 px)", lic, png.tobytes()))
    else:
        raise UserError(f"unknown source {source!r}: london or orl")
    manifest = []
    for rel, person, src, lic, data in rows:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
        manifest.append({"file": rel, "person": person, "source": src, "license": lic, "sha256": sha256(data)})
    write_manifest(out / "manifest.csv", manifest)
    per = Counter(r["person"] for r in manifest)
    print(f"{source}: {len(manifest)} photos of {len(per)} people ({min(per.values())}-{max(per.values())} each)")
    return out / "manifest.csv"


# --------------------------------------------------------------------------- build


def _introspect(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "introspect.cli", *args], check=True)


def build(photos: Path, manifest: Path, out: Path, seed: int, rate: float, extract: bool) -> None:
    rows = read_manifest(photos, manifest)
    if out.exists() and any(out.iterdir()):
        # extract would reuse a stale full.h5: the list's names are the same, the pixels not
        raise UserError(f"{out} is not empty: remove it or pick another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "photos.txt").write_text("".join(r["file"] + "\n" for r in rows))
    aligned_list = out / "aligned" / "aligned.txt"
    _introspect(
        "align", "-q", "--list", str(out / "photos.txt"), "--root", str(photos), "--out", str(out / "aligned"),
        "--out-list", str(aligned_list), "--faces", "largest",
    )  # fmt: skip
    with open(aligned_list.with_name("aligned.faces.csv"), newline="") as f:
        faces = list(csv.DictReader(f))
    crops = aligned_list.read_text().splitlines()
    src = [rows[int(f["source_line"])] for f in faces]
    imgs = [cv2.imread(str(out / "aligned" / c), cv2.IMREAD_COLOR) for c in crops]
    grey_rows = np.array([bool(np.ptp(i.astype(np.int16), axis=2).max() <= 2) for i in imgs])
    drawn = draw_overlays(len(imgs), seed, rate, grey_rows)
    rng = np.random.default_rng(seed + 1)  # the overlays' shapes and strengths, apart from whether they are drawn
    ids = {p: i for i, p in enumerate(sorted({r["person"] for r in src}))}  # names stay in list.source.csv
    (out / "images").mkdir(exist_ok=True)
    attrs, lines = [], []
    for i, (img, r) in enumerate(zip(imgs, src)):
        flags = {k: bool(v[i]) for k, v in drawn.items()}
        name = f"{i:06d}.png"
        cv2.imwrite(str(out / "images" / name), apply_overlays(img, flags, rng))
        lines.append(name)
        attrs.append(attrs_row(name, ids[r["person"]], flags))
    (out / "list.txt").write_text("".join(n + "\n" for n in lines))
    with open(out / "list.attrs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(attrs)
    with open(out / "list.source.csv", "w", newline="") as f:
        # photo: the source photo's sha256, the "same photo" id `science.identity` can take
        w = csv.DictWriter(f, fieldnames=("path", "file", "person", "photo", "source", "license"))
        w.writeheader()
        w.writerows(
            {"path": n, "photo": r["sha256"], **{k: r[k] for k in ("file", "person", "source", "license")}}
            for n, r in zip(lines, src)
        )
    per = Counter(r["person"] for r in src)
    counts = ", ".join(f"{k} {int(v.sum())}" for k, v in drawn.items())
    print(
        f"{len(rows)} photos -> {len(imgs)} crops ({len(rows) - len(imgs)} without a face), {len(per)} people, "
        f"{min(per.values())}-{max(per.values())} photos each, {sum(v >= 3 for v in per.values())} with >= 3; "
        f"overlays: {counts}"
    )
    if extract:
        _introspect(
            "extract", "-q", "--list", str(out / "list.txt"), "--root", str(out / "images"), "--out", str(out / "run"),
            "--set", "extract.fraction=1.0",
        )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gather", help="copy a source's photos out of its git repository, with a manifest")
    g.add_argument("source", choices=("london", "orl"))
    g.add_argument("--repo", type=Path, required=True, help="the source's git repository (bare or checked out)")
    g.add_argument("--out", type=Path, required=True)
    b = sub.add_parser("build", help="align, overlay, write list + attrs, extract")
    b.add_argument("--photos", type=Path, required=True, help="folder with <person>/<photo> and manifest.csv")
    b.add_argument("--manifest", type=Path, help="default: PHOTOS/manifest.csv")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--rate", type=float, default=RATE)
    b.add_argument("--no-extract", action="store_true")
    a = p.parse_args(argv)
    try:
        if a.cmd == "gather":
            gather(a.source, a.repo, a.out)
        else:
            build(a.photos, a.manifest or a.photos / "manifest.csv", a.out, a.seed, a.rate, not a.no_extract)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
