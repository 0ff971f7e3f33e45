"""The streaming engine under extract and label: a list of images through a net, into HDF5 rows.

The list is read in chunks of `chunk_size` lines; decoding runs on a thread pool ahead of
inference (or on Ray workers: `distributed`); each finished chunk is written as a crash-safe
part (see `store`), so a killed run resumes where it stopped and memory stays flat however
long the list is. At the end the parts are copied in list order into the result files. A
stage says what to run with a `Job`: the model, what to fetch and store per image, the files
to write, and the settings that make two runs the same run (`identity`).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from more_itertools import chunked
from tqdm import tqdm

from ..errors import UserError, refuse_unless
from . import remote, runtime, sources, store
from .diagnose import Failures, NothingReadable, nothing_read, refuse_if_nothing_read
from .images import DecodeLimits, Preprocess, decode_batch
from .join import LOCAL_ATTRS, SHARD_FILE, join, settings_diff
from .lists import (
    AUTO_FRACTION,
    ListInfo,
    chunk_masks,
    open_list,
    read_lines,
    scan_list,
    subset_mask,
    subset_threshold,
)
from .rundir import RunDir, Shard, write_bytes
from .sources import Source, open_source

log = logging.getLogger(__name__)

#: `lists` and `join` were split out; their names stay reachable here.
__all__ = [
    "AUTO_FRACTION",
    "LOCAL_ATTRS",
    "SHARD_FILE",
    "Inputs",
    "Job",
    "ListInfo",
    "Shard",
    "StreamSettings",
    "Summary",
    "chunk_masks",
    "join",
    "open_list",
    "read_lines",
    "run",
    "scan_list",
    "subset_mask",
    "subset_threshold",
]


# --------------------------------------------------------------------------- settings


ENGINES = ("local", "ray")
DEVICES = ("auto", "cpu", "cuda")


#: [extract] keys that say how to stream, whatever the stage.
STREAMING = ("batch_size", "chunk_size", "workers", "device", "engine", "address", "actors")


@dataclass(frozen=True)
class StreamSettings:
    """How a list is streamed: batches, chunks, threads, device, engine, and which lines run.

    `fraction` and `seed` draw the subset (the reference's rule), with at least `min_subset` lines
    (0: the fraction exactly; `for_list` turns the two into the list's threshold); `full` runs
    every line, else only the subset's. Checked when made, so a mistake costs one line before any work.
    """

    batch_size: int = 0  # 0: the usual size for the device
    chunk_size: int = 4096
    workers: int = 0  # decoding threads; 0: one per core
    device: str = "auto"
    engine: str = "local"
    address: str = ""  # the Ray cluster ("" = RAY_ADDRESS, else a local one)
    actors: int = 0  # Ray inference actors; 0 = one per GPU, else half the CPUs
    fraction: float = 1.0
    seed: int = 0
    full: bool = True
    min_subset: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.engine in ENGINES, f"engine = {self.engine!r} is not one of: {', '.join(ENGINES)}"),
            (self.device in DEVICES, f"device = {self.device!r} is not one of: {', '.join(DEVICES)}"),
            (0 < self.fraction <= 1, f'fraction = {self.fraction} must be in (0, 1] (or "auto")'),
            (self.min_subset >= 0, f"min_subset = {self.min_subset} must be at least 0 (0: the fraction exactly)"),
            (0 <= self.seed < 2**32, f"seed = {self.seed} must be in 0 .. 2**32 - 1"),
            (self.batch_size >= 0, f"batch_size = {self.batch_size} must be at least 1 (or 0: the usual size)"),
            (self.chunk_size >= 1, f"chunk_size = {self.chunk_size} must be at least 1"),
            (self.workers >= 0, f"workers = {self.workers} must be at least 1 (or 0: one per core)"),
            (self.actors >= 0, f"actors = {self.actors} must be at least 1 (or 0: automatic)"),
        ]
        refuse_unless("extract", checks)

    @classmethod
    def from_config(cls, e: dict) -> StreamSettings:
        """From the pipeline's [extract]: `fraction = "auto"` is AUTO_FRACTION with at least `min_subset`
        lines; a number is exactly that share (the reference's rule), whatever `min_subset` says."""
        f = e["fraction"]
        if f == "auto":
            fraction, least = AUTO_FRACTION, e["min_subset"]
        elif isinstance(f, (int, float)) and not isinstance(f, bool):
            fraction, least = float(f), 0
        else:
            raise UserError(f'extract.fraction = {f!r} must be "auto" or a share in (0, 1], e.g. 0.02')
        return cls(
            **{k: e[k] for k in STREAMING}, fraction=fraction, seed=e["seed"], full=bool(e["full"]), min_subset=least
        )

    def for_list(self, lines: int) -> StreamSettings:
        """These settings with `fraction` the list's threshold (`subset_threshold`): what draws its subset."""
        return replace(self, fraction=subset_threshold(lines, self.fraction, self.seed, self.min_subset))

    @classmethod
    def for_every_line(cls, e: dict) -> StreamSettings:
        """The same streaming for a stage that runs every line (label): the subset keys play no part."""
        return cls(**{k: e[k] for k in STREAMING})

    @property
    def threads(self) -> int:
        return self.workers if self.workers > 0 else (os.cpu_count() or 2)


@dataclass(frozen=True)
class Inputs:
    """What is streamed: the list (scanned once by the stage), where its lines are read from (`format`
    and `root`: the folder of files, the .rec, the folder of tar shards, local or a URL), and what one
    image may cost."""

    list: ListInfo
    root: Path | str  # a URL (object storage) stays text
    limits: DecodeLimits = DecodeLimits()
    format: str = "files"
    source: Source = field(default=None, compare=False, repr=False)  # built from format and root
    storage: remote.Storage = field(default_factory=remote.Storage, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.source is None:
            try:
                object.__setattr__(self, "source", open_source(self.format, self.root, self.storage))
            except ValueError as e:
                raise UserError(str(e)) from None

    @classmethod
    def from_config(cls, data: dict, run_dir: RunDir, enumerate: bool = False, source: Source | None = None) -> Inputs:
        """From [data]: the source (opened here unless given), and the list (data.list, or the container's keys
        in `<out>/list.txt`, written there first when `enumerate`: extract does, later stages read it)."""
        source = source or sources.from_config(data)
        info = scan_list(sources.resolve_list(data, run_dir, write=enumerate, source=source))
        storage = remote.Storage.from_config(data)  # checked by sources.from_config above
        return cls(info, remote.as_root(data["root"]), cls.limits_from_config(data), data["format"], source, storage)

    @staticmethod
    def limits_from_config(data: dict) -> DecodeLimits:
        try:
            return DecodeLimits(data["max_pixels"], data["max_bytes"])
        except ValueError as e:
            raise UserError(f"data.{e}") from None


# --------------------------------------------------------------------------- plan


@dataclass
class Chunk:
    """A stretch of the list: its lines, which to run (all, or the subset), and results so far."""

    id: int
    start: int
    lines: list[str]
    subset: np.ndarray
    run: np.ndarray  # positions (in the chunk) that go through the net
    remaining: int = 0
    rows: store.Rows = field(default_factory=store.Rows)

    def record(
        self, pos: np.ndarray, ok: np.ndarray, fetched: dict[str, np.ndarray], failed: Iterable[tuple[str, str]]
    ) -> int:
        """Results for positions `pos`: `fetched` rows of the usable ones (in order), (line, reason) of the others.

        The one place rows and failures are added, for both engines; returns the usable count.
        """
        pos, ok = np.asarray(pos, np.int64), np.asarray(ok, bool)
        good = pos[ok]
        if len(good):
            for name, values in fetched.items():
                self.rows.columns.setdefault(name, []).append(values)
            self.rows.index.append(self.start + good)
            self.rows.subset.append(self.subset[good])
        for p, (line, reason) in zip(pos[~ok].tolist(), failed):
            self.rows.fail_index.append(self.start + p)
            self.rows.fail_path.append(line)
            self.rows.fail_reason.append(reason)
            self.rows.fail_subset.append(bool(self.subset[p]))
        self.remaining -= len(pos)
        return len(good)


def plan_chunks(info: ListInfo, s: StreamSettings, shard: Shard, done: set[int]) -> Iterator[Chunk]:
    """The chunks this run still has to do, read from the list as they are needed."""
    masks = chunk_masks(info.lines, s.chunk_size, s.fraction, s.seed)
    with open_list(info.path) as f:
        for cid, mask in enumerate(masks):
            lines = list(itertools.islice(f, len(mask)))
            if not shard.owns(cid) or cid in done:
                continue
            run = np.arange(len(mask)) if s.full else np.flatnonzero(mask)
            yield Chunk(cid, cid * s.chunk_size, [ln.rstrip("\r\n") for ln in lines], mask, run, len(run))


def count_work(info: ListInfo, s: StreamSettings, shard: Shard, done: set[int]) -> tuple[int, int]:
    """(images to run now, images already done) for the progress bar, without reading the list."""
    todo = finished = 0
    for cid, mask in enumerate(chunk_masks(info.lines, s.chunk_size, s.fraction, s.seed)):
        if shard.owns(cid):
            n = len(mask) if s.full else int(mask.sum())
            if cid in done:
                finished += n
            else:
                todo += n
    return todo, finished


@dataclass(frozen=True)
class Job:
    """What a stage streams: a model fed preprocessed images, and where each fetched output goes.

    `fetch` maps a dataset name to the graph output stored in it (one row per image, shaped
    and typed by `schema`); `results` maps each result kind to whether it keeps subset rows
    only. `identity` is everything that decides the rows: a resume or a join only mixes files
    that agree on all of it; `provenance` is recorded beside it (paths may differ between
    machines). `removes`: other result kinds `--overwrite` removes with the job's own.
    `transform`: a picklable callable applied to each batch's fetched outputs (a dict) right
    after the net, returning the dict that is stored (`schema`'s columns); None stores them as fetched.
    """

    name: str  # the stage, for the progress bar
    model: onnx.ModelProto
    input: str
    fetch: dict[str, str]
    schema: store.Schema
    identity: dict
    results: dict[str, bool]  # kind (file stem) -> subset rows only
    pre: Preprocess
    provenance: dict = field(default_factory=dict)
    parts: str = "parts"
    removes: tuple[str, ...] = ()
    transform: Callable[[dict], dict] | None = None


@dataclass
class Summary:
    """What a run left in its result (images, failures by reason) and how fast this session went."""

    images: int = 0
    failures: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    processed: int = 0  # images through the net in this session (less than `images` on a resume)
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    resumed_chunks: int = 0

    @property
    def images_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        text = (
            f"{self.images} images, {self.failures} failed, {self.seconds:.1f} s, "
            f"{self.images_per_s:.1f} images/s ({self.processed} this session)"
        )
        if self.reasons:
            text += " (" + ", ".join(f"{r}: {n}" for r, n in sorted(self.reasons.items())) + ")"
        return text


@dataclass
class Progress:
    """This session's counts and its progress bar, advanced by whichever engine runs."""

    summary: Summary
    bar: tqdm
    todo: int
    attempted: int = 0
    failed: Failures = field(default_factory=Failures)

    def advance(self, images: int, usable: int) -> None:
        self.bar.update(images)
        self.attempted += images
        self.summary.processed += usable


# --------------------------------------------------------------------------- the run


def run(
    job: Job,
    inputs: Inputs,
    settings: StreamSettings,
    run_dir: RunDir,
    shard: Shard = Shard(),
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> Summary:
    """Stream the list through `job`; resumes a killed run, refuses to mix with another run.

    The caller holds the run folder's lock. Everything is checked before `overwrite` removes
    anything.
    """
    started = time.perf_counter()
    info = inputs.list
    results = {kind: run_dir.result(kind, shard) for kind in job.results}
    parts = run_dir.parts(job.parts, shard)
    runtime.providers(settings.device)  # a wrong device is one line, before anything is removed
    if overwrite:
        probe(inputs, job.pre.size)  # a mistyped root or list is one line, before anything is removed
        for p in [*(run_dir.result(k, shard) for k in (*job.results, *job.removes)), parts]:
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    if all(p.exists() for p in results.values()):
        _refuse_if_other(results.values(), job.identity)
        shutil.rmtree(parts, ignore_errors=True)  # left if a kill came between finishing and cleaning up
        log.info("already complete: %s", ", ".join(map(str, results.values())))
        return summarize(results, Summary(seconds=time.perf_counter() - started))
    _refuse_if_other([p for p in results.values() if p.exists()], job.identity)
    done = _open_parts(parts, dict(job.identity, data_root=remote.where(inputs.root)))
    todo, finished = count_work(info, settings, shard, done)
    if todo + finished == 0 and shard.count == 1:
        raise UserError(
            f"fraction {settings.fraction} of the {info.lines} lines of {info.path} selects no image; "
            "raise extract.fraction"
        )
    if todo + finished == 0:
        log.info("shard %d/%d has no chunk of the list; writing empty files", shard.index, shard.count)

    summary = Summary(resumed_chunks=len(done))
    job = takes_images(job)
    engine = _local
    if settings.engine == "ray":
        from . import distributed

        engine = distributed.infer
    bar = tqdm(total=todo + finished, initial=finished, unit="img", disable=not progress, desc=job.name, smoothing=0.05)
    try:
        chunks = plan_chunks(info, settings, shard, done)
        for chunk in engine(chunks, job, inputs, settings, Progress(summary, bar, todo)):
            store.write_part(parts / store.part_name(chunk.id), chunk.rows, job.schema)
        # the local engine stops early on its own; this catches Ray, a resume, a shard's short stretch
        refuse_if_nothing_read([parts / store.part_name(c) for c in store.finished_chunks(parts) if shard.owns(c)])
    except NothingReadable as err:
        shutil.rmtree(parts)  # nothing of value in it, and a fixed re-run must not skip those chunks
        raise UserError(
            nothing_read(err.failed, inputs.source, whole=err.whole, max_bytes=inputs.limits.max_bytes)
        ) from None
    finally:
        bar.close()

    if scan_list(info.path).sha256 != info.sha256:
        raise UserError(
            f"the list {info.path} changed while this run read it, so its rows would mix two versions; "
            "run again with --overwrite"
        )
    _finalize(parts, results, job, dict(job.identity, **job.provenance, shard=shard.text), shard)
    summary.seconds = time.perf_counter() - started
    return summarize(results, summary)


def takes_images(job: Job) -> Job:
    """The job with its net fed decoded uint8 images: the normalization runs in the net."""
    model = job.pre.in_graph(job.model, job.input)
    return replace(job, model=model, input=model.graph.input[0].name)


def _open_parts(parts: Path, ident: dict) -> set[int]:
    """Parts of this very run to resume from, or a clear refusal if they belong to another."""
    stamp = parts / "run.json"
    if stamp.exists():
        try:
            theirs = json.loads(stamp.read_text())
        except (OSError, ValueError):
            theirs = {"run.json": "unreadable"}
        if theirs != ident:
            raise UserError(
                f"{parts} holds a run with other settings ({settings_diff(theirs, ident)}); "
                "use --overwrite to start over, or another --out"
            )
        return store.finished_chunks(parts)
    parts.mkdir(parents=True, exist_ok=True)
    write_bytes(stamp, json.dumps(ident, sort_keys=True, indent=1).encode())
    return set()


def _refuse_if_other(paths: Iterable[Path], ident: dict) -> None:
    for p in paths:
        theirs = {k: v for k, v in store.read_attrs(p).items() if k in ident}
        if theirs != ident:
            raise UserError(
                f"{p} was made with other settings ({settings_diff(theirs, ident)}); "
                "use --overwrite to replace it, or another --out"
            )


def probe(inputs: Inputs, size: tuple[int, int], n: int = 0) -> None:
    """Refuse, in one line, a list none of whose first `n` lines (default `NOTHING_READABLE`) is a decodable image.

    The same verdict a fresh run reaches after those lines, reached before `--overwrite`
    removes finished results: a mistyped data.root or data.list (or a file given as the root)
    then costs nothing. Stops at the first image that decodes (usually the first line).
    """
    n = n or NOTHING_READABLE
    failed = Failures()
    with open_list(inputs.list.path) as f:
        while failed.count < n:
            lines = [ln.rstrip("\r\n") for ln in itertools.islice(f, min(16, n - failed.count))]
            if not lines:
                break
            read = sources.batch_reader(inputs.source, lines, inputs.limits.max_bytes)  # remote: in flight together
            _, ok, reasons = decode_batch(lines, read, size, max_pixels=inputs.limits.max_pixels)
            if ok.any():
                return
            for line, reason in zip(lines, reasons):
                failed.add(line, reason)
    if failed.count:
        whole = failed.count >= inputs.list.lines
        text = nothing_read(failed, inputs.source, whole=whole, max_bytes=inputs.limits.max_bytes)
        raise UserError(f"{text}; nothing was removed")


#: A fresh run stops when this many images in a row failed and none worked (a wrong root, say).
NOTHING_READABLE = 256


# --------------------------------------------------------------------------- the local engine


class _Decoder:
    """Decodes batches of (chunk, position) on a thread pool, into uint8 buffers reused in turn.

    A batch's buffer comes round again only after the batch went through the net: there are
    `depth + 1` buffers and at most `depth` batches in flight.
    """

    def __init__(self, pool: ThreadPoolExecutor, inputs: Inputs, size: tuple[int, int], batch: int, depth: int) -> None:
        self.pool, self.size, self.depth = pool, size, depth
        self.source, self.max_bytes = inputs.source, inputs.limits.max_bytes
        self.max_pixels = inputs.limits.max_pixels
        self.buffers = [np.empty((batch, *size, 3), np.uint8) for _ in range(depth + 1)]
        self.submitted = 0

    def submit(self, batch: list[tuple[Chunk, int]]):
        buffer = self.buffers[self.submitted % len(self.buffers)]
        self.submitted += 1
        return self.pool.submit(self._decode, batch, buffer)

    def _decode(self, batch: list[tuple[Chunk, int]], buffer: np.ndarray):
        lines = [c.lines[p] for c, p in batch]  # "" fails as an empty line
        read = sources.batch_reader(self.source, lines, self.max_bytes)  # a remote batch: all reads in flight
        images, ok, reasons = decode_batch(lines, read, self.size, buffer[: len(batch)], self.max_pixels)
        return images, ok, reasons, lines


def _local(chunks: Iterator[Chunk], job: Job, inputs: Inputs, s: StreamSettings, tracker: Progress) -> Iterator[Chunk]:
    """Finished chunks: decoding threads ahead of one onnxruntime session in this process."""
    sess = runtime.Runner(job.model, list(job.fetch.values()), s.device)
    batch = runtime.batch_size(s.batch_size, sess.gpu)
    with ThreadPoolExecutor(max_workers=s.threads) as pool:
        decoder = _Decoder(pool, inputs, job.pre.size, batch, s.threads + 2)
        yield from _infer(chunks, sess, job, decoder, batch, tracker)


def _infer(chunks, sess, job: Job, decoder: _Decoder, batch_size: int, tracker: Progress) -> Iterator[Chunk]:
    """Yield each chunk once all its images went through the net (or failed).

    Batches span chunk boundaries so the net always sees full batches; decoding of the next
    batches runs on the pool while the current one is in the runtime (which releases the GIL).
    """
    open_chunks: deque[Chunk] = deque()

    def items():
        for chunk in chunks:
            open_chunks.append(chunk)
            for pos in chunk.run:
                yield chunk, int(pos)

    def finished():
        while open_chunks and open_chunks[0].remaining == 0:
            yield open_chunks.popleft()

    pending: deque = deque()
    batches = chunked(items(), batch_size)
    while True:
        while len(pending) < decoder.depth:
            batch = next(batches, None)
            if batch is None:
                break
            pending.append((batch, decoder.submit(batch)))
        yield from finished()  # chunks with nothing to run (a --no-full chunk without subset lines)
        if not pending:
            break
        batch, fut = pending.popleft()
        images, ok, reasons, paths = fut.result()
        fetched = dict(zip(job.fetch, sess.run({job.input: images}))) if len(images) else {}
        if fetched and job.transform is not None:
            fetched = job.transform(fetched)
        tracker.advance(len(batch), _scatter(batch, ok, reasons, fetched))
        s = tracker.summary
        if s.processed == 0 and s.resumed_chunks == 0:
            for line, reason in zip(itertools.compress(paths, ~ok), reasons):
                tracker.failed.add(line, reason)
            if tracker.attempted >= min(tracker.todo, NOTHING_READABLE):
                raise NothingReadable(tracker.failed, whole=tracker.attempted >= tracker.todo)
        yield from finished()


def _scatter(batch: list[tuple[Chunk, int]], ok: np.ndarray, reasons: list[str], fetched: dict) -> int:
    """Hand each image's result (or failure) to its chunk; returns the usable count."""
    row = np.cumsum(ok) - 1  # each usable image's row in `fetched`
    reason = iter(reasons)  # one per failed image, in batch order
    groups: dict[int, tuple[Chunk, list[int]]] = {}
    for j, (chunk, _) in enumerate(batch):
        groups.setdefault(chunk.id, (chunk, []))[1].append(j)
    usable = 0
    for chunk, js in groups.values():
        js = np.asarray(js)
        good, pos = ok[js], np.array([batch[j][1] for j in js], np.int64)
        failed = [(store.printable(chunk.lines[p]), next(reason)) for p in pos[~good].tolist()]
        usable += chunk.record(pos, good, {k: v[row[js[good]]] for k, v in fetched.items()}, failed)
    return usable


def _finalize(parts: Path, results: dict[str, Path], job: Job, attrs: dict, shard: Shard) -> None:
    """Parts in list order -> the result files; then the parts go."""
    chunk_ids = sorted(store.finished_chunks(parts))
    files = [parts / store.part_name(c) for c in chunk_ids if shard.owns(c)]
    for kind, dest in results.items():
        subset_only = job.results[kind]
        sources = [store.Source(p, 0, store.count_rows(p), only_subset=subset_only) for p in files]
        store.concat(sources, files, dest, dict(attrs, kind=kind), job.schema)
    for p in files:
        p.unlink()
    if not any(parts.glob("c*.h5")):
        shutil.rmtree(parts)


def summarize(results: dict[str, Path], s: Summary) -> Summary:
    """Counts come from the result itself, so a resumed run reports the whole job."""
    first = next(iter(results.values()))
    s.images = store.count_rows(first)
    fails = store.read_failures(first)
    s.failures = len(fails)
    for _, _, r in fails:
        s.reasons[r] = s.reasons.get(r, 0) + 1
    s.outputs = [str(p) for p in results.values()]
    return s
