"""Activation storage in HDF5: crash-safe parts, and their concatenation into one file.

An HDF5 file that is being appended to can be left unreadable by a SIGKILL, so a long job
never appends to its result. Each finished chunk of the list is written as its own small part
file (written beside, then renamed into place: a part is either whole or absent). Resuming is
"skip the chunks whose part exists"; the result is built at the end by copying the parts in
list order. Shards and their join use the same parts-in-order rule, which is why a joined file
equals a single run's.

Layout of a result file: the stage's row datasets (its `Schema`), e.g. for `full.h5` and
`subset.h5` `prefacen` N x C float32 (the layer's center pixel), `facen` N x D float32 (the
embedding) and, when extract's `model.pool` has "mean", `prefacen_mean` N x C float32 (the
layer's spatial mean; older files lack it), for `labels.h5` `label` N int64 and `score` N float32; always
`index` N int64: 0-based line number in the list. Chunked, resizable (maxshape None). With
`extract.dtype = "float16"` the three activation datasets are float16 (`as_float32` widens them on
read: every stage computes in float32).
- `failures/index`, `failures/path`, `failures/reason`: images that could not be used.
- attributes: what produced it (model sha256, layer, preprocessing, list and its sha256,
  fraction, seed, chunk size), so a stale file is never mistaken for a current one.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..errors import UserError
from .rundir import ensure_space, is_temp, write_bytes, writing

log = logging.getLogger(__name__)

#: A stage's row datasets: name -> (shape of one row, dtype). `index` is always added.
Schema = dict[str, tuple[tuple[int, ...], type]]
#: The spatial mean's dataset in full.h5 / subset.h5 (absent when extract's pool left it out).
MEAN = "prefacen_mean"
#: Each pooled feature's dataset (`model.pool`, a view's `feature`); the merged model computes the
#: feature into an inner tensor of the same name.
DATASETS = {"center": "prefacen", "mean": MEAN}
#: How extract may store the activations and embeddings (`extract.dtype`); readers get float32 either way.
STORAGE = {"float32": np.float32, "float16": np.float16}
#: Datasets every file has besides the schema's.
BOOKKEEPING = ("index", "subset", "failures")
STR = h5py.string_dtype()
#: The HDF5 chunk is about 1 MB of rows (the reference used 512 x 512 float32).
CHUNK_BYTES = 1 << 20


@dataclass
class Rows:
    """Rows and failures for a stretch of the list, as held in memory before a part is written."""

    columns: dict[str, list[np.ndarray]] = field(default_factory=dict)  # schema name -> row blocks
    index: list[np.ndarray] = field(default_factory=list)
    subset: list[np.ndarray] = field(default_factory=list)
    fail_index: list[int] = field(default_factory=list)
    fail_path: list[str] = field(default_factory=list)
    fail_reason: list[str] = field(default_factory=list)
    fail_subset: list[bool] = field(default_factory=list)


def regular_file(path: Path, what: str = "file") -> Path:
    """`path` if a regular file (after symlinks), else one line: checked before any open (a FIFO blocks it)."""
    import stat

    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise UserError(f"{what} {path} cannot be read ({e.strerror or type(e).__name__})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise UserError(f"{what} {path} is {kind}, not a regular file; give a file")
    return path


def open_h5(path: Path) -> h5py.File:
    """An HDF5 file for reading; one that is not (junk, truncated, empty, not a regular file) is one line."""
    regular_file(path, "HDF5 file")
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as e:
        reason = str(e).split("(")[0].strip() or type(e).__name__
        raise UserError(
            f"{path} is not a readable HDF5 file ({reason}); delete it and run the stage that makes it again"
        ) from None


@contextlib.contextmanager
def writing_h5(path: Path) -> Iterator[h5py.File]:
    """A small HDF5 file built in memory, then written whole (beside, then renamed).

    A full disk then fails a plain write, which is one clean line; HDF5 itself does not recover
    from a full disk in the middle of a file.
    """
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        yield f
    write_bytes(path, buf.getvalue())


def write_part(path: Path, rows: Rows, schema: Schema) -> None:
    """Write one finished chunk; atomic, so a kill leaves it whole or absent."""
    with writing_h5(path) as f:
        for name, (shape, dtype) in schema.items():
            f[name] = _stack(rows.columns.get(name, []), (0, *shape), dtype)
        f["index"] = _stack(rows.index, (0,), np.int64)
        f["subset"] = _stack(rows.subset, (0,), bool)
        g = f.create_group("failures")
        g["index"] = np.asarray(rows.fail_index, np.int64)
        g.create_dataset("path", data=np.array(rows.fail_path, dtype=object), dtype=STR)
        g.create_dataset("reason", data=np.array(rows.fail_reason, dtype=object), dtype=STR)
        g["subset"] = np.asarray(rows.fail_subset, bool)


def _stack(arrays: list[np.ndarray], empty: tuple, dtype) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(empty, dtype)


def part_name(chunk: int) -> str:
    return f"c{chunk:09d}.h5"


def finished_chunks(parts: Path) -> set[int]:
    """Chunks whose part is complete; half-written temporary files from a kill are removed."""
    done = set()
    for p in parts.glob("c*.h5*"):
        if is_temp(p):
            p.unlink()
        else:
            done.add(int(p.stem[1:]))
    return done


@dataclass(frozen=True)
class Source:
    """Rows [start, stop) of one file, to be copied in order into a result."""

    path: Path
    start: int
    stop: int
    only_subset: bool = False


def concat(sources: Sequence[Source], failure_files: Iterable[Path], dest: Path, attrs: dict, schema: Schema) -> int:
    """Copy sources' rows in order, and every failure of `failure_files`, into a new result file.

    Built beside and renamed, so a kill during it leaves the inputs and no half result. A
    source with `only_subset` keeps its subset rows (and failures) only. Returns the rows written.
    """
    only_subset = any(s.only_subset for s in sources)
    total = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    ensure_space(dest.parent, sum(os.path.getsize(p) for p in {s.path for s in sources}), dest)
    with writing(dest) as tmp, h5py.File(tmp, "w") as out:
        ds = {name: _growing(out, name, shape, dtype) for name, (shape, dtype) in schema.items()}
        ds["index"] = _growing(out, "index", (), np.int64)
        for src in sources:
            with open_h5(src.path) as f:
                block = {k: f[k][src.start : src.stop] for k in ds}
                if src.only_subset:
                    mask = f["subset"][src.start : src.stop]
                    block = {k: v[mask] for k, v in block.items()}
            n = len(block["index"])
            for k, d in ds.items():
                d.resize(total + n, axis=0)
                d[total : total + n] = block[k]
            total += n
        fails = sorted(f for p in failure_files for f in read_failures(p, only_subset))
        g = out.create_group("failures")
        g["index"] = np.array([i for i, _, _ in fails], np.int64)
        g.create_dataset("path", data=np.array([p for _, p, _ in fails], dtype=object), dtype=STR)
        g.create_dataset("reason", data=np.array([r for _, _, r in fails], dtype=object), dtype=STR)
        for k, v in attrs.items():
            out.attrs[k] = v
    return total


def read_failures(path: Path, only_subset: bool = False) -> list[tuple[int, str, str]]:
    """(line index, path, reason) of each image a file could not use."""
    with open_h5(path) as f:
        g = f["failures"]
        idx, paths, reasons = g["index"][:], g["path"].asstr()[:], g["reason"].asstr()[:]
        keep = g["subset"][:] if only_subset and "subset" in g else np.ones(len(idx), bool)
    return [(int(i), str(p), str(r)) for i, p, r, k in zip(idx, paths, reasons, keep) if k]


def _growing(f: h5py.File, name: str, shape: tuple[int, ...], dtype) -> h5py.Dataset:
    rows = max(1, CHUNK_BYTES // (np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))))
    return f.create_dataset(name, (0, *shape), dtype, maxshape=(None, *shape), chunks=(rows, *shape))


def chunk_runs(path: Path, block: int = 1 << 20) -> Iterator[tuple[int, int, int]]:
    """(chunk, start, stop) row runs of a result file, streamed so memory stays flat."""
    with open_h5(path) as f:
        cs, index = int(f.attrs["chunk_size"]), f["index"]
        open_chunk, open_start = -1, 0
        for lo in range(0, len(index), block):
            chunks = index[lo : lo + block] // cs
            starts = np.flatnonzero(np.diff(chunks, prepend=open_chunk)) + lo
            for s in starts:
                if open_chunk >= 0:
                    yield open_chunk, open_start, int(s)
                open_chunk, open_start = int(chunks[s - lo]), int(s)
        if open_chunk >= 0:
            yield open_chunk, open_start, len(index)


def merge_sources(paths: Iterable[Path]) -> list[Source]:
    """Row runs of several files with disjoint chunks, in list order (for joining shards)."""

    def runs(path: Path) -> Iterator[tuple[int, Source]]:
        for c, a, b in chunk_runs(path):
            yield c, Source(path, a, b)

    return [src for _, src in heapq.merge(*map(runs, paths), key=lambda t: t[0])]


def printable(line: str) -> str:
    """A list line in a form HDF5 can store: bytes that were not UTF-8 (kept as surrogates) as \\xe9,
    a NUL (which HDF5's strings cannot hold) as \\x00."""
    text = line.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text.replace("\0", "\\x00")


def read_index(path: Path) -> np.ndarray:
    with open_h5(path) as f:
        return f["index"][:]


def load_activations(path: Path, min_rows: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(prefacen, index) of a result file, rows with NaN or inf reported and left out."""
    with open_h5(path) as f:
        if "prefacen" not in f or "index" not in f:
            raise UserError(f"{path} holds no activations (prefacen, index); run `introspect extract` again")
        X, index = as_float32(f["prefacen"][:]), f["index"][:]
    ok = np.isfinite(X).all(axis=1) if X.ndim == 2 else np.zeros(len(X), bool)
    if ok.sum() < min_rows:
        raise UserError(f"{path} holds {int(ok.sum())} usable rows; extract more images or raise extract.fraction")
    if not ok.all():
        log.warning(
            "left out %d rows with NaN or inf activations (lines %s...)", int((~ok).sum()), index[~ok][:5].tolist()
        )
    return X[ok], index[ok]


def check_dtype(dtype: object) -> type:
    """`extract.dtype` as a numpy type; a wrong value is one line."""
    if dtype not in STORAGE:
        raise UserError(
            f"extract.dtype = {dtype!r} should be one of {', '.join(map(repr, STORAGE))} "
            "(float16 stores the activations in half the bytes)"
        )
    return STORAGE[dtype]


def as_float32(a: np.ndarray) -> np.ndarray:
    """Stored activations as the stages compute on them: float16 storage is widened, float32 left as it is."""
    return a.astype(np.float32) if a.dtype == np.float16 else a


def count_rows(path: Path) -> int:
    with open_h5(path) as f:
        return len(f["index"])


def schema_of(path: Path) -> Schema:
    """The row datasets of a part or result file, as its writer's schema."""
    with open_h5(path) as f:
        return {k: (tuple(v.shape[1:]), v.dtype.type) for k, v in f.items() if k not in BOOKKEEPING}


def read_attrs(path: Path) -> dict:
    with open_h5(path) as f:
        return {k: _plain(v) for k, v in f.attrs.items()}


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode()
    return v


def dumps(d: dict) -> str:
    return json.dumps(d, sort_keys=True)


def has_mean(path: Path) -> bool:
    """Whether an extract result holds the spatial mean (`prefacen_mean`): files of older runs, or of
    pool ["center"], do not, and a stage then skips what needs it."""
    with open_h5(path) as f:
        return MEAN in f and "index" in f and len(f[MEAN]) == len(f["index"])


def pool_of(path: Path) -> list[str]:
    """The `pool` an extract result was made with (its attr, a JSON list); ["center"] for files older than it."""
    raw = read_attrs(path).get("pool")
    try:
        pool = json.loads(raw) if isinstance(raw, str) else ["center"]
    except ValueError:
        pool = ["center"]
    return [str(p) for p in pool] if isinstance(pool, list) else ["center"]


def rows_at(path: Path, index: np.ndarray, name: str = "prefacen") -> np.ndarray | None:
    """`name` rows of a result file for the list lines `index` (in that order); None if any (or `name`) is not there.

    For re-reading the activations of rows a later stage kept (clusters.h5 leaves NaN rows out),
    or another feature of them (`facen`, `prefacen_mean`: check `has_mean` first).
    """
    with open_h5(path) as f:
        if name not in f:
            return None
        kept = f["index"][:]
        rows = np.clip(np.searchsorted(kept, index), 0, max(len(kept) - 1, 0))
        if len(kept) == 0 or not np.array_equal(kept[rows], index):
            return None
        return as_float32(f[name][:][rows])
