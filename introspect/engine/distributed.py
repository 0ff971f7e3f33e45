"""The Ray Data engine: the stream's chunks decoded on CPU workers, the net in an actor pool.

`stream.run` with `engine = "ray"` hands the chunks still to do to `infer`, which builds one
Ray Data pipeline (streaming, so memory stays bounded by Ray's back-pressure):

1. one item per chunk (its byte offset in the list and the positions to run), expanded on the
   workers into one row per image (`expand`, reading its lines from the shared list file);
2. decoding on CPU tasks (`decode`): a fixed-size uint8 image per row, zeros and a reason
   when the file cannot be used, so every block has one shape;
3. the net in an actor pool (`Infer`: one session per actor, one actor per GPU or `actors`
   on CPU), fed the uint8 images as they are: the net normalizes them (`graph.take_images`),
   as in the local engine, so only raw pixels travel between workers. On CPU, Ray fuses steps
   2 and 3 (same resources), so each actor decodes its own batches and no pixels travel. The
   pool may shrink to one actor: a cluster that loses a node restarts the lost actor where
   there is room, and a fixed-size pool would wait for room that never comes (a hang, seen
   on a three-node cluster losing a worker: tests/test_ray_cluster.py);
4. back on the driver, only the fetched outputs (C + D floats per image, not pixels): rows are
   gathered per chunk and each finished chunk is written as the same part file the local
   engine writes, in position order.

The driver then finalizes the parts exactly as the local engine does, so the result files
are the same rows in the same order (tested against the local engine), and a killed run
resumes at chunk granularity from the parts already written. Workers must see the list,
the images and nothing else: the model travels as bytes, the parts are written by the driver.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import images as images_mod
from . import runtime, sources, store
from .images import DecodeLimits
from .remote import Storage

log = logging.getLogger(__name__)


def chunk_offsets(list_path: Path, chunk_size: int) -> list[int]:
    """Byte offset of each chunk's first line: workers seek there instead of reading the list from the top."""
    offsets, pos = [], 0
    with open(list_path, "rb") as f:
        for i, line in enumerate(f):
            if i % chunk_size == 0:
                offsets.append(pos)
            pos += len(line)
    return offsets


def expand(item: dict, list_path: str) -> list[dict]:
    """A chunk item -> one row per image to run: (chunk, position, printable line, the line's bytes)."""
    with open(list_path, "rb") as f:
        f.seek(int(item["offset"]))
        lines = [f.readline() for _ in range(int(item["lines"]))]
    rows = []
    for p in np.asarray(item["run"]).tolist():
        raw = lines[p].rstrip(b"\r\n").decode("utf-8", "surrogateescape")
        printable = store.printable(raw)
        rows.append(
            {
                "chunk": int(item["chunk"]),
                "pos": p,
                "line": printable,
                "path": raw.encode("utf-8", "surrogateescape"),  # read through the source on the decoder
            }
        )
    return rows


#: Sources opened on this worker process, by (format, root, storage): a RecordIO index is parsed once per worker.
_SOURCES: dict[tuple[str, str, str], sources.Source] = {}


def _source(format: str, root: str, storage: dict | None = None) -> sources.Source:
    key = (format, root, json.dumps(storage or {}, sort_keys=True, default=str))
    if key not in _SOURCES:
        _SOURCES[key] = sources.open_source(format, root, Storage.from_config(storage or {}))
    return _SOURCES[key]


def decode(
    batch: dict,
    size: tuple[int, int],
    limits: dict | None = None,
    format: str = "files",
    root: str = "",
    storage: dict | None = None,
) -> dict:
    """Decode a batch of rows: uint8 H x W x 3 images (zeros when unusable), ok flags and reasons."""
    n = len(batch["path"])
    images = np.zeros((n, size[0], size[1], 3), np.uint8)
    ok = np.zeros(n, bool)
    reasons = []
    limits = DecodeLimits(**(limits or {}))
    src = _source(format, root, storage)
    lines = [bytes(p).decode("utf-8", "surrogateescape") for p in batch["path"]]
    read = sources.batch_reader(src, lines, limits.max_bytes)  # a remote batch: all reads in flight
    for i, line in enumerate(lines):
        data, reason = read(line)  # "": empty line
        img = None
        if data is not None:
            img, reason = images_mod.decode(data, size, limits.max_pixels)
        if img is not None:
            images[i], ok[i] = img, True
        reasons.append("" if img is not None else reason)
    return {
        "chunk": batch["chunk"],
        "pos": batch["pos"],
        "line": batch["line"],
        "image": images,
        "ok": ok,
        "reason": np.array(reasons, dtype=object),
    }


class Infer:
    """One onnxruntime session per actor; the outputs of the usable images, zeros for the others."""

    def __init__(
        self, model: bytes, input_name: str, fetch: dict[str, str], schema: dict, device: str, transform=None
    ) -> None:
        import onnx

        self.runner = runtime.Runner(onnx.ModelProto.FromString(model), list(fetch.values()), device)
        self.input, self.fetch, self.schema, self.transform = input_name, fetch, schema, transform

    def __call__(self, batch: dict) -> dict:
        ok = np.asarray(batch["ok"], bool)
        n = len(ok)
        out = {name: np.zeros((n, *shape), dtype) for name, (shape, dtype) in self.schema.items()}
        if ok.any():
            got = dict(zip(self.fetch, self.runner.run({self.input: np.asarray(batch["image"])[ok]})))
            if self.transform is not None:
                got = self.transform(got)
            for name, values in got.items():
                out[name][ok] = values
        return {
            "chunk": batch["chunk"],
            "pos": batch["pos"],
            "line": batch["line"],
            "ok": ok,
            "reason": batch["reason"],
            **out,
        }


def _reachable(address: str) -> None:
    """Fail in seconds with one line, not after Ray's minutes of retries, when nothing listens there."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot reach the Ray cluster at {address} ({e}); check --address (or RAY_ADDRESS), "
            "or leave it empty for a local cluster"
        ) from None


def _init(address: str | None, actors: int) -> dict:
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs = {} if address else {"num_cpus": os.cpu_count() or 2}
        if address and address != "auto":
            _reachable(address)
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                ignore_reinit_error=True,
                configure_logging=False,
                **kwargs,
            )
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(
                f"cannot reach the Ray cluster at {address}: {str(e).splitlines()[0]}; "
                "check --address (or RAY_ADDRESS), or leave it empty for a local cluster"
            ) from None
        log.info("ray: %s", "cluster at " + address if address else "a local cluster on this machine")
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    cpus = int(res.get("CPU", 1))
    return {"gpus": gpus, "cpus": cpus, "actors": actors or (gpus if gpus else max(1, cpus // 2))}


def infer(chunks, job, inputs, settings, tracker) -> Iterator:
    """Finished chunks (stream.Chunk) of `chunks`, run on Ray: the stream writes each as its part.

    The driver keeps no list lines: a chunk's lines are counted and dropped as it is planned.
    """
    try:
        import ray
        import ray.data
    except ModuleNotFoundError:
        raise UserError("engine 'ray' needs Ray Data: pip install -e '.[distributed]'") from None
    offsets = chunk_offsets(inputs.list.path, settings.chunk_size)
    by_id, items = {}, []
    for c in chunks:
        if not len(c.run):  # a --no-full chunk without subset lines: an empty part, as locally
            yield c
            continue
        items.append(
            {"chunk": c.id, "offset": offsets[c.id], "lines": len(c.lines), "run": np.asarray(c.run, np.int64)}
        )
        c.lines = []
        by_id[c.id] = c
    if not items:
        return
    res = _init(settings.address or None, settings.actors)
    use_gpu = res["gpus"] > 0 and settings.device != "cpu"
    batch = runtime.batch_size(settings.batch_size, use_gpu)
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.flat_map(expand, fn_kwargs={"list_path": str(inputs.list.path)})
    reach = inputs.storage
    where = {
        "format": inputs.format,
        "root": str(inputs.root),
        "storage": {"storage_options": reach.options, "timeout": reach.timeout},
    }
    limits = inputs.limits.as_dict()
    ds = ds.map_batches(decode, fn_kwargs={"size": tuple(job.pre.size), "limits": limits, **where}, batch_size=batch)
    ds = ds.map_batches(
        Infer,
        batch_size=batch,
        concurrency=(1, res["actors"]) if res["actors"] > 1 else 1,  # a pool that can shrink with the cluster
        num_gpus=1 if use_gpu else 0,
        fn_constructor_kwargs={
            "model": job.model.SerializeToString(),
            "input_name": job.input,
            "fetch": job.fetch,
            "schema": job.schema,
            "device": "cuda" if use_gpu else "cpu",
            "transform": job.transform,
        },
    )
    log.info("ray: %d chunks, %d inference actors (%s)", len(items), res["actors"], "GPU" if use_gpu else "CPU")
    pending: dict[int, list[dict]] = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        usable = 0
        for cid in np.unique(batch["chunk"]).tolist():
            sel = batch["chunk"] == cid
            pending.setdefault(cid, []).append({k: v[sel] for k, v in batch.items()})
            if by_id[cid].remaining == sum(len(p["pos"]) for p in pending[cid]):
                chunk = by_id.pop(cid)
                usable += _record(chunk, pending.pop(cid), job)
                yield chunk
        tracker.advance(len(batch["chunk"]), usable)


def _record(chunk, pieces: list[dict], job) -> int:
    """Rows of one chunk, in position order as the local engine writes them; returns the usable count."""
    rows = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
    order = np.argsort(rows["pos"], kind="stable")
    rows = {k: v[order] for k, v in rows.items()}
    ok = rows["ok"].astype(bool)
    failed = zip(map(str, rows["line"][~ok].tolist()), map(str, rows["reason"][~ok].tolist()))
    return chunk.record(rows["pos"], ok, {name: rows[name][ok] for name in job.schema}, failed)
