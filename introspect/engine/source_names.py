"""The photo each aligned crop came from, for lists and pages a team reads in its own file names.

`introspect align` writes, beside its list of crops (`000000/000000092-0.jpg`), `<list stem>.faces.csv`:
row k is line k of that list, with the source photo's path (`source_path`) and the face's index in it
(`face`). Nothing per row is copied into the HDF5 results: a row's `index` is its list line, which is
the CSV's row, so the CSV is the mapping. Why not a `source` string dataset in full.h5: at 17 M rows a
fixed-length byte column is ~100 bytes a row (1.7 GB, as much as the activations of a small layer),
variable-length HDF5 strings are slow to write and read, and both would have to be carried through
parts, resume and join. The CSV is read only where names are shown: the report's few thousand
thumbnails (one streaming pass up to the last one wanted) and label's per-cluster exports (one pass in
step with the labels). extract and label record the CSV's path and sha256 as attributes, so a later
change to it (a re-alignment) is noticed instead of naming the wrong photos. A list without a CSV
beside it behaves as before.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py

from . import store
from .nets import sha256_file
from .rundir import writing_dir

log = logging.getLogger(__name__)

__all__ = ["Face", "faces", "faces_csv", "locate", "record", "shown_names", "write_source_lists"]

#: The faces CSV's columns this module reads (align may add others).
SOURCE, FACE = "source_path", "face"
#: Columns of each `sources/<cluster>.csv`.
EXPORT_COLUMNS = ["line", "crop", SOURCE, FACE]
#: Rows per block when reading labels back.
BLOCK = 1 << 16


def faces_csv(list_path: str | os.PathLike) -> Path:
    """lists/aligned.txt -> lists/aligned.faces.csv (align's name for it)."""
    p = Path(list_path)
    return p.with_name(p.stem + ".faces.csv")


def record(list_path: str | os.PathLike) -> dict[str, str]:
    """Attributes naming the faces CSV beside the list (path and sha256); {} when there is none."""
    p = faces_csv(list_path)
    return {"faces_csv": str(p), "faces_sha256": sha256_file(p)} if p.is_file() else {}


def locate(list_path: str | os.PathLike, sha256: str | None = None) -> Path | None:
    """The faces CSV beside the list, when there is one and (given `sha256`) it is the one recorded."""
    p = faces_csv(list_path)
    if not p.is_file():
        return None
    if sha256 and sha256_file(p) != sha256:
        log.warning("%s changed since the run used it (aligned again?); showing the crops' names", p)
        return None
    return p


@dataclass(frozen=True)
class Face:
    """One crop's source: the photo's path (as in the photo list), the face's index, whether the photo has more."""

    source: str
    face: int
    several: bool

    def shown(self) -> str:
        """`photo.jpg`, or `photo.jpg (face k)` when the photo gave several crops."""
        name = store.printable(self.source)
        return f"{name} (face {self.face})" if self.several else name


def faces(path: Path) -> Iterator[Face | None]:
    """The CSV's rows in order (row k: list line k) as `Face`s; None for a row that cannot be read.

    A photo's faces are consecutive rows (align writes them so), so whether a photo has several is
    seen from a face index above 0 or the next row's photo: one row of look-ahead, memory flat.
    """
    rows = _pairs(path)
    prev, cur = None, next(rows, _END)
    while cur is not _END:
        nxt = next(rows, _END)
        yield _face(prev, cur, None if nxt is _END else nxt)
        prev, cur = cur, nxt


def _pairs(path: Path) -> Iterator[tuple[str, int] | None]:
    """(source path, face index) per CSV row, in order; None for a row that is not one; nothing without the columns.

    A row is one line (list lines hold no newline); a line without quotes is split on commas, the
    rest go through the csv module: 17 M rows in the time of a few plain passes.
    """
    with open(path, newline="\n", encoding="utf-8", errors="surrogateescape") as f:
        columns = _columns(path, next(f, ""))
        if columns is None:
            return
        s, k = columns
        for line in f:
            row = line.rstrip("\r\n").split(",") if '"' not in line else next(csv.reader([line]), [])
            try:
                yield row[s], int(row[k])
            except (IndexError, ValueError):
                yield None


_END = object()


def _face(prev, cur, nxt) -> Face | None:
    if cur is None:
        return None
    several = cur[1] > 0 or (nxt is not None and nxt[0] == cur[0] and nxt[1] > cur[1])
    return Face(cur[0], cur[1], several or (prev is not None and prev[0] == cur[0]))


def shown_names(list_path: str | os.PathLike, wanted: Iterable[int], sha256: str | None = None) -> dict[int, str]:
    """{list line: the source photo's name} for the `wanted` lines; {} when the list has no faces CSV.

    One pass over the CSV's lines (a row is one line: list lines hold no newline), parsing only the
    wanted rows and their neighbours, so a few thousand names out of 17 M rows cost a read of the file.
    """
    want = sorted(set(int(i) for i in wanted))
    path = locate(list_path, sha256) if want else None
    got: dict[int, str] = {}
    if path is None:
        return got
    with open(path, newline="\n", encoding="utf-8", errors="surrogateescape") as f:
        columns = _columns(path, next(f, ""))
        if columns is None:
            return got
        j, prev, cur, at = 0, "", None, -1
        for i, line in enumerate(itertools.chain(f, [None])):
            if cur is not None and at == want[j]:
                face = _face(_parse(prev, columns), _parse(cur, columns), _parse(line, columns))
                if face is not None:
                    got[at] = face.shown()
                j += 1
                if j == len(want):
                    break
            prev, cur, at = cur, line, i
            if line is None:
                break
    return got


def _columns(path: Path, header: str) -> tuple[int, int] | None:
    """Where source_path and face are in the CSV's header line; None (logged) when it lacks them."""
    names = next(csv.reader([header]), [])
    if SOURCE not in names or FACE not in names:
        log.warning("%s has no %s and %s columns; showing the crops' names", path, SOURCE, FACE)
        return None
    return names.index(SOURCE), names.index(FACE)


def _parse(line: str | None, columns: tuple[int, int]) -> tuple[str, int] | None:
    """One CSV line -> (source path, face index), None when it is not one."""
    if not line:
        return None
    row = next(csv.reader([line]), [])
    try:
        return row[columns[0]], int(row[columns[1]])
    except (IndexError, ValueError):
        return None


def _csv_line(i: int, crop: str, source: str, face: object) -> str:
    """One export row; quoted (by the csv module) only when a path holds a comma, quote or line break."""
    if any(c in crop or c in source for c in ',"\r\n'):
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([i, crop, source, face])
        return buf.getvalue()
    return f"{i},{crop},{source},{face}\n"


def write_source_lists(
    labels: Path, list_path: Path, names: dict[int, str], folder: Path, dataset: str = "label"
) -> dict[int, int] | None:
    """`folder/<name>.csv` per cluster: each labelled crop's list line, crop path, source photo and face index.

    Streams labels.h5, the list and the faces CSV together (all in list order). Returns the counts,
    or None (and no folder) when the list has no faces CSV beside it.
    """
    path = locate(list_path)
    if path is None:
        if folder.is_dir():
            import shutil

            shutil.rmtree(folder)  # an earlier labelling's, of another list
        return None
    from .stream import open_list

    keys = list(names)
    column = {k: j for j, k in enumerate(keys)}
    counts = [0] * len(keys)
    with writing_dir(folder) as tmp:
        handles = [
            open(tmp / f"{names[k]}.csv", "w", newline="", encoding="utf-8", errors="surrogateescape") for k in keys
        ]
        try:
            for h in handles:
                h.write(",".join(EXPORT_COLUMNS) + "\n")
            with h5py.File(labels, "r") as f, open_list(list_path) as lines:
                rows = itertools.zip_longest(lines, _pairs(path))  # a short CSV: no source for the rest
                index, label = f["index"], f[dataset]
                at, line, face = -1, "", None
                for lo in range(0, len(index), BLOCK):
                    for i, k in zip(index[lo : lo + BLOCK].tolist(), label[lo : lo + BLOCK].tolist()):
                        while at < i:
                            (line, face), at = next(rows, ("", None)), at + 1
                        j = column.get(k)
                        if j is None:
                            continue
                        handles[j].write(_csv_line(i, (line or "").rstrip("\r\n"), *(face or ("", ""))))
                        counts[j] += 1
        finally:
            for h in handles:
                h.close()
    return dict(zip(keys, counts))
