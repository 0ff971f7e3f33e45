"""The streaming engine under extract and label: a list of images through a net, into HDF5 rows.

The list is read in chunks of `chunk_size` lines; decoding runs on a thread pool ahead of
inference; each finished chunk is written as a crash-safe part (see `store`), so a killed run
resumes where it stopped and memory stays flat however long the list is. At the end the parts
are copied in list order into the result files. A stage says what to run with a `Job`: the
model, what to fetch and store per image, the files to write, and the settings that make two
runs the same run (`identity`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from more_itertools import chunked
from tqdm import tqdm

from ..errors import UserError
from . import runtime, store
from .images import Preprocess, read_batch

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the list and its subset


@dataclass(frozen=True)
class ListInfo:
    path: Path
    lines: int
    sha256: str


def scan_list(path: Path) -> ListInfo:
    """Count lines and hash the list in one streaming pass (a 17 M-line list is ~1 GB)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"image list {path} does not exist; make one with `find ROOT -name '*.jpg' > {path}` or `make data`"
        )
    h, lines, last = hashlib.sha256(), 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"  # a last line without a newline still counts
    if lines == 0:
        raise UserError(f"image list {path} is empty; it needs one image path per line")
    return ListInfo(path, lines, h.hexdigest())


def subset_mask(lines: int, fraction: float, seed: int) -> np.ndarray:
    """The reference's subset rule, whole: `RandomState(seed).random(lines) < fraction`."""
    return np.random.RandomState(seed).random(lines) < fraction


def chunk_masks(lines: int, chunk_size: int, fraction: float, seed: int) -> Iterator[np.ndarray]:
    """The same draws chunk by chunk: RandomState's doubles do not depend on how they are split."""
    rs = np.random.RandomState(seed)
    for start in range(0, lines, chunk_size):
        yield rs.random(min(chunk_size, lines - start)) < fraction


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Shard:
        if not text:
            return cls()
        try:
            i, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise UserError(f"--shard {text!r} should be i/n, e.g. 0/4 (shards are numbered from 0)") from None
        if not (n >= 1 and 0 <= i < n):
            raise UserError(f"--shard {text!r}: need 0 <= i < n, e.g. 0/4 ... 3/4")
        return cls(i, n)

    def owns(self, chunk: int) -> bool:
        return chunk % self.count == self.index

    @property
    def suffix(self) -> str:
        return "" if self.count == 1 else f".shard-{self.index}-of-{self.count}"


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


def plan_chunks(info: ListInfo, cfg: dict, shard: Shard, done: set[int]) -> Iterator[Chunk]:
    """The chunks this run still has to do, read from the list as they are needed."""
    cs, full = cfg["chunk_size"], cfg["full"]
    masks = chunk_masks(info.lines, cs, cfg["fraction"], cfg["seed"])
    with open(
        info.path, encoding="utf-8", errors="surrogateescape", newline="\n"
    ) as f:  # lines end at \n only, as counted
        for cid, mask in enumerate(masks):
            lines = list(itertools.islice(f, len(mask)))
            if not shard.owns(cid) or cid in done:
                continue
            run = np.arange(len(mask)) if full else np.flatnonzero(mask)
            yield Chunk(cid, cid * cs, [ln.rstrip("\r\n") for ln in lines], mask, run, len(run))


def count_work(info: ListInfo, cfg: dict, shard: Shard, done: set[int]) -> tuple[int, int]:
    """(images to run now, images already done) for the progress bar, without reading the list."""
    todo = finished = 0
    for cid, mask in enumerate(chunk_masks(info.lines, cfg["chunk_size"], cfg["fraction"], cfg["seed"])):
        if shard.owns(cid):
            n = len(mask) if cfg["full"] else int(mask.sum())
            if cid in done:
                finished += n
            else:
                todo += n
    return todo, finished


@dataclass(frozen=True)
class Job:
    """What a stage streams: a model fed preprocessed images, and where each fetched output goes.

    `fetch` maps a dataset name to the graph output stored in it (one row per image, shaped
    and typed by `schema`); `results` maps each result kind to (file stem, subset rows only).
    `identity` is everything that decides the rows: a resume or a join only mixes files that
    agree on all of it.
    """

    name: str  # the stage, for the progress bar and the parts folder
    model: onnx.ModelProto
    input: str
    fetch: dict[str, str]
    schema: store.Schema
    identity: dict
    results: dict[str, bool]  # kind (file stem) -> subset rows only
    parts: str = "parts"


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


# --------------------------------------------------------------------------- the run


def outputs(out: Path, shard: Shard, kinds) -> dict[str, Path]:
    where = out / "shards" if shard.count > 1 else out
    return {n: where / f"{n}{shard.suffix}.h5" for n in kinds}


def run(
    job: Job,
    settings: dict,
    list_path: Path,
    root: Path,
    out: Path,
    pre: Preprocess,
    *,
    shard: Shard = Shard(),
    overwrite: bool = False,
    progress: bool = True,
    provenance: dict | None = None,
    every_kind: tuple[str, ...] = (),
) -> Summary:
    """Stream the list through `job`; resumes a killed run, refuses to mix with another run.

    `settings`: batch_size, chunk_size, workers, device, fraction, seed, full, engine (local or
    ray), address, actors (the keys of [extract]). `every_kind`: result kinds `--overwrite`
    removes besides the job's own.
    """
    started = time.perf_counter()
    validate(settings)
    info = scan_list(list_path)
    results = outputs(out, shard, job.results)
    parts = out / f"{job.parts}{shard.suffix}"
    ident = job.identity

    if overwrite:
        for p in list(outputs(out, shard, set(job.results) | set(every_kind)).values()) + [parts]:
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    if all(p.exists() for p in results.values()):
        _refuse_if_other(results.values(), ident)
        shutil.rmtree(parts, ignore_errors=True)  # left if a kill came between finishing and cleaning up
        log.info("already complete: %s", ", ".join(map(str, results.values())))
        return summarize(results, Summary(seconds=time.perf_counter() - started))
    for p in results.values():
        if p.exists():
            _refuse_if_other([p], ident)
    done = _open_parts(parts, ident)
    todo, finished = count_work(info, settings, shard, done)
    if todo + finished == 0 and shard.count == 1:
        raise UserError(
            f"fraction {settings['fraction']} of the {info.lines} lines of {info.path} selects no image; "
            "raise extract.fraction"
        )
    if todo + finished == 0:
        log.info("shard %d/%d has no chunk of the list; writing empty files", shard.index, shard.count)

    summary = Summary(resumed_chunks=len(done))
    runtime.providers(settings["device"])  # a wrong device is one line, before any progress bar
    job = takes_images(job, pre)
    bar = tqdm(total=todo + finished, initial=finished, unit="img", disable=not progress, desc=job.name, smoothing=0.05)
    try:
        if settings.get("engine", "local") == "ray":
            from . import distributed

            address = settings.get("address") or None
            distributed.run_parts(
                job,
                settings,
                plan_chunks(info, settings, shard, done),
                info.path,
                root,
                pre,
                parts,
                summary,
                bar,
                address,
            )
        else:
            sess = runtime.Runner(job.model, list(job.fetch.values()), settings["device"])
            settings = dict(settings, batch_size=runtime.batch_size(settings["batch_size"], sess.gpu))
            with ThreadPoolExecutor(max_workers=_workers(settings["workers"])) as pool:
                for chunk in _infer(
                    plan_chunks(info, settings, shard, done), sess, job, pre, root, pool, settings, summary, bar, todo
                ):
                    store.write_part(parts / store.part_name(chunk.id), chunk.rows, job.schema)
    except NothingReadable as err:
        shutil.rmtree(parts)  # nothing of value in it, and a fixed re-run must not skip those chunks
        raise UserError(f"{err}; check data.root ({root}) and the list {info.path}") from None
    finally:
        bar.close()

    _finalize(parts, results, job, dict(ident, **(provenance or {})), shard)
    summary.seconds = time.perf_counter() - started
    return summarize(results, summary)


def takes_images(job: Job, pre: Preprocess) -> Job:
    """The job with its net fed decoded uint8 images: the normalization runs in the net."""
    model = pre.in_graph(job.model, job.input)
    return replace(job, model=model, input=model.graph.input[0].name)


def validate(e: dict) -> None:
    if e.get("engine", "local") not in ("local", "ray"):
        raise UserError(f"extract.engine = {e['engine']!r} is not one of: local, ray")
    if not 0 < e["fraction"] <= 1:
        raise UserError(f"extract.fraction = {e['fraction']} must be in (0, 1]")
    if e["batch_size"] < 0:
        raise UserError(
            f"extract.batch_size = {e['batch_size']} must be at least 1 (or 0: the usual size for the device)"
        )
    if e["chunk_size"] < 1:
        raise UserError(f"extract.chunk_size = {e['chunk_size']} must be at least 1")


def _workers(n: int) -> int:
    return n if n > 0 else (os.cpu_count() or 2)


def _open_parts(parts: Path, ident: dict) -> set[int]:
    """Parts of this very run to resume from, or a clear refusal if they belong to another."""
    stamp = parts / "run.json"
    if stamp.exists():
        theirs = json.loads(stamp.read_text())
        if theirs != ident:
            raise UserError(
                f"{parts} holds a run with other settings ({_diff(theirs, ident)}); use --overwrite to start over, or another --out"
            )
        return store.finished_chunks(parts)
    parts.mkdir(parents=True, exist_ok=True)
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(json.dumps(ident, sort_keys=True, indent=1))
    os.replace(tmp, stamp)
    return set()


def _refuse_if_other(paths, ident: dict) -> None:
    for p in paths:
        theirs = {k: v for k, v in store.read_attrs(p).items() if k in ident}
        if theirs != ident:
            raise UserError(
                f"{p} was made with other settings ({_diff(theirs, ident)}); use --overwrite to replace it, or another --out"
            )


def _diff(a: dict, b: dict) -> str:
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:3])


class NothingReadable(Exception):
    def __init__(self, attempted: int, path: str, reason: str) -> None:
        super().__init__(f"none of the first {attempted} images could be read (e.g. {path}: {reason})")


#: A fresh run stops when this many images in a row failed and none worked (a wrong root, say).
NOTHING_READABLE = 256


def _infer(
    chunks, sess, job: Job, pre: Preprocess, root: Path, pool, e: dict, summary: Summary, bar, todo: int
) -> Iterator[Chunk]:
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

    depth = _workers(e["workers"]) + 2
    # A batch's buffer comes round again only after the batch went through the net.
    buffers = [np.empty((e["batch_size"], *pre.size, 3), np.uint8) for _ in range(depth + 1)]

    def decode(batch, buffer):
        base = str(root)  # os.path.join: a tenth of pathlib's cost, and it runs once per image
        paths = [os.path.join(base, c.lines[p]) if c.lines[p] else "" for c, p in batch]  # "" fails as an empty line
        images, ok, reasons = read_batch(paths, pre.size, buffer[: len(batch)])
        return images, ok, reasons, paths

    def finished():
        while open_chunks and open_chunks[0].remaining == 0:
            yield open_chunks.popleft()

    pending: deque = deque()
    attempted = submitted = 0
    batches = chunked(items(), e["batch_size"])
    while True:
        while len(pending) < depth:
            batch = next(batches, None)
            if batch is None:
                break
            pending.append((batch, pool.submit(decode, batch, buffers[submitted % len(buffers)])))
            submitted += 1
        yield from finished()  # chunks with nothing to run (a --no-full chunk without subset lines)
        if not pending:
            break
        batch, fut = pending.popleft()
        images, ok, reasons, paths = fut.result()
        fetched = {}
        if len(images):
            fetched = dict(zip(job.fetch, sess.run({job.input: images})))
        _scatter(batch, ok, reasons, fetched, summary)
        bar.update(len(batch))
        attempted += len(batch)
        if summary.processed == 0 and summary.resumed_chunks == 0 and attempted >= min(todo, NOTHING_READABLE):
            raise NothingReadable(attempted, paths[0], reasons[0])  # nothing was readable: both are the first
        yield from finished()


def _scatter(batch, ok, reasons, fetched: dict[str, np.ndarray], summary: Summary) -> None:
    """Hand each image's result (or failure) to its chunk."""
    good = np.cumsum(ok) - 1
    reason = iter(reasons)
    by_chunk: dict[int, tuple[Chunk, list[int], list[int]]] = {}
    for j, (chunk, pos) in enumerate(batch):
        entry = by_chunk.setdefault(chunk.id, (chunk, [], []))
        if ok[j]:
            entry[1].append(j)
            entry[2].append(pos)
        else:
            chunk.rows.fail_index.append(chunk.start + pos)
            chunk.rows.fail_path.append(_printable(chunk.lines[pos]))
            chunk.rows.fail_reason.append(next(reason))
            chunk.rows.fail_subset.append(bool(chunk.subset[pos]))
        chunk.remaining -= 1
    for chunk, js, poss in by_chunk.values():
        if js:
            rows = good[js]
            for name, values in fetched.items():
                chunk.rows.columns.setdefault(name, []).append(values[rows])
            chunk.rows.index.append(chunk.start + np.asarray(poss, np.int64))
            chunk.rows.subset.append(chunk.subset[poss])
            summary.processed += len(js)


def _printable(line: str) -> str:
    """A list line that was not UTF-8 (kept as surrogates) in a form HDF5 can store: \\xe9."""
    return line.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _finalize(parts: Path, results: dict[str, Path], job: Job, attrs: dict, shard: Shard) -> None:
    """Parts in list order -> the result files; then the parts go."""
    chunk_ids = sorted(store.finished_chunks(parts))
    files = [parts / store.part_name(c) for c in chunk_ids if shard.owns(c)]
    attrs = dict(attrs, shard=f"{shard.index}/{shard.count}" if shard.count > 1 else "")
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


# --------------------------------------------------------------------------- join


#: Attributes that may differ between shards of one job (machines mount data differently).
LOCAL_ATTRS = ("model_path", "list_path", "data_root", "shard")


def join(out: Path, overwrite: bool = False) -> dict[str, Path]:
    """Shards' files -> `<out>/full.h5`, `<out>/subset.h5`, `<out>/labels.h5`..., row for row what one run would write.

    A copy, not an HDF5 virtual dataset: the result stands alone (shards can be deleted or
    live on other machines' disks), reads at full speed, and is the same file a single run
    makes; the price is one sequential pass over the data.
    """
    out = Path(out)
    found = sorted((out / "shards").glob("*.shard-*-of-*.h5"))
    if not found:
        raise UserError(
            f"no shard files in {out / 'shards'}; run `introspect extract` (or `label`) `--shard i/n` for every i first"
        )
    joined = {}
    for kind in sorted({p.name.split(".shard-")[0] for p in found}):
        files = [p for p in found if p.name.startswith(kind + ".")]
        counts = {int(p.stem.rsplit("-of-", 1)[1]) for p in files}
        if len(counts) != 1:
            raise UserError(f"{out / 'shards'} mixes shard counts {sorted(counts)}; keep the files of one split only")
        n = counts.pop()
        have = {int(p.stem.split(".shard-")[1].split("-")[0]) for p in files}
        missing = sorted(set(range(n)) - have)
        if missing:
            raise UserError(
                f"{kind}: shards {missing} of {n} are missing; run `introspect extract --shard i/{n}` for them"
            )
        attrs = [store.read_attrs(p) for p in files]
        ident = {k: v for k, v in attrs[0].items() if k not in LOCAL_ATTRS}
        for p, a in zip(files, attrs):
            theirs = {k: v for k, v in a.items() if k not in LOCAL_ATTRS}
            if theirs != ident:
                raise UserError(
                    f"{p} was made with other settings than {files[0].name} ({_diff(theirs, ident)}); re-run that shard"
                )
        dest = out / f"{kind}.h5"
        if dest.exists() and not overwrite:
            raise UserError(f"{dest} exists; pass --overwrite to replace it")
        store.concat(store.merge_sources(files), files, dest, dict(attrs[0], shard=""), store.schema_of(files[0]))
        joined[kind] = dest
    return joined
