"""Images in object storage: `data.root` as an fsspec URL (s3://, gs://, az://, http(s)://, memory://).

The three formats read as they do from disk, through ranged reads:

- `files`: a list line is a key under the root's prefix; one GET of at most `max_bytes` + 1 bytes
  (a larger object is refused from those bytes, never read whole; an empty one is a failure);
- `recordio`: the `.idx` is fetched once (to a temporary file, parsed as strictly as on disk);
  each record is one ranged read at its offset, as long as the gap to the next record's offset
  (at most the size `max_bytes` allows) -- a record split into parts may take a second;
- `tar`: a shard is indexed once with the same bounded header reader as on disk, reading the
  object through a 1 MB read-ahead (small members: one request covers many headers); each
  member is then one ranged read of its header block and its data, and the header block must
  be the one indexed, so a shard replaced since is a failure, never read at old offsets.

A decoding thread reads its whole batch at once (`read_many`): on an async filesystem (s3fs,
gcsfs, adlfs, http) every read of the batch is in flight together on fsspec's event loop; on a
sync one (memory://, file://) a small thread pool does the same. Each read has a deadline
(`data.timeout`); a timeout, a throttling reply (503 SlowDown, 429), a 5xx or a dropped
connection is retried `RETRIES` times with doubling backoff, then recorded as the image's
failure. A missing object or denied access (403) is recorded at once. None raises: a bad
object costs one failure row, never the job. A root that cannot be reached at all (no bucket,
no endpoint, wrong credentials) is refused in one line when the source is opened, before work.

Credentials and the endpoint come from the filesystem's own lookup (for S3, botocore's:
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`, profiles)
or from `data.storage_options`, passed to `fsspec.filesystem` as is.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

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

log = logging.getLogger(__name__)

__all__ = ["RemoteFiles", "RemoteRecordIO", "RemoteTar", "Storage", "as_root", "is_url", "open_remote", "where"]

#: Default seconds one read may take (a GET of an image, a record, a member) before it is retried.
TIMEOUT = 60.0
#: Retries of a read that timed out, was throttled, met a 5xx or lost its connection.
RETRIES = 3
#: Seconds before the first retry; doubled for each next one (0.25, 0.5, 1: under 2 s in all).
BACKOFF = 0.25
#: S3 connections per process (botocore's default pool is 10): a batch's reads go out together.
CONNECTIONS = 64
#: Read-ahead while indexing a tar shard: one request covers the headers of many small members.
INDEX_BLOCK = 1 << 20

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BUSY = {errno.EBUSY, getattr(errno, "EREMOTEIO", errno.EIO)}  # s3fs's SlowDown / 503, and 500
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


def is_url(root: object) -> bool:
    """Whether data.root names object storage (`scheme://...`) rather than a local path."""
    return isinstance(root, str) and bool(_URL.match(root))


def as_root(text: str | os.PathLike) -> str | Path:
    """data.root as the stages keep it: a URL as written, a local path as a Path (as before)."""
    return str(text) if is_url(str(text)) else Path(text)


def where(root: str | os.PathLike) -> str:
    """The root as a run records it (the resume stamp, provenance): a URL as is, a local path resolved."""
    return str(root) if is_url(str(root)) else str(Path(root).resolve())


@dataclass(frozen=True)
class Storage:
    """How object storage is reached: fsspec's options for the root's filesystem, and a read's deadline."""

    options: dict = field(default_factory=dict, hash=False)
    timeout: float = TIMEOUT

    @classmethod
    def from_config(cls, data: dict) -> Storage:
        """From [data] (`storage_options`, `timeout`); a wrong value is a ValueError in one line."""
        options, timeout = data.get("storage_options", {}), data.get("timeout", TIMEOUT)
        if not isinstance(options, dict):
            raise ValueError(f"data.storage_options = {options!r} should be a table of fsspec options")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
            raise ValueError(f"data.timeout = {timeout!r} should be a positive number of seconds")
        return cls(dict(options), float(timeout))


def check_root(root: str, storage: Storage) -> None:
    """Refuse, in one line, a URL whose filesystem fsspec does not know or whose package is not installed."""
    try:
        import fsspec
    except ImportError:
        raise ValueError(f"data.root {root} is a URL: reading one needs fsspec; install introspect[storage]") from None
    protocol = fsspec.core.split_protocol(root)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as e:
        raise ValueError(
            f"data.root {root}: reading {protocol}:// needs a package that is not installed ({str(e)[:120]}); "
            "for s3:// install introspect[storage]"
        ) from None
    except ValueError:
        raise ValueError(f"data.root {root}: fsspec knows no filesystem {protocol}://") from None


# --------------------------------------------------------------------------- reads and their failures


class HTTPStatus(OSError):
    """An HTTP reply that is not the bytes asked for (http(s):// roots)."""

    def __init__(self, status: int, url: str) -> None:
        super().__init__(errno.EIO, f"HTTP {status}")
        self.status = status


def transient(e: BaseException) -> bool:
    """Whether a retry may succeed: a timeout, a throttling reply, a 5xx, a connection that failed or dropped."""
    if isinstance(e, (TimeoutError, asyncio.TimeoutError, ConnectionError)):
        return True
    if isinstance(e, HTTPStatus):
        return e.status in _RETRY_STATUS
    if isinstance(e, (FileNotFoundError, PermissionError)):
        return False
    if isinstance(e, OSError) and e.errno in _BUSY:
        return True
    names = {c.__name__ for c in type(e).__mro__}
    # fsspec's FSTimeoutError; aiohttp's ClientConnectionError, ServerDisconnectedError, ClientPayloadError;
    # botocore's ConnectionError family (EndpointConnectionError, ReadTimeoutError, ...) and HTTPClientError
    return bool(
        names
        & {
            "FSTimeoutError",
            "ClientConnectionError",
            "ClientPayloadError",
            "ServerDisconnectedError",
            "ConnectionError",
            "HTTPClientError",
            "IncompleteRead",
        }
    )


def _past_end(e: BaseException, start: int) -> bool:
    """A range that starts at or past the object's end (416): there are no bytes there, which is no error."""
    if isinstance(e, HTTPStatus):
        return e.status == 416
    return isinstance(e, OSError) and e.errno == errno.EINVAL and "range" in str(e).lower()


def reason(e: BaseException, timeout: float) -> str:
    """A failure's reason as a run records it: few distinct words, so the summary counts them."""
    if isinstance(e, FileNotFoundError):
        return "missing"
    if isinstance(e, PermissionError) or (isinstance(e, HTTPStatus) and e.status in (401, 403)):
        return "access denied"
    if isinstance(e, HTTPStatus) and e.status == 404:
        return "missing"
    if isinstance(e, (TimeoutError, asyncio.TimeoutError)) or type(e).__name__ in (
        "FSTimeoutError",
        "ReadTimeoutError",
    ):
        return f"timed out ({timeout:g} s, {RETRIES + 1} tries)"
    if (isinstance(e, HTTPStatus) and e.status in (429, 503)) or (isinstance(e, OSError) and e.errno == errno.EBUSY):
        return f"throttled ({RETRIES + 1} tries)"
    if isinstance(e, HTTPStatus):
        return f"server error {e.status}" if e.status >= 500 else f"refused (HTTP {e.status})"
    if transient(e):
        return f"unreachable ({RETRIES + 1} tries)"
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return f"unreadable: {text}"[:100]


class Remote:
    """One root's filesystem and the rules for reading from it: ranged reads, many in flight, bounded retries."""

    def __init__(self, url: str, storage: Storage) -> None:
        check_root(url, storage)
        import fsspec

        self.url, self.storage = url, storage
        options = dict(storage.options)
        protocol = fsspec.core.split_protocol(url)[0]
        if protocol in ("s3", "s3a"):  # a batch's reads go out together: more than botocore's 10 connections
            config = dict(options.get("config_kwargs") or {})
            config.setdefault("max_pool_connections", CONNECTIONS)
            options["config_kwargs"] = config
        self.http = protocol in ("http", "https")
        try:
            self.fs, self.base = fsspec.core.url_to_fs(url, **options)
        except (TypeError, ValueError, ImportError) as e:
            raise ValueError(f"data.root {url}: cannot open it with data.storage_options: {e}") from None
        self.base = self.base.rstrip("/") if not self.http else url.rstrip("/")
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def path(self, rel: str) -> str:
        """The filesystem path of a key under the root (a list line, a shard's name)."""
        return f"{self.base}/{rel.lstrip('/')}"

    # -- one read, retried

    async def _get(self, path: str, start: int, end: int) -> bytes:
        if self.http:
            return await self._http_range(path, start, end)
        return await self.fs._cat_file(path, start=start, end=end)  # keywords: s3fs's second is version_id

    async def _http_range(self, url: str, start: int, end: int) -> bytes:
        """fsspec's http cat_file reads a whole reply when a server ignores Range; this stops at `end`."""
        session = await self.fs.set_session()
        kw = dict(self.fs.kwargs)
        headers = dict(kw.pop("headers", None) or {}, Range=f"bytes={start}-{end - 1}")
        async with session.get(self.fs.encode_url(url), headers=headers, **kw) as r:
            if r.status not in (200, 206):
                raise HTTPStatus(r.status, url)
            if r.status == 200 and start > 0:
                raise OSError(errno.EIO, "the server ignores range requests")
            out = bytearray()
            while len(out) < end - start:
                chunk = await r.content.read(min(1 << 20, end - start - len(out)))
                if not chunk:
                    break
                out += chunk
            return bytes(out)

    async def _retrying(self, path: str, start: int, end: int) -> bytes:
        for attempt in range(RETRIES + 1):
            try:
                return await asyncio.wait_for(self._get(path, start, end), self.storage.timeout)
            except Exception as e:  # classified: past the end is no bytes, a transient one is retried
                if _past_end(e, start):
                    return b""
                if not transient(e) or attempt == RETRIES:
                    raise
            await asyncio.sleep(BACKOFF * 2**attempt)
        raise AssertionError("unreachable")

    def _sync_retrying(self, path: str, start: int, end: int) -> bytes:
        import time

        for attempt in range(RETRIES + 1):
            try:
                return self.fs.cat_file(path, start=start, end=end)
            except Exception as e:
                if _past_end(e, start):
                    return b""
                if not transient(e) or attempt == RETRIES:
                    raise
            time.sleep(BACKOFF * 2**attempt)
        raise AssertionError("unreachable")

    # -- many reads

    async def _gather(self, requests: list[tuple[str, int, int]]) -> list:
        return await asyncio.gather(*(self._retrying(*r) for r in requests), return_exceptions=True)

    def _sync_one(self, request: tuple[str, int, int]):
        try:
            return self._sync_retrying(*request)
        except Exception as e:
            return e

    def fetch(self, requests: list[tuple[str, int, int]]) -> list[tuple[bytes | None, str]]:
        """(bytes, "") or (None, reason) for each (path, start, end): all in flight together, never raising.

        Fewer bytes than asked means the object ends there (none: the range starts past its end)."""
        if not requests:
            return []
        if getattr(self.fs, "async_impl", False):
            import fsspec.asyn

            try:
                got = fsspec.asyn.sync(self.fs.loop, self._gather, requests)
            except Exception as e:  # the loop itself failed: every read of the batch fails alike
                got = [e] * len(requests)
        elif len(requests) == 1:
            got = [self._sync_one(requests[0])]
        else:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="introspect-remote")
            got = list(self._pool.map(self._sync_one, requests))
        return [(g, "") if isinstance(g, bytes) else (None, reason(g, self.storage.timeout)) for g in got]

    # -- whole objects and listings (not per image: no deadline of their own beyond the filesystem's)

    def info(self, path: str, what: str) -> dict:
        """The object's info, or a ValueError saying in one line why the root cannot be used."""
        try:
            return self.fs.info(path)
        except FileNotFoundError:
            raise ValueError(f"data.root {self.url}: no {what} {self._url(path)} (no such bucket or key)") from None
        except PermissionError:
            raise ValueError(
                f"data.root {self.url}: access denied to {self._url(path)}; check the credentials "
                "(AWS_ACCESS_KEY_ID, ... or data.storage_options)"
            ) from None
        except Exception as e:
            endpoint = os.environ.get("AWS_ENDPOINT_URL") or self.storage.options.get("endpoint_url") or ""
            raise ValueError(
                f"data.root {self.url}: cannot reach it{f' at {endpoint}' if endpoint else ''} ({reason(e, 0)}: "
                f"{str(e)[:120]}); check the endpoint, the network and data.storage_options"
            ) from None

    def _url(self, path: str) -> str:
        if self.http or "://" in path:
            return path
        return f"{self.url.split('://', 1)[0]}://{path}"

    def find(self) -> list[str]:
        """Every object under the root, relative to it."""
        try:
            found = self.fs.find(self.base)
        except Exception as e:
            raise ValueError(f"data.root {self.url}: cannot list it ({reason(e, 0)})") from None
        prefix = self.base + "/"
        return [p[len(prefix) :] if p.startswith(prefix) else p for p in found]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)


# --------------------------------------------------------------------------- the three formats


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
        """(the shard's size, member -> (data offset, size, header digest)), or why it cannot be read."""
        path = self.remote.path(name)
        heads: dict[str, bytes] = {}
        try:
            with self.remote.fs.open(path, "rb", block_size=INDEX_BLOCK, cache_type="readahead") as raw:
                size = raw.size
                members = tar_members(raw, heads)
        except HeaderTooLarge as e:
            return f"shard {name} is refused: {e}"
        except FileNotFoundError:
            return f"missing shard {name}"
        except Exception as e:  # denied, unreachable, not a tar
            import tarfile

            if isinstance(e, (tarfile.TarError, EOFError)):
                return f"shard {name} is not an uncompressed tar ({str(e)[:60]})"
            return f"unreadable shard {name}: {reason(e, self.storage.timeout)}"
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


def open_remote(format: str, root: str, storage: Storage | None = None):
    """The source for a URL root; a root that cannot be used is a ValueError in one line."""
    storage = storage or Storage()
    if format == "files":
        return RemoteFiles(root, storage)
    if format == "recordio":
        return RemoteRecordIO(root, storage)
    if format == "tar":
        return RemoteTar(root, storage)
    from .sources import FORMATS

    raise ValueError(f"data.format = {format!r} is not one of: {', '.join(FORMATS)}")
