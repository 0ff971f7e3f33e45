"""Writing a data set: blocks of images rendered in worker processes, the list and labels streamed in order.

Worker processes each render, encode and write whole blocks while the parent streams the list
and the labels in index order, so memory stays flat for any n and files never depend on the
worker count."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..engine.rundir import check_output
from .camera import noise_bank
from .identity import default_identities, identity_of
from .scene import render_batch
from .spec import COLUMNS, RateTable, SynthError, attrs_path, resolve_rates

BLOCK = 256  # images per pool task
PER_FOLDER = 1000  # images per shard folder


def shard_widths(n: int) -> tuple[int, int]:
    """Zero-padded widths: lexicographic order equals index order for every n."""
    return max(3, len(str((n - 1) // PER_FOLDER))), max(6, len(str(n - 1)))


def shard_path(i: int, widths: tuple[int, int]) -> str:
    """Image i's path relative to the root: <i // 1000>/<i>.jpg, zero-padded."""
    return f"{i // PER_FOLDER:0{widths[0]}d}/{i:0{widths[1]}d}.jpg"


@dataclass(frozen=True)
class _Task:
    """One block for a worker: everything it needs, picklable."""

    seed: int
    n: int
    start: int
    stop: int
    root: str
    identities: int
    tables: dict[str, RateTable]


def _render_block(task: _Task) -> tuple[int, str, str]:
    """Render, encode and write one block of images; returns its list and csv lines."""
    widths = shard_widths(task.n)
    ids = identity_of(task.seed, task.n, np.arange(task.start, task.stop), task.identities).tolist()
    images = render_batch(task.seed, list(range(task.start, task.stop)), ids, noise_bank(task.seed), task.tables)
    made: set[str] = set()
    paths, rows = [], []
    for i, ident, (img, lab, q) in zip(range(task.start, task.stop), ids, images):
        rel = shard_path(i, widths)
        folder = rel.split("/", 1)[0]
        if folder not in made:
            os.makedirs(os.path.join(task.root, folder), exist_ok=True)
            made.add(folder)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
        if not ok:
            raise RuntimeError(f"synth: JPEG encoding failed for image {i}")
        with open(os.path.join(task.root, rel), "wb") as f:
            f.write(buf.tobytes())
        paths.append(rel + "\n")
        rows.append(f"{rel},{ident},{','.join(lab[k] for k in COLUMNS[2:])}\n")
    return task.stop - task.start, "".join(paths), "".join(rows)


def _init_worker() -> None:
    cv2.setNumThreads(1)  # processes give the parallelism; threads would only contend


def _pool_context() -> mp.context.BaseContext:
    """Workers must not inherit a live cv2 thread pool: in a plain fork() child, cv2 deadlocks
    (pthread_cond_destroy) once the parent has run cv2 with threads, e.g. after a workers=1 run.
    A fork server is a clean process that has imported cv2 but never run it; forking from it is
    safe and nearly as cheap as fork()."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["introspect.synth"])  # import numpy + cv2 once, in the server
    return ctx


def _in_order(pool: ProcessPoolExecutor, tasks: Iterator[_Task], ahead: int) -> Iterator[tuple[int, str, str]]:
    """Results in task order with at most `ahead` blocks in flight, so memory stays flat for any n."""
    pending: deque = deque()
    for task in tasks:
        pending.append(pool.submit(_render_block, task))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _positive_int(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 1


def _check(n: object, seed: object, workers: object, identities: object) -> None:
    """Argument checks: each mistake is a SynthError with one line, raised before anything is written."""
    if not _positive_int(n):
        raise SynthError(f"synth: n must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SynthError(f"synth: seed must be a non-negative integer, got {seed!r}")
    if workers is not None and not _positive_int(workers):
        raise SynthError(f"synth: workers must be a positive integer, got {workers!r}")
    if identities is not None and not _positive_int(identities):
        raise SynthError(f"synth: identities must be a positive integer, got {identities!r}")


def synthesize(
    n: int,
    seed: int,
    root: Path,
    list_path: Path,
    *,
    workers: int | None = None,
    progress: bool = True,
    identities: int | None = None,
    rates: Mapping[str, RateTable] | None = None,
) -> dict:
    """Write n synthetic face crops under root, their list and ground truth; streams, so 10 M fit.

    Images go to root/<i // 1000>/<i>.jpg (zero-padded), the list (paths relative to root, in
    index order) to list_path and the labels to attrs_path(list_path).  Both files appear only
    when complete.  `identities` sets the number of identities (default max(1, n // 4));
    `rates` replaces the rate tables of some columns (see RATES; checked, SynthError if wrong).
    workers > 1 uses processes from a fork server, so a calling script needs the usual
    ``if __name__ == "__main__":`` guard, as with any non-fork multiprocessing."""
    _check(n, seed, workers, identities)
    tables = resolve_rates(rates)
    for out in (Path(list_path), attrs_path(Path(list_path))):
        check_output(out)  # a FIFO, a device or a folder there is refused before drawing, never replaced
    n, seed = int(n), int(seed)
    n_ids = default_identities(n) if identities is None else int(identities)
    workers = min(int(workers or os.cpu_count() or 1), -(-n // BLOCK))
    root, list_path = Path(root), Path(list_path)
    root.mkdir(parents=True, exist_ok=True)
    list_path.parent.mkdir(parents=True, exist_ok=True)
    tasks = (_Task(seed, n, s, min(s + BLOCK, n), str(root), n_ids, tables) for s in range(0, n, BLOCK))
    t0 = time.perf_counter()
    _write(tasks, n, workers, list_path, progress)
    seconds = time.perf_counter() - t0
    return {
        "n": n,
        "identities": n_ids,
        "seconds": seconds,
        "images_per_s": n / seconds if seconds > 0 else float("inf"),
        "root": str(root),
        "list": str(list_path),
        "attrs": str(attrs_path(list_path)),
        "workers": workers,
    }


def _write(tasks: Iterator[_Task], n: int, workers: int, list_path: Path, progress: bool) -> None:
    """Run the blocks and stream list and labels into .part files, renamed into place only when complete."""
    csv_path = attrs_path(list_path)
    tmp_list = list_path.with_name(list_path.name + ".part")
    tmp_csv = csv_path.with_name(csv_path.name + ".part")
    try:
        with ExitStack() as stack:  # on error: stop the workers, close the files, drop the .part files
            if workers > 1:
                pool = stack.enter_context(ProcessPoolExecutor(workers, _pool_context(), _init_worker))
                results = _in_order(pool, tasks, ahead=2 * workers + 2)
            else:
                results = map(_render_block, tasks)
            fl = stack.enter_context(open(tmp_list, "w"))
            fc = stack.enter_context(open(tmp_csv, "w"))
            bar = stack.enter_context(tqdm(total=n, disable=not progress, unit="img", desc="synth", smoothing=0.1))
            fc.write(",".join(COLUMNS) + "\n")
            for count, paths, rows in results:
                fl.write(paths)
                fc.write(rows)
                bar.update(count)
        os.replace(tmp_list, list_path)
        os.replace(tmp_csv, csv_path)
    except BrokenProcessPool as e:
        raise RuntimeError(
            "synth: a worker process died (out of memory? or a calling script without `if __name__ == '__main__':`)"
        ) from e
    finally:
        for part in (tmp_list, tmp_csv):
            part.unlink(missing_ok=True)
