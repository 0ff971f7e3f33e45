"""The three formats in object storage, read as they are from disk, through ranged reads (`remote.Remote`):

- `files`: a list line is a key under the root's prefix; one GET of at most `max_bytes` + 1 bytes
  (a larger object is refused from those bytes, never read whole; an empty one is a failure);
- `recordio`: the `.idx` is fetched once (to a temporary file, parsed as strictly as on disk);
  each record is one ranged read at its offset, as long as the gap to the next record's offset
  (at most the size `max_bytes` allows) -- a record split into parts may take a second;
- `tar`: a shard is indexed once with the same bounded header reader as on disk, reading the
  object through a 1 MB read-ahead (small members: one request covers many headers); each
  member is then one ranged read of its header block and its data, and the header block must
  be the one indexed, so a shard replaced since is a failure, never read at old offsets.
"""

from __future__ import annotations

import errno
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from . import remote
from .remote import Remote, Storage, reason, transient
from .sources import (
    EMPTY,
    NUL,
    SEP,
    HeaderTooLarge,
    RecordIOSource,
    TarSource,
    _megs,
    head_digest,
    parse_idx,
    record_id,
    record_limit,
    tar_members,
)

__all__ = ["RemoteFiles", "RemoteRecordIO", "RemoteTar"]

#: Read-ahead while indexing a tar shard: one request covers the headers of many small members.
INDEX_BLOCK = 1 << 20


class RemoteFiles:
    """Loose objects: a line is a key under the root's prefix, read with one GET of at most max_bytes + 1."""

    def __init__(self, root: str, storage: Storage) -> None:
        self.root, self.storage = root, storage
        self.remote = Remote(root, storage)
        if not self.remote.http:  # a web server need not answer for a folder
            self.remote.info(self.remote.base, "prefix")

    def __reduce__(self):
        return RemoteFiles, (self.root, self.storage)

    def read(self, line: str, max_bytes: int) -> tuple[bytes | None, str]:
        return self.read_many([line], max_bytes)[0]

    def read_many(self, lines: list[str], max_bytes: int) -> list[tuple[bytes | None, str]]:
        """Every line's bytes (or None and why), the whole batch in flight together."""
        out: list[tuple[bytes | None, str]] = [(None, EMPTY)] * len(lines)
        asked = []
        for i, line in enumerate(lines):
            if "\0" in line:
                out[i] = (None, NUL)
            elif line:
                asked.append(i)
        got = self.remote.fetch([(self.remote.path(lines[i]), 0, max_bytes + 1) for i in asked])
        for i, (data, why) in zip(asked, got):
            if data is not None and len(data) > max_bytes:
                data, why = None, f"file larger than {_megs(max_bytes)}"
            elif data is not None and not data:
                data, why = None, "empty file"
            out[i] = (data, why)
        return out

    def keys(self) -> Iterator[str]:
        raise ValueError("a folder of files needs a list (data.list); only recordio and tar are enumerated")


class RemoteRecordIO(RecordIOSource):
    """A RecordIO pair in object storage: the index fetched once, each record one ranged read at its offset."""

    def __init__(self, root: str, storage: Storage) -> None:
        self.root, self.storage, self.fd = root, storage, None
        self.remote = Remote(root, storage)
        base = self.remote.base
        rec = base if base.endswith(".rec") else self.remote.path("train.rec")
        idx = rec[: -len(".rec")] + ".idx"
        self.size = int(self.remote.info(rec, "RecordIO file")["size"])
        self.remote.info(idx, "RecordIO index")
        self.rec, self.idx = PurePosixPath(rec), PurePosixPath(idx)
        self._path = rec
        with tempfile.TemporaryDirectory(prefix="introspect-idx-") as tmp:
            local = Path(tmp) / "train.idx"
            try:
                self.remote.fs.get_file(idx, str(local))
            except Exception as e:
                raise ValueError(f"data.root {root}: cannot fetch the index {idx} ({reason(e, 0)})") from None
            try:
                ids, offsets = parse_idx(local)
            except ValueError:
                raise ValueError(f"{idx} is not an MXNet index (lines of `id<TAB>offset`, ASCII digits)") from None
        self._load_index(ids, offsets)
        self._local = threading.local()

    def __reduce__(self):
        return RemoteRecordIO, (self.root, self.storage)

    def _pread(self, n: int, off: int) -> bytes:
        ahead = getattr(self._local, "ahead", None)
        got = ahead.get((n, off)) if ahead else None
        if got is None:
            got = self.remote.fetch([(self._path, off, off + n)])[0]
        data, why = got
        if data is None:
            raise OSError(errno.EIO, why)
        return data

    def read_many(self, lines: list[str], max_bytes: int) -> list[tuple[bytes | None, str]]:
        """Every line's record: the first read of each fetched together, then parsed as on disk."""
        spans = set()
        for line in lines:
            rid = record_id(line) if "\0" not in line else None
            off = self.offset(rid) if rid is not None and rid < 1 << 63 else None
            if off is not None and 0 <= off < self.size:
                spans.add((self.first_span(off, record_limit(max_bytes)), off))
        spans = sorted(spans, key=lambda s: s[1])
        self._local.ahead = dict(zip(spans, self.remote.fetch([(self._path, o, o + n) for n, o in spans])))
        try:
            return [self.read(line, max_bytes) for line in lines]
        finally:
            self._local.ahead = None


class RemoteTar(TarSource):
    """Tar shards in object storage: each indexed once through a read-ahead file, each member one ranged read."""

    def __init__(self, root: str, storage: Storage) -> None:
        self.root, self.storage = root, storage
        self.remote = Remote(root, storage)
        if not self.remote.http:
            self.remote.info(self.remote.base, "prefix")
        self._lock = threading.Lock()
        self._shards: dict = {}

    def __reduce__(self):
        return RemoteTar, (self.root, self.storage)

    def _index(self, name: str):
        """(the shard's size, member -> (data offset, size, header digest)), or why it cannot be read.

        A timeout or a throttling reply is retried like a read: the reason is kept for the whole run."""
        for attempt in range(remote.RETRIES + 1):
            got = self._index_once(name)
            if not isinstance(got, BaseException):
                return got
            if not transient(got) or attempt == remote.RETRIES:
                return f"unreadable shard {name}: {reason(got, self.storage.timeout)}"
            time.sleep(remote.BACKOFF * 2**attempt)
        raise AssertionError("unreachable")

    def _index_once(self, name: str):
        path = self.remote.path(name)
        heads: dict[str, bytes] = {}
        try:
            with self.remote.fs.open(path, "rb", block_size=INDEX_BLOCK, cache_type="readahead") as raw:
                size = raw.size
                members = tar_members(raw, heads, cut_short=(tarfile.TarError, EOFError, ValueError))
        except HeaderTooLarge as e:
            return f"shard {name} is refused: {e}"
        except FileNotFoundError:
            return f"missing shard {name}"
        except Exception as e:  # denied, unreachable, not a tar
            if isinstance(e, (tarfile.TarError, EOFError)):
                return f"shard {name} is not an uncompressed tar ({str(e)[:60]})"
            return e
        return size, {m: (off, n, heads[m]) for m, (off, n) in members.items()}

    def read(self, line: str, max_bytes: int) -> tuple[bytes | None, str]:
        return self.read_many([line], max_bytes)[0]

    def read_many(self, lines: list[str], max_bytes: int) -> list[tuple[bytes | None, str]]:
        """Every line's member: shards indexed first (once), then every member's read in flight together."""
        out: list[tuple[bytes | None, str]] = [(None, EMPTY)] * len(lines)
        asked: list[tuple[int, str, int, int, bytes]] = []  # (line, shard, data offset, size, header digest)
        for i, line in enumerate(lines):
            if not line:
                continue
            if "\0" in line:
                out[i] = (None, NUL)
                continue
            name, sep, member = line.partition(SEP)
            if not sep or not member:
                out[i] = (None, "not shard.tar:member")
                continue
            entry = self.shard(name + ".tar")
            if isinstance(entry, str):
                out[i] = (None, entry)
                continue
            where = entry[1].get(member)
            if where is None:
                out[i] = (None, f"no member {member} in {name}.tar")
            elif where[1] > max_bytes:
                out[i] = (None, f"file larger than {_megs(max_bytes)}")
            elif where[1] == 0:
                out[i] = (None, "empty file")
            else:
                asked.append((i, name + ".tar", *where))
        requests = [(self.remote.path(shard), off - 512, off + size) for _, shard, off, size, _ in asked]
        for (i, shard, _, size, head), (data, why) in zip(asked, self.remote.fetch(requests)):
            if data is None:
                out[i] = (None, why)
            elif len(data) < 512 + size:
                out[i] = (None, "truncated member")
            elif head_digest(data[:512]) != head:
                out[i] = (None, f"shard {shard} changed since it was indexed")
            else:
                out[i] = (data[512:], "")
        return out

    def shard_names(self) -> list[str]:
        """Every *.tar under the root, relative to it, in path order (by parts, as on disk)."""
        return sorted((n for n in self.remote.find() if n.endswith(".tar")), key=lambda n: n.split("/"))
