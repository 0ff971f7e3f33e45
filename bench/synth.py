"""Benchmark introspect.synth: images per second, written into a temporary folder.

    .venv/bin/python bench/synth.py --n 5000 [--workers 2] [--dir DIR] [--sheet /tmp/synth_sheet.png]

The temporary folder goes under bench/out/ (git-ignored) unless --dir says otherwise.  The
figure includes writing the JPEGs, so the filesystem matters: on some VM disks creating small
files right after many were deleted costs ~1 ms of kernel time each, which is slower than
drawing them.  The load average printed beside the figure says whether the cores were shared.

--sheet also renders a contact sheet (64 images, labels under each) so a person can check that
the faces look face-like and the planted attributes are visible.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from introspect.synth import attrs_path, synthesize

DEFAULTS = {
    "glasses": "none",
    "mask": "none",
    "pose": "frontal",
    "dark": "0",
    "gray": "0",
    "blur": "0",
    "occluder": "none",
}


def contact_sheet(root: Path, list_path: Path, out: Path, first: int = 0, count: int = 64, cols: int = 8) -> None:
    """Tile `count` images from `first` at 2x, each labelled with its identity and non-default attributes."""
    with open(attrs_path(list_path), newline="") as f:
        rows = list(csv.DictReader(f))[first : first + count]
    tile, label_h = 224, 30
    sheet = np.full((-(-len(rows) // cols) * (tile + label_h), cols * tile, 3), 255, np.uint8)
    for k, r in enumerate(rows):
        img = cv2.resize(cv2.imread(str(root / r["path"])), (tile, tile), interpolation=cv2.INTER_NEAREST)
        y, x = (k // cols) * (tile + label_h), (k % cols) * tile
        sheet[y : y + tile, x : x + tile] = img
        tags = [a if r[a] == "1" else f"{a}={r[a]}" for a in DEFAULTS if r[a] != DEFAULTS[a]]
        cv2.putText(
            sheet,
            f"id {r['identity']}",
            (x + 3, y + tile + 12),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.38,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
        cv2.putText(
            sheet,
            " ".join(tags)[:40],
            (x + 3, y + tile + 25),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.36,
            (0, 0, 200),
            1,
            cv2.LINE_AA,
        )
    cv2.imwrite(str(out), sheet)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="images to synthesize (default 5000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    ap.add_argument("--dir", type=Path, default=REPO / "bench" / "out", help="where the temporary folder goes")
    ap.add_argument("--sheet", type=Path, default=None, help="also write a contact sheet PNG of 64 images here")
    ap.add_argument("--sheet-first", type=int, default=0, help="index of the contact sheet's first image")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="synth_", dir=args.dir) as tmp:
        root, lst = Path(tmp) / "img", Path(tmp) / "lists" / "synth.txt"
        s = synthesize(args.n, args.seed, root, lst, workers=args.workers, progress=False)
        print(
            f"synth: {s['n']} images in {s['seconds']:.2f} s with {s['workers']} workers on {os.cpu_count()} cores: "
            f"{s['images_per_s']:.0f} images/s  (load average before: {load:.2f}; into {args.dir})"
        )
        if args.sheet is not None:
            contact_sheet(root, lst, args.sheet, first=args.sheet_first)
            print(f"contact sheet: {args.sheet}")


if __name__ == "__main__":
    main()
