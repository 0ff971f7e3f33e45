"""Images from object storage (a local S3 server) vs the same images on disk: read + decode, images/s.

In one run, on the same N synthetic faces (`introspect.synth`), as loose files, an InsightFace
`train.rec`/`.idx` and tar shards of 1,000 members: each format read + decoded to 112 x 112
(`images.decode_batch` fed by `sources.batch_reader`, what the stream's decoding threads do), in
batches of 64 on every core,
  - from disk;
  - from moto's S3 server (`moto.server`, its own process on 127.0.0.1) through `s3://`;
  - from an HTTP server that answers every request `--latency` ms late (S3's first-byte latency
    is tens of ms), through `http://`: batched (`read_many`: a batch's GETs in flight together)
    and one GET at a time (what reading each line as asked would cost).
Printed: images/s and the ratio to the same format on disk. Best of `--repeat`; warm page cache.

moto's server is Python (werkzeug, ~30-50 requests/s per core here) on the same cores as the
decoding: its figures are a floor set by that server, not by S3. The latency server is asyncio
and cheap per request: its figures show what the batch in flight does against a slow first byte.

    .venv/bin/python bench/storage.py [--n 2000] [--repeat 2] [--latency 20]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from sources import write_rec, write_tars  # noqa: E402  (bench/sources.py's writers)

from introspect import synth  # noqa: E402
from introspect.engine.images import MAX_BYTES, decode_batch  # noqa: E402
from introspect.engine.remote import Storage  # noqa: E402
from introspect.engine.sources import batch_reader, open_source  # noqa: E402

SIZE = (112, 112)
BATCH = 64
BUCKET = "bench"


def rate(src, keys: list[str], threads: int, repeat: int, batched: bool = True) -> float:
    """Best images/s reading + decoding `keys` from `src` in batches of 64 on `threads` threads."""
    batches = [keys[i : i + BATCH] for i in range(0, len(keys), BATCH)]
    buffers = [np.empty((BATCH, *SIZE, 3), np.uint8) for _ in range(threads)]

    def one(ib):
        i, b = ib
        read = batch_reader(src, b, MAX_BYTES) if batched else (lambda k: src.read(k, MAX_BYTES))
        return int(decode_batch(b, read, SIZE, buffers[i % threads][: len(b)])[1].sum())

    best = 0.0
    for _ in range(repeat):
        t = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            got = sum(pool.map(one, enumerate(batches)))
        best = max(best, len(keys) / (time.perf_counter() - t))
        assert got == len(keys), f"{len(keys) - got} images failed"
    return best


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def moto_process() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process (its own interpreter lock), and its endpoint once it answers."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).read()
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto's server did not start")


def latency_server(folder: Path, latency: float) -> str:
    """An asyncio HTTP server on a thread: files under `folder`, Range honoured, every reply `latency` s late."""
    import asyncio

    from aiohttp import web

    async def serve(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(latency)
        path = folder / request.match_info["path"]
        if not path.is_file():
            return web.Response(status=404)
        data = path.read_bytes()
        rng = request.headers.get("Range")
        if rng:
            lo, hi = (int(x) if x else None for x in rng.split("=", 1)[1].split("-"))
            hi = len(data) - 1 if hi is None else min(hi, len(data) - 1)
            if lo >= len(data):
                return web.Response(status=416)
            return web.Response(
                status=206, body=data[lo : hi + 1], headers={"Content-Range": f"bytes {lo}-{hi}/{len(data)}"}
            )
        return web.Response(body=data)

    app = web.Application()
    app.router.add_get("/{path:.*}", serve)
    port, loop, ready = free_port(), asyncio.new_event_loop(), threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    ready.wait(30)
    return f"http://127.0.0.1:{port}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--latency", type=float, default=20.0, help="ms the HTTP server waits before each reply")
    args = ap.parse_args()
    import boto3

    server, endpoint = moto_process()
    opts = {"endpoint_url": endpoint, "key": "bench", "secret": "bench", "client_kwargs": {"region_name": "us-east-1"}}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            synth.synthesize(args.n, 0, tmp / "loose", tmp / "list.txt", progress=False)
            rel = (tmp / "list.txt").read_text().splitlines()
            blobs = [(tmp / "loose" / p).read_bytes() for p in rel]
            (tmp / "rec").mkdir()
            write_rec(tmp / "rec" / "train.rec", blobs)
            write_tars(tmp / "tars", rel, blobs)
            c = boto3.client(
                "s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench",
                region_name="us-east-1",
            )  # fmt: skip
            c.create_bucket(Bucket=BUCKET)
            with ThreadPoolExecutor(8) as pool:
                files = [p for p in tmp.rglob("*") if p.is_file()]
                list(pool.map(lambda p: c.upload_file(str(p), BUCKET, p.relative_to(tmp).as_posix()), files))
            storage = Storage(opts)
            ids = [str(i) for i in range(1, len(rel) + 1)]
            tar_keys = list(open_source("tar", tmp / "tars").keys())
            cases = {
                "files": ("loose", rel),
                "recordio": ("rec/train.rec", ids),
                "tar": ("tars", tar_keys),
            }
            cores = os.cpu_count() or 2
            web = latency_server(tmp, args.latency / 1000)
            print(
                f"{args.n} synthetic faces ({sum(map(len, blobs)) / 1e6:.1f} MB); read + decode to "
                f"{SIZE[0]}x{SIZE[1]}, batches of {BATCH}, {cores} threads, best of {args.repeat}; "
                f"s3 = moto's server ({endpoint}); http = {args.latency:g} ms per reply ({web})"
            )
            for name, (root, keys) in cases.items():
                disk = rate(open_source(name, tmp / root), keys, cores, args.repeat)
                s3 = rate(open_source(name, f"s3://{BUCKET}/{root}", storage), keys, cores, args.repeat)
                http = rate(open_source(name, f"{web}/{root}"), keys, cores, args.repeat)
                single = rate(open_source(name, f"{web}/{root}"), keys, cores, 1, batched=False)
                print(
                    f"  {name:9s} disk {disk:6.0f}/s | s3 {s3:5.0f}/s x{s3 / disk:.3f} | http batched {http:5.0f}/s "
                    f"x{http / disk:.3f} | http one at a time {single:4.0f}/s (batched x{http / single:.1f} of it)"
                )
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
