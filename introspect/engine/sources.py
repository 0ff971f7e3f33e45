"""Where a list's images come from: loose files, an MXNet/InsightFace RecordIO pair, or tar shards.

A `Source` turns one list line into the image's encoded bytes, or None and a short reason
(never an exception: a bad line, a missing member, a truncated record, a wrong offset, a record
over `max_bytes` are reasons, recorded as failures like an unreadable file). `keys()` enumerates
every item of a container in a stable order, for a run without a list (`resolve_list`).

- `files` (`FileSource`): a line is a path relative to `data.root` (`images.read_bytes`).
- `recordio` (`RecordIOSource`): `data.root` is the `.rec` (its `.idx` beside it) or the folder
  holding `train.rec` / `train.idx`; a line is a record id ("12345"). Read with `os.pread` at
  the offset the `.idx` gives, on one descriptor shared by threads; no MXNet needed.
- `tar` (`TarSource`): `data.root` is the folder of uncompressed shards; a line is
  `shard.tar:member` (shard relative to root). Each shard is indexed once, lazily, with every
  member header's data bounded (`MAX_TAR_HEADER`); a shard is opened per read, members read
  with `os.pread` at their data offset.

The RecordIO framing (dmlc-core `recordio.h`, MXNet `recordio.py`): each part is a uint32 magic
0xced7230a, a uint32 `lrecord` (upper 3 bits the continuation flag, lower 29 the length), the
payload, zero padding to 4 bytes. A payload holding the magic at a 4-byte boundary is split
there: parts flagged 1 (first), 2 (middle), 3 (last), the magic itself left out and put back
on reading. The payload starts with `IRHeader` (`IfQQ`: flag, label, id, id2); when flag > 0 a
label array of `flag` float32 follows (InsightFace's variant); then the encoded image.
InsightFace's record 0 is a header: flag > 0, no image, label[0] the first id past the images
(images are ids 1 .. label[0] - 1; identity records follow).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import struct
import tarfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from .images import read_bytes

log = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "FileSource",
    "RecordIOSource",
    "Source",
    "TarSource",
    "from_config",
    "open_source",
    "resolve_list",
]

FORMATS = ("files", "recordio", "tar")
EMPTY = "empty line in list"
NUL = "path contains NUL"


class Source(Protocol):
    def read(self, line: str, max_bytes: int) -> tuple[bytes | None, str]: ...

    def keys(self) -> Iterator[str]: ...


def _megs(n: int) -> str:
    return f"{n // (1 << 20)} MB" if n % (1 << 20) == 0 else f"{n:,} bytes"


# --------------------------------------------------------------------------- files


class FileSource:
    """Loose files: a line is a path relative to `root` (or absolute), read by `images.read_bytes`."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = str(root)

    def read(self, line: str, max_bytes: int) -> tuple[bytes | None, str]:
        if not line:
            return None, EMPTY
        return read_bytes(os.path.join(self.root, line), max_bytes)

    def keys(self) -> Iterator[str]:
        raise ValueError("a folder of files needs a list (data.list); only recordio and tar are enumerated")

    def __reduce__(self):
        return FileSource, (self.root,)


# --------------------------------------------------------------------------- RecordIO

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_PART = struct.Struct("<II")
IR_HEADER = struct.Struct("<IfQQ")  # MXNet's _IR_FORMAT 'IfQQ': flag, label, id, id2 (24 bytes)
_LEN_MASK = (1 << 29) - 1


def rec_paths(root: str | os.PathLike) -> tuple[Path, Path]:
    """(`.rec`, `.idx`) named by `root`: the .rec itself, or a folder holding train.rec and train.idx."""
    root = Path(root)
    rec = root / "train.rec" if root.is_dir() else root
    idx = rec.with_suffix(".idx")
    for p, what in ((rec, "RecordIO file"), (idx, "RecordIO index")):
        if not p.is_file():
            raise ValueError(
                f"data.root {root}: no {what} {p}; give the .rec (its .idx beside it) or the folder holding train.rec"
            )
    return rec, idx


#: All an MXNet index may hold: ASCII digits and the whitespace between them (no sign, no `_`, no other digit).
_IDX_BYTES = b"0123456789\t \r\n"


def parse_idx(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An MXNet `.idx` (text lines `id<TAB>offset`) -> (ids, offsets), two int64 arrays in file order.

    Parsed by numpy in one pass (17 M lines: 270 MB of arrays, no Python object per line); the
    text is checked first to hold only ASCII digits and whitespace, so a sign, an underscore or
    a non-ASCII digit is refused rather than read as a number.
    """
    bad = ValueError(f"{path} is not an MXNet index (lines of `id<TAB>offset`, ASCII digits)")
    lines = 0
    with open(path, "rb") as f:
        last = b"\n"
        while block := f.read(1 << 24):
            if block.translate(None, _IDX_BYTES):
                raise bad
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last not in (b"\n", b"")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)  # numpy's word for text it could not parse
            values = np.fromfile(path, dtype=np.int64, sep=" ")  # any whitespace separates
    except (ValueError, DeprecationWarning):
        raise bad from None
    if len(values) != 2 * lines:
        raise bad
    pairs = values.reshape(-1, 2)
    return np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1])


def record_id(line: str) -> int | None:
    """A list line as a record id: ASCII digits only (no sign, space, `_` or other script's digit), else None."""
    if not line or len(line) > 19 or not (line.isascii() and line.isdigit()):
        return None
    return int(line)


def record_limit(max_bytes: int) -> int:
    """The most payload bytes a record may hold for an image of `max_bytes`: its header and labels beside."""
    return max_bytes + IR_HEADER.size + (1 << 16)


class RecordIOSource:
    """An indexed MXNet RecordIO pair; a line is a record id. Thread-safe (pread on one descriptor)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = str(root)
        self.rec, self.idx = rec_paths(root)
        self._load_index(*parse_idx(self.idx))
        self.fd = os.open(self.rec, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.size = os.fstat(self.fd).st_size

    def _load_index(self, ids: np.ndarray, offsets: np.ndarray) -> None:
        """The parsed index, sorted by id for lookups; a repeated id is refused."""
        order = np.argsort(ids, kind="stable")
        self.ids, self.offsets = ids[order], offsets[order]
        twice = np.flatnonzero(self.ids[1:] == self.ids[:-1])
        if len(twice):  # which record is meant would be a guess: MXNet keeps the last, a merge of two .idx the first
            raise ValueError(
                f"{self.idx} lists record id {int(self.ids[twice[0]])} more than once "
                f"({len(twice)} repeats); an index names each record once: rebuild it (im2rec)"
            )
        self.starts = np.unique(offsets)  # record starts in file order: where a record's bytes end

    def __reduce__(self):  # a worker reopens the files rather than receive 270 MB of arrays
        return RecordIOSource, (self.root,)

    def __del__(self) -> None:
        fd = getattr(self, "fd", None)
        if fd is not None:
            os.close(fd)
            self.fd = None

    def __len__(self) -> int:
        return len(self.ids)

    def offset(self, rid: int) -> int | None:
        i = int(np.searchsorted(self.ids, rid))
        return int(self.offsets[i]) if i < len(self.ids) and self.ids[i] == rid else None

    def _pread(self, n: int, off: int) -> bytes:
        """Up to `n` bytes of the .rec at `off` (fewer at its end); an OSError when they cannot be read."""
        return os.pread(self.fd, n, off)

    def first_span(self, off: int, limit: int) -> int:
        """How many bytes the first read of the record at `off` takes: up to the next record, at most `limit` + 64."""
        j = int(np.searchsorted(self.starts, off, side="right"))
        end = int(self.starts[j]) if j < len(self.starts) else self.size
        return min(end - off, limit + 64)

    def record(self, off: int, limit: int) -> tuple[bytes | None, str]:
        """The payload of the record at byte `off` (parts joined), or None and why; never over `limit` bytes."""
        if not 0 <= off < self.size:
            return None, f"offset {off} outside {self.rec.name} ({self.size} bytes)"
        base, buf = off, self._pread(self.first_span(off, limit), off)  # usually the whole record, one call
        parts, total, pos, first = [], 0, off, True
        while True:
            if pos + 8 > base + len(buf):
                base, buf = pos, self._pread(8, pos)
                if len(buf) < 8:
                    return None, f"truncated record at offset {off}"
            magic, lrec = _PART.unpack_from(buf, pos - base)
            if magic != MAGIC:
                return None, f"bad magic at offset {pos} (wrong offset in the index?)"
            cflag, n = lrec >> 29, lrec & _LEN_MASK
            if (cflag in (0, 1)) != first or cflag > 3:
                return None, f"bad continuation flag {cflag} at offset {pos}"
            total += n + (0 if cflag in (0, 1) else 4)
            if total > limit:
                return None, f"record larger than {_megs(limit)}"
            if pos + 8 + n > base + len(buf):
                base, buf = pos, self._pread(8 + n, pos)
                if len(buf) < 8 + n:
                    return None, f"truncated record at offset {off}"
            if not first:
                parts.append(_MAGIC_BYTES)
            parts.append(buf[pos - base + 8 : pos - base + 8 + n])
            if cflag in (0, 3):
                return b"".join(parts) if len(parts) > 1 else parts[0], ""
            pos += 8 + ((n + 3) & ~3)
            first = False

    def unpack(self, rid: int, max_bytes: int) -> tuple[tuple | None, bytes | None, str]:
        """(IRHeader fields (flag, label or label array, id, id2), image bytes, reason) of record `rid`."""
        off = self.offset(rid)
        if off is None:
            return None, None, f"no record {rid} in {self.idx.name}"
        try:
            payload, reason = self.record(off, record_limit(max_bytes))
        except OSError as e:
            return None, None, f"unreadable: {e.strerror or e}"
        if payload is None:
            return None, None, reason
        if len(payload) < IR_HEADER.size:
            return None, None, f"record {rid} too short for its header"
        flag, label, i, i2 = IR_HEADER.unpack_from(payload)
        start = IR_HEADER.size
        if flag > 0:  # the label-array variant: `flag` float32 after the header
            start += 4 * flag
            if start > len(payload):
                return None, None, f"record {rid} too short for its {flag} labels"
            label = np.frombuffer(payload, np.float32, flag, IR_HEADER.size)
        return (flag, label, i, i2), payload[start:], ""

    def read(self, line: str, max_bytes: int) -> tuple[bytes | None, str]:
        if not line:
            return None, EMPTY
        if "\0" in line:
            return None, NUL
        rid = record_id(line)
        if rid is None:
            return None, "not a record id"
        if rid >= 1 << 63:
            return None, f"no record {rid} in {self.idx.name}"
        _, image, reason = self.unpack(rid, max_bytes)
        if image is None:
            return None, reason
        if len(image) > max_bytes:
            return None, f"record larger than {_megs(max_bytes)}"
        if not image:
            return None, "header record (no image)" if rid == 0 else "empty record"
        return image, ""

    def image_ids(self) -> np.ndarray:
        """The ids of the image records, ascending: InsightFace's 1 .. label[0] - 1 when record 0 is its header."""
        ids = self.ids
        if len(ids) and ids[0] == 0:
            head, image, _ = self.unpack(0, 1 << 20)
            if head is not None and head[0] > 0 and not image:  # flag > 0 and no image: a header record
                end = float(head[1][0])
                if not (np.isfinite(end) and end == int(end) and 1 <= end <= 2**62):
                    raise ValueError(
                        f"{self.rec}: record 0 is a header whose first label ({end}) is not the id past the "
                        "images; the file is damaged (or give a list of record ids in data.list)"
                    )
                return ids[(ids >= 1) & (ids < int(end))]
        return ids

    def keys(self) -> Iterator[str]:
        for rid in self.image_ids().tolist():
            yield str(rid)


# --------------------------------------------------------------------------- tar

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SEP = ".tar:"


#: The most bytes of header data (a pax record block, a GNU long name) one member may carry. tarfile
#: reads such data whole while indexing: a sparse shard whose header claims 3 GB would cost 3 GB.
MAX_TAR_HEADER = 1 << 20
_Identity = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


class HeaderTooLarge(Exception):
    """A member's header data is over `MAX_TAR_HEADER`: the shard is refused, never read whole."""


class _BoundedReads:
    """The shard's file for tarfile, which may read at most `limit` bytes per member header (reset per member).

    tarfile seeks over member data while indexing; the only reads are headers and their data
    (pax records, GNU long names, sparse maps). Bounding them bounds the memory indexing takes.
    """

    def __init__(self, f, limit: int) -> None:
        self.f, self.limit, self.used = f, limit, 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or self.used + n > self.limit:
            raise HeaderTooLarge(f"a member header claims more than {_megs(self.limit)}")
        self.used += n
        return self.f.read(n)

    def seek(self, *a) -> int:
        return self.f.seek(*a)

    def tell(self) -> int:
        return self.f.tell()


#: What ends a shard's index early, keeping the members before (a shard cut short, a damaged header).
CUT_SHORT = (tarfile.TarError, OSError, EOFError, ValueError)


def tar_members(raw, heads: dict[str, bytes] | None = None, cut_short: tuple = CUT_SHORT) -> dict[str, tuple[int, int]]:
    """member -> (data offset, size) of the uncompressed tar on `raw` (a seekable binary file).

    Header reads are bounded (`MAX_TAR_HEADER` per member, else `HeaderTooLarge`); a shard cut
    short keeps the members before the cut. `heads`, when given, gets each member's 512-byte
    header block hashed (a remote read checks the shard did not change since). A remote index
    passes a `cut_short` without OSError: a network failure is no end of the shard.
    """
    members: dict[str, tuple[int, int]] = {}
    f = _BoundedReads(raw, MAX_TAR_HEADER)
    with tarfile.open(fileobj=f, mode="r:") as tf:
        while True:
            f.used = 0
            try:
                m = tf.next()
            except cut_short:
                break  # cut short: the members before stay readable
            if m is None:
                break
            tf.members.clear()  # tarfile keeps every TarInfo; the index is all that is needed
            if m.isreg() and m.sparse is None:
                members[m.name] = (m.offset_data, m.size)
                if heads is not None:  # tarfile seeks back to where it was on its next call
                    raw.seek(m.offset_data - tarfile.BLOCKSIZE)
                    heads[m.name] = head_digest(raw.read(tarfile.BLOCKSIZE))
    return members


def head_digest(block: bytes) -> bytes:
    return hashlib.blake2b(block, digest_size=8).digest()


def _line_safe(name: str) -> bool:
    """Whether `name` can be one line of a list (no line break of any kind that `open_list` or a reader splits at)."""
    return "\n" not in name and "\r" not in name and "\0" not in name


class TarSource:
    """Uncompressed tar shards under `root`; a line is `shard.tar:member`. Thread-safe.

    Each shard is indexed once (member -> data offset, size), and opened per read: no descriptor
    is held between reads, so any number of shards works under a low `ulimit -n`. A shard that
    changed since it was indexed (another file, size or mtime) is a failure, never read at old offsets.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"data.root {root} is not a folder; give the folder holding the .tar shards")
        self._lock = threading.Lock()
        self._shards: dict[str, tuple[_Identity, dict[str, tuple[int, int]]] | str] = {}

    def __reduce__(self):
        return TarSource, (str(self.root),)

    def shard(self, name: str) -> tuple[_Identity, dict[str, tuple[int, int]]] | str:
        """(the file's identity, member -> (data offset, size)) of a shard, built once; or why it cannot be read."""
        entry = self._shards.get(name)
        if entry is not None:
            return entry
        with self._lock:
            entry = self._shards.get(name)
            if entry is None:
                entry = self._shards[name] = self._index(name)
        return entry

    def _open(self, name: str) -> tuple[int, _Identity] | str:
        path = os.path.join(self.root, name)
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                return f"shard {name} is not a regular file"
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            st = os.fstat(fd)
        except FileNotFoundError:
            return f"missing shard {name}"
        except (OSError, ValueError) as e:
            return f"unreadable shard {name}: {getattr(e, 'strerror', None) or e}"
        if not stat.S_ISREG(st.st_mode):  # swapped for something else since the stat
            os.close(fd)
            return f"shard {name} is not a regular file"
        return fd, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _index(self, name: str) -> tuple[_Identity, dict[str, tuple[int, int]]] | str:
        opened = self._open(name)
        if isinstance(opened, str):
            return opened
        fd, ident = opened
        try:
            with open(fd, "rb", closefd=False) as raw:
                members = tar_members(raw)
        except HeaderTooLarge as e:
            return f"shard {name} is refused: {e}"
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            return f"shard {name} is not an uncompressed tar ({str(e)[:60]})"
        finally:
            os.close(fd)
        return ident, members

    def read(self, line: str, max_bytes: int) -> tuple[bytes | None, str]:
        if not line:
            return None, EMPTY
        if "\0" in line:
            return None, NUL
        name, sep, member = line.partition(SEP)
        if not sep or not member:
            return None, "not shard.tar:member"
        entry = self.shard(name + ".tar")
        if isinstance(entry, str):
            return None, entry
        ident, members = entry
        where = members.get(member)
        if where is None:
            return None, f"no member {member} in {name}.tar"
        offset, size = where
        if size > max_bytes:
            return None, f"file larger than {_megs(max_bytes)}"
        if size == 0:
            return None, "empty file"
        opened = self._open(name + ".tar")
        if isinstance(opened, str):
            return None, opened
        fd, now = opened
        try:
            if now != ident:
                return None, f"shard {name}.tar changed since it was indexed"
            data = os.pread(fd, size, offset)
        except OSError as e:
            return None, f"unreadable: {e.strerror or e}"
        finally:
            os.close(fd)
        if len(data) < size:
            return None, "truncated member"
        return data, ""

    def shard_names(self) -> list[str]:
        """Every *.tar under root, relative to it, in path order (by parts: `a/b.tar` before `a.tar`)."""
        return [p.relative_to(self.root).as_posix() for p in sorted(self.root.rglob("*.tar"))]

    def keys(self) -> Iterator[str]:
        """Every image member (by extension) of every *.tar under root: shards sorted, members in archive order.

        A shard or member whose name holds a line break (or NUL) cannot be a list line: it is left
        out, and one warning says how many were.
        """
        skipped: list[str] = []
        for name in self.shard_names():
            if not _line_safe(name):
                skipped.append(name)
                continue
            entry = self.shard(name)
            if isinstance(entry, str):
                raise ValueError(entry)
            for member in entry[1]:
                if member.lower().endswith(IMAGE_EXTENSIONS):
                    if _line_safe(member):
                        yield f"{name}:{member}"
                    else:
                        skipped.append(f"{name}:{member}")
        if skipped:
            log.warning(
                "%d shard or member names hold a line break and cannot be list lines; left out (e.g. %r)",
                len(skipped),
                skipped[0],
            )


# --------------------------------------------------------------------------- choosing one


def open_source(format: str, root: str | os.PathLike, storage=None) -> Source:
    """The source for data.format and data.root; a wrong format or a missing container is a ValueError.

    A URL root (s3://, gs://, http(s)://, ...) is read through fsspec (`remote`, with `storage`:
    a `remote.Storage`); a local one as it always was, with no fsspec in the way."""
    from . import remote

    if isinstance(root, str):
        root = remote.as_root(root)  # file:// is a local path
    if remote.is_url(root):
        return remote.open_remote(format, root, storage)
    if format == "files":
        return FileSource(root)
    if format == "recordio":
        return RecordIOSource(root)
    if format == "tar":
        return TarSource(root)
    raise ValueError(f"data.format = {format!r} is not one of: {', '.join(FORMATS)}")


def from_config(data: dict) -> Source:
    """The source [data] names (format, root); a mistake is the user's, in one line."""
    from ..errors import UserError
    from .remote import Storage, as_root

    try:
        return open_source(data.get("format", "files"), as_root(data["root"]), Storage.from_config(data))
    except ValueError as e:
        raise UserError(str(e)) from None


def batch_reader(source: Source, lines: list[str], max_bytes: int):
    """`read(line)` for a batch read in order: a remote source fetches the whole batch at once
    (`read_many`: many reads in flight), a local one reads each line as it is asked for."""
    many = getattr(source, "read_many", None)
    if many is None:
        return lambda line: source.read(line, max_bytes)
    got = iter(many(lines, max_bytes))
    return lambda line: next(got)


def resolve_list(data: dict, run_dir, write: bool = False, source: Source | None = None) -> Path:
    """The list a stage runs: data.list, or (empty, for recordio and tar) the container enumerated into
    `<out>/list.txt`: written once by extract (`write`), then read as is (later stages, resumes, shards).

    Shards of one job may start together, each before it holds its shard: the enumeration is done
    under a lock on the list that the others wait for, and they then read the one it wrote.
    """
    from ..errors import UserError
    from .rundir import holding, writing

    if data["list"]:
        return Path(data["list"])
    fmt = data.get("format", "files")
    if fmt == "files":
        raise UserError("data.list is empty; loose files need a list (only data.format recordio and tar enumerate)")
    path = run_dir.path("list")
    if path.is_file():
        return path
    if not write:
        raise UserError(f"data.list is empty and {path} does not exist; run `introspect extract` first")
    with holding(path, "extract: enumerating", wait=True):
        if path.is_file():  # another process enumerated it while this one waited
            return path
        try:
            src = source or from_config(data)
            n = 0
            with writing(path) as tmp, open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="\n") as f:
                for key in src.keys():
                    f.write(key + "\n")
                    n += 1
                if n == 0:
                    raise ValueError(f"data.root {data['root']} holds no image to enumerate ({fmt})")
        except ValueError as e:
            raise UserError(str(e)) from None
    return path
