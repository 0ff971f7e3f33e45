"""Images in object storage: `data.root` as an fsspec URL (s3://, gs://, az://, http(s)://, memory://).

How each format is read: `remote_formats`.

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
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["Remote", "Storage", "as_root", "is_url", "open_remote", "where"]

#: Default seconds one read may take (a GET of an image, a record, a member) before it is retried.
TIMEOUT = 60.0
#: Retries of a read that timed out, was throttled, met a 5xx or lost its connection.
RETRIES = 3
#: Seconds before the first retry; doubled for each next one (0.25, 0.5, 1: under 2 s in all).
BACKOFF = 0.25
#: S3 connections per process (botocore's default pool is 10): a batch's reads go out together.
CONNECTIONS = 64

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BUSY = {errno.EBUSY, getattr(errno, "EREMOTEIO", errno.EIO)}  # s3fs's SlowDown / 503, and 500
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


def is_url(root: object) -> bool:
    """Whether data.root names object storage (`scheme://...`) rather than a local path.

    `file://` is a local path: it keeps the local reader's checks (no FIFO, no device, no symlink loop)."""
    return isinstance(root, str) and bool(_URL.match(root)) and not root.lower().startswith("file://")


def as_root(text: str | os.PathLike) -> str | Path:
    """data.root as the stages keep it: a URL as written, a local path as a Path (as before)."""
    text = str(text)
    if text.lower().startswith("file://"):
        return Path(text[len("file://") :])
    return text if is_url(text) else Path(text)


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

    # -- whole objects and listings (a listing or an .idx download has no deadline beyond the filesystem's)

    def info(self, path: str, what: str) -> dict:
        """The object's info, or a ValueError saying in one line why the root cannot be used.

        Within `data.timeout` on an async filesystem: an endpoint that accepts and never answers
        is refused then, not after the client's own retries of its own timeouts."""
        try:
            if getattr(self.fs, "async_impl", False):
                import fsspec.asyn

                return fsspec.asyn.sync(self.fs.loop, self.fs._info, path, timeout=self.storage.timeout)
            return self.fs.info(path)
        except FileNotFoundError:
            raise ValueError(f"data.root {self.url}: no {what} {self._url(path)} (no such bucket or key)") from None
        except PermissionError:
            raise ValueError(
                f"data.root {self.url}: access denied to {self._url(path)}; check the credentials "
                "(AWS_ACCESS_KEY_ID, ... or data.storage_options)"
            ) from None
        except Exception as e:
            endpoint = self.storage.options.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL") or ""
            detail = str(e)[:120] or f"no answer within data.timeout = {self.storage.timeout:g} s"
            raise ValueError(
                f"data.root {self.url}: cannot reach it{f' at {endpoint}' if endpoint else ''} "
                f"({type(e).__name__}: {detail}); check the endpoint, the network and data.storage_options"
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


def open_remote(format: str, root: str, storage: Storage | None = None):
    """The source for a URL root; a root that cannot be used is a ValueError in one line."""
    from .remote_formats import RemoteFiles, RemoteRecordIO, RemoteTar

    storage = storage or Storage()
    if format == "files":
        return RemoteFiles(root, storage)
    if format == "recordio":
        return RemoteRecordIO(root, storage)
    if format == "tar":
        return RemoteTar(root, storage)
    from .sources import FORMATS

    raise ValueError(f"data.format = {format!r} is not one of: {', '.join(FORMATS)}")
