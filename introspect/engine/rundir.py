"""The run folder: every artifact's path by name, one writer at a time, writes that are whole or absent.

A run folder (`extract.out`) holds everything a pipeline made for one net and one list. Stages
find each other's files only through `RunDir`, so a file name is written once, here. Three
rules keep the folder trustworthy when runs are killed or started twice:

- one writer: a stage that writes holds the folder's lock (`RunDir.lock`, an `fcntl.flock`
  the OS releases when the process dies, so a kill -9 never leaves a stale lock); a second run
  is refused with one line naming the holder's pid. Shards of one job lock their own shard;
- whole or absent: every file is written beside, then renamed into place (`writing`,
  `writing_dir`), so a kill leaves the old file or the new one, never half of one;
- a file that cannot be read is the user's to fix in one line (`read_json`), never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

#: Artifact name -> file (or folder) name inside the run folder.
ARTIFACTS = {
    "full": "full.h5",  # extract: every readable image's (prefacen, facen)
    "subset": "subset.h5",  # extract: the random subset the clustering sees
    "list": "list.txt",  # extract: a RecordIO or tar container enumerated, when data.list is ""
    "clusters": "clusters.h5",  # cluster: map, labels, PCA curve
    "classifier": "classifier.onnx",  # cluster: activation -> cluster head
    "metrics": "metrics.json",  # cluster: everything measured
    "sweep": "sweep",  # sweep: sweep.json, contact.png, maps.h5
    "evaluation": "evaluation.json",  # evaluate: scores against planted attributes
    "names": "cluster_names.toml",  # merge: the user's names for the clusters
    "merged": "merged.onnx",  # merge: the net with the head grafted
    "labels": "labels.h5",  # label: a cluster per image
    "lists": "clusters",  # label: one list per cluster (and unknown.txt)
    "facet_lists": "facets",  # label: one list per facet
    "source_lists": "sources",  # label: per cluster, each aligned crop's source photo (a faces CSV beside the list)
    "distribution": "distribution.csv",  # label: subset vs labelled shares
    "distribution_json": "distribution.json",  # label: the same rows, typed
    "report": "report",  # report: index.html and its images
    "timings": "timings.json",  # every stage: wall time, for the report
    "scale": "scale.json",  # bench/scale.py: the cost model, for the report
    "shards": "shards",  # --shard i/n results, before `introspect join`
}
#: Inside the sweep folder.
SWEEP_FILES = {"sweep_json": "sweep.json", "contact": "contact.png", "maps": "maps.h5"}
LOCK = ".lock"


@dataclass(frozen=True)
class Shard:
    """Every `count`-th chunk of the list from chunk `index`: one machine's share of a job."""

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

    @property
    def text(self) -> str:
        """As recorded in a result file's `shard` attribute ("" for a whole run)."""
        return "" if self.count == 1 else f"{self.index}/{self.count}"


@dataclass
class StageTiming:
    """What a stage adds to its line in timings.json (the one place stage times are recorded)."""

    record: bool = True
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunDir:
    """One run folder; artifact paths by name (`run.path("merged")`), its lock, its timings."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def path(self, name: str) -> Path:
        if name in SWEEP_FILES:
            return self.root / ARTIFACTS["sweep"] / SWEEP_FILES[name]
        return self.root / ARTIFACTS[name]

    def classifier(self, view: str = "center") -> Path:
        """A view's classifier head: classifier.onnx for the center view, classifier_<view>.onnx for the others."""
        return self.path("classifier") if view == "center" else self.root / f"classifier_{view}.onnx"

    def result(self, kind: str, shard: Shard = Shard()) -> Path:
        """A streamed result (full, subset, labels): in the folder, or in shards/ for one shard."""
        where = self.root / ARTIFACTS["shards"] if shard.count > 1 else self.root
        return where / f"{kind}{shard.suffix}.h5"

    def parts(self, job: str, shard: Shard = Shard()) -> Path:
        """Where a streamed job keeps its finished chunks until the result is built."""
        return self.root / f"{job}{shard.suffix}"

    def require(self, name: str, made_by: str) -> Path:
        """The artifact's path, or one line saying which stage makes it."""
        p = self.path(name)
        if not p.exists():
            raise UserError(f"{p} does not exist; run `make {made_by}` first (or `introspect {made_by}`)")
        if p.is_dir() != (ARTIFACTS.get(name) in ("sweep", "clusters", "report", "shards")):
            raise UserError(f"{p} is not what {made_by} writes; remove it and run `introspect {made_by}` again")
        return p

    @contextlib.contextmanager
    def lock(self, stage: str, shard: Shard = Shard()) -> Iterator[None]:
        """Hold the folder (or one shard of it) for `stage`; a second writer gets one line and exit 2.

        `flock` is released by the OS when the holder dies, so a kill -9 leaves no stale lock.
        The lock file is removed on release; a run that opened it just before checks, once it
        holds the lock, that the file is still the one in the folder (else it tries again).
        """
        where = self.root / ARTIFACTS["shards"] if shard.count > 1 else self.root
        try:
            where.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the run folder {where}: {e.strerror}; choose another --out") from None
        path = where / (LOCK + shard.suffix)
        fd = _acquire(path, self.root)
        if shard.count == 1:  # the folder's own files are this holder's: a killed writer's leftovers go
            for stale in self.root.glob("*.tmp"):
                with contextlib.suppress(OSError):
                    stale.unlink() if stale.is_file() else shutil.rmtree(stale)
        with _held(fd, path, stage):
            yield

    @contextlib.contextmanager
    def stage(self, stage: str, shard: Shard = Shard()) -> Iterator[StageTiming]:
        """Hold the lock while a stage writes; on success record its wall time in timings.json.

        The body may add figures to `extra` (images=...), or turn `record` off (nothing was done).
        """
        timing = StageTiming(record=shard.count == 1)
        with self.lock(stage, shard):
            started = time.perf_counter()
            yield timing
            if timing.record:
                self.record_timing(stage, time.perf_counter() - started, **timing.extra)

    def record_timing(self, stage: str, seconds: float, **extra) -> None:
        """Add a stage's wall time to timings.json (a corrupt one is replaced: it is only a record)."""
        path = self.path("timings")
        try:
            data = json.loads(path.read_text())
            data = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            data = {}
        data[stage] = {"seconds": round(float(seconds), 3), **extra}
        write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode())

    def read_json(self, name: str, made_by: str, required: bool = False) -> dict | None:
        """A JSON artifact as a dict; None when absent (unless required); corrupt is one line."""
        data = self._json(name, made_by, required)
        if data is not None and not isinstance(data, dict):
            raise UserError(f"{self.path(name)} does not hold what {made_by} writes; run `introspect {made_by}` again")
        return data

    def read_json_rows(self, name: str, made_by: str) -> list[dict]:
        """A JSON artifact that is a list of rows (label's distribution)."""
        data = self._json(name, made_by, True)
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise UserError(f"{self.path(name)} does not hold what {made_by} writes; run `introspect {made_by}` again")
        return data

    def _json(self, name: str, made_by: str, required: bool) -> object:
        p = self.path(name)
        if not p.is_file():
            if required:
                self.require(name, made_by)
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"{p} is not readable JSON ({e}); run `introspect {made_by}` again to rewrite it") from None


@contextlib.contextmanager
def holding(path: Path, stage: str, wait: bool = False) -> Iterator[None]:
    """Hold a file outside a run folder (a list several runs may write) with the folder lock's rules.

    The lock is `.<name>.lock` beside `path`. Without `wait`, a second holder is refused in one line
    naming the first; with it, the second waits (for a short job, such as enumerating a container,
    that the first finishes for both).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {path.parent}: {e.strerror}; choose another path") from None
    lock = path.with_name(f".{path.name}.lock")
    fd = _acquire(lock, path, wait=wait, hint="or write another file")
    with _held(fd, lock, stage):
        yield


@contextlib.contextmanager
def _held(fd: int, lock: Path, stage: str) -> Iterator[None]:
    """An acquired lock file says who holds it; removed, then closed (closing releases the flock)."""
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "stage": stage, "since": time.time()}).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _acquire(path: Path, root: Path, wait: bool = False, hint: str = "or use another --out") -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot lock {path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(
                    f"{root} is in use by another introspect run ({holder}); wait for it to end, {hint}"
                ) from None
            raise UserError(f"cannot lock {path}: {e.strerror}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed it as we opened it: take the new one


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']}, {info['stage']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


# --------------------------------------------------------------------------- whole or absent


def temp_name(path: Path) -> Path:
    """Where `path` is built: beside it, so the rename is atomic (a writer that infers the format from
    the name, like matplotlib, is told the format)."""
    return path.with_name(path.name + ".tmp")


def is_temp(path: Path) -> bool:
    return path.name.endswith(".tmp")


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def check_output(path: Path, folder: bool = False) -> None:
    """Refuse, in one line, an output path that exists as something else than what is written there.

    A result is written beside and renamed over its path, which would replace a device node,
    a FIFO or a socket (as root, `--out /dev/null` would replace the system's) or, for a folder,
    a file: such a path is the user's mistake, never replaced. A symbolic link is judged by
    what it points to. Callers that do work first check here before it, `writing` again at the end.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as e:  # a parent that is a file (ENOTDIR), a loop of links, no permission
        raise UserError(f"cannot write {path}: {e.strerror}; choose another path") from None
    if stat.S_ISDIR(st.st_mode) != folder or not (folder or stat.S_ISREG(st.st_mode)):
        want = "a folder" if folder else "a regular file"
        raise UserError(
            f"{path} exists and is {_kind(st.st_mode)}, not {want}; it is never replaced: "
            "remove it or choose another path"
        )


@contextlib.contextmanager
def writing(path: Path) -> Iterator[Path]:
    """Build a file at a temporary name beside `path`; renamed into place only if the body succeeds.

    A kill leaves the old file (and a temporary one the next writer overwrites); an exception
    removes the temporary file. A full disk becomes one line that says nothing was lost. A path
    that exists as something else than a regular file is refused (`check_output`), never replaced.
    """
    path = Path(path)
    check_output(path)
    tmp = temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if tmp.is_symlink() or (tmp.exists() and not tmp.is_dir()):  # ours by name: never written through
            tmp.unlink()  # (a link planted there would truncate its target; a FIFO would block the write)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise disk_error(e, path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes(path: Path, data: bytes) -> None:
    """Write beside, then rename: a reader (or a resumed run) never sees half a file."""
    with writing(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def writing_dir(path: Path) -> Iterator[Path]:
    """Build a folder beside `path`, then swap it in: the old folder stays whole until the new one is."""
    path = Path(path)
    check_output(path, folder=True)
    tmp, old = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")
    for stale in (tmp, old):  # left by a kill during an earlier swap
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            old.rename(path)
        raise disk_error(e, path) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_space(folder: Path, needed: int, what: Path) -> None:
    """Refuse before writing `what` when its folder's disk cannot hold `needed` bytes (and a margin).

    HDF5 does not recover from a full disk in the middle of a file (it can even crash the process
    as it closes), so a large result is checked before it is begun.
    """
    free = shutil.disk_usage(folder).free
    if free < needed * 1.05 + (16 << 20):
        raise UserError(
            f"no space left on the device for {what} (needs about {needed / 2**30:.2f} GiB, "
            f"{free / 2**30:.2f} GiB free); free space and run again: finished work is kept"
        )


def disk_error(e: OSError, path: Path) -> Exception:
    """A full disk or a read-only folder is the user's to fix: one line; anything else stays an OSError."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(
            f"no space left on the device while writing {path}; free space and run again: finished work is kept"
        )
    if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return UserError(f"cannot write {path}: {e.strerror}; choose a writable --out")
    if e.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST):  # a file where a folder goes, or the reverse
        return UserError(f"cannot write {path}: {e.strerror}; choose another path")
    return e
