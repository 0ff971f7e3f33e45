"""Reading images from a RecordIO pair and from tar shards vs loose files of the same images.

In one run, on the same N synthetic faces (`introspect.synth`): read + decode to 112 x 112
(`images.decode_batch`, what the stream's decoding threads do) from
  - loose files (`FileSource`), and the pre-sources path `images.read_batch` on the same paths;
  - an InsightFace-style `train.rec` / `train.idx` (`RecordIOSource`), written here after the spec;
  - tar shards of 1,000 members (`TarSource`);
on one thread and on every core, best of `--repeat`. Printed: images/s and the ratio to loose
files. The page cache is warm for all (each is read once before timing): this measures the
per-image cost of the reading path, not the disk.

    .venv/bin/python bench/sources.py [--n 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import os
import struct
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from introspect import synth  # noqa: E402
from introspect.engine.images import MAX_BYTES, decode_batch, read_batch  # noqa: E402
from introspect.engine.sources import MAGIC, open_source  # noqa: E402

SIZE = (112, 112)
BATCH = 64


def write_rec(path: Path, images: list[bytes]) -> None:
    """InsightFace's layout: header record 0 (flag 2, label [n + 1, n + 1]), images 1..n; dmlc framing."""
    magic = struct.pack("<I", MAGIC)

    def frame(payload: bytes) -> bytes:
        out, dptr, n = [], 0, len(payload)
        for i in range(0, (n >> 2) << 2, 4):
            if payload[i : i + 4] == magic:
                out += [magic, struct.pack("<I", ((1 if dptr == 0 else 2) << 29) | (i - dptr)), payload[dptr:i]]
                dptr = i + 4
        out += [magic, struct.pack("<I", ((3 if dptr else 0) << 29) | (n - dptr)), payload[dptr:]]
        return b"".join(out) + b"\0" * (((n + 3) & ~3) - n)

    n = len(images)
    with open(path, "wb") as rec, open(path.with_suffix(".idx"), "w") as idx:
        head = struct.pack("<IfQQ", 2, 0.0, 0, 0) + np.array([n + 1, n + 1], np.float32).tobytes()
        for rid, payload in enumerate(
            [head] + [struct.pack("<IfQQ", 0, float(i % 100), i, 0) + b for i, b in enumerate(images, 1)]
        ):
            idx.write(f"{rid}\t{rec.tell()}\n")
            rec.write(frame(payload))


def write_tars(folder: Path, names: list[str], images: list[bytes], per: int = 1000) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(images), per):
        with tarfile.open(folder / f"shard-{s // per:05d}.tar", "w") as tf:
            for name, data in zip(names[s : s + per], images[s : s + per]):
                info = tarfile.TarInfo(name.replace("/", "_"))
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def rate(fn, batches: list[list[str]], threads: int, repeat: int) -> float:
    """Best images/s of `fn(batch, out)` over the batches on `threads` threads."""
    buffers = [np.empty((BATCH, *SIZE, 3), np.uint8) for _ in range(threads)]
    n = sum(len(b) for b in batches)
    best = 0.0
    for _ in range(repeat):
        t = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            got = sum(pool.map(lambda ib: int(fn(ib[1], buffers[ib[0] % threads])[1].sum()), enumerate(batches)))
        best = max(best, n / (time.perf_counter() - t))
        assert got == n, f"{n - got} images failed"
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synth.synthesize(args.n, 0, tmp / "loose", tmp / "list.txt", progress=False)
        rel = (tmp / "list.txt").read_text().splitlines()
        blobs = [(tmp / "loose" / p).read_bytes() for p in rel]
        write_rec(tmp / "train.rec", blobs)
        write_tars(tmp / "tars", rel, blobs)
        sources = {
            "files": (open_source("files", tmp / "loose"), rel),
            "recordio": (open_source("recordio", tmp / "train.rec"), [str(i) for i in range(1, len(rel) + 1)]),
        }
        tar = open_source("tar", tmp / "tars")
        sources["tar"] = (tar, list(tar.keys()))
        size_mb = (tmp / "train.rec").stat().st_size / 1e6
        print(
            f"{args.n} synthetic faces, {size_mb:.1f} MB as .rec; read + decode to {SIZE[0]}x{SIZE[1]}, "
            f"batches of {BATCH}, best of {args.repeat}, warm page cache"
        )
        cores = os.cpu_count() or 2
        paths = [str(tmp / "loose" / p) for p in rel]
        old = [paths[i : i + BATCH] for i in range(0, len(paths), BATCH)]
        rows = {}
        for threads in (1, cores):
            rows[("files (read_batch, before)", threads)] = rate(
                lambda b, out: read_batch(b, SIZE, out[: len(b)]), old, threads, args.repeat
            )
            for name, (src, keys) in sources.items():
                batches = [keys[i : i + BATCH] for i in range(0, len(keys), BATCH)]

                def fn(b, out, src=src):
                    return decode_batch(b, lambda k: src.read(k, MAX_BYTES), SIZE, out[: len(b)])

                rows[(name, threads)] = rate(fn, batches, threads, args.repeat)
        for threads in (1, cores):
            base = rows[("files", threads)]
            print(f"-- {threads} thread{'s' * (threads > 1)}")
            for (name, t), r in rows.items():
                if t == threads:
                    print(f"  {name:28s} {r:9.0f} images/s   x{r / base:.2f} of files")


if __name__ == "__main__":
    main()
