"""Images in object storage: a real S3 server (moto's, on 127.0.0.1) and a real HTTP server, never a mocked client.

The same images as loose files, a .rec/.idx and two tar shards are uploaded; extract and label
read them through s3:// and must give the rows a run on disk gives. Missing, corrupt, empty and
denied objects are recorded failures; throttling and slow replies are retried, then recorded.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import kmeans_run, make_config, write_images
from test_sources import insightface_rec, write_tar

from introspect import config
from introspect.engine import remote, sources
from introspect.engine.images import MAX_BYTES
from introspect.errors import UserError
from introspect.stages import extract, label, merge
from introspect.stages.settings import check

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

BUCKET = "imgs"
KEY, SECRET = "testing", "testing"


def _client(endpoint: str):
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name="us-east-1"
    )


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on a free port, holding 24 JPEGs as loose objects, as an InsightFace .rec and as two
    tar shards, plus a corrupt, an empty and a too-large object; the same files on disk beside."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    tmp = tmp_path_factory.mktemp("s3data")
    rel = write_images(tmp / "loose", 24, seed=11)
    blobs = [(tmp / "loose" / p).read_bytes() for p in rel]
    (tmp / "rec").mkdir()
    insightface_rec(tmp / "rec" / "train.rec", blobs, [i % 3 for i in range(24)])
    (tmp / "shards" / "sub").mkdir(parents=True)
    write_tar(tmp / "shards" / "a.tar", {f"{i:06d}.jpg": blobs[i] for i in range(14)} | {"meta.json": b"{}"})
    write_tar(tmp / "shards" / "sub" / "b.tar", {f"{i:06d}.jpg": blobs[i] for i in range(14, 24)})
    c = _client(endpoint)
    c.create_bucket(Bucket=BUCKET)
    for p in sorted(tmp.rglob("*")):
        if p.is_file():
            c.put_object(Bucket=BUCKET, Key=p.relative_to(tmp).as_posix(), Body=p.read_bytes())
    c.put_object(Bucket=BUCKET, Key="loose/bad/corrupt.jpg", Body=b"\xff\xd8not a jpeg at all" * 10)
    c.put_object(Bucket=BUCKET, Key="loose/bad/empty.jpg", Body=b"")
    c.put_object(Bucket=BUCKET, Key="loose/bad/large.jpg", Body=blobs[0] + b"\0" * 4096)
    yield {"endpoint": endpoint, "tmp": tmp, "rel": rel, "blobs": blobs, "server": server}
    server.stop()


def _options(s3: dict) -> dict:
    return {"endpoint_url": s3["endpoint"], "key": KEY, "secret": SECRET, "client_kwargs": {"region_name": "us-east-1"}}


def _storage(s3: dict, **kw) -> remote.Storage:
    return remote.Storage(_options(s3), **kw)


def _rows(out: Path, kind: str = "full") -> dict:
    with h5py.File(out / f"{kind}.h5") as f:
        rows = {k: f[k][:] for k in ("index", "prefacen", "facen")}
        rows["failures"] = [
            (int(i), p.decode(), r.decode())
            for i, p, r in zip(*(f[f"failures/{k}"][:] for k in ("index", "path", "reason")))
        ]
        rows["data_root"] = f.attrs["data_root"]
    return rows


@pytest.fixture(scope="module")
def on_disk(s3, tmp_path_factory, tiny_model):
    """The loose files' run on disk: the rows every read from S3 must equal."""
    tmp = tmp_path_factory.mktemp("disk")
    lst = tmp / "list.txt"
    lst.write_text("".join(p + "\n" for p in s3["rel"]))
    cfg = make_config(lst, s3["tmp"] / "loose", tiny_model, tmp / "run", fraction=0.5)
    extract.run(cfg, progress=False)
    return lst, _rows(tmp / "run")


# --------------------------------------------------------------------------- extract and label from S3


@pytest.mark.parametrize(
    "fmt, root, listed",
    [
        ("files", "loose", True),
        ("recordio", "rec/train.rec", False),
        ("recordio", "rec", False),
        ("tar", "shards", False),
    ],
)
def test_extract_from_s3_equals_disk(s3, on_disk, tmp_path, tiny_model, fmt, root, listed):
    lst, ref = on_disk
    url = f"s3://{BUCKET}/{root}"
    cfg = make_config(lst if listed else "", url, tiny_model, tmp_path / "run", fraction=0.5)
    cfg["data"].update(format=fmt, storage_options=_options(s3))
    summary = extract.run(cfg, progress=False)
    got = _rows(tmp_path / "run")
    assert summary.images == 24 and summary.failures == 0
    for k in ("index", "prefacen", "facen"):
        assert np.array_equal(got[k], ref[k]), k
    assert got["data_root"] == url  # the URL is what the run records
    if fmt == "tar":
        on_disk_keys = list(sources.TarSource(s3["tmp"] / "shards").keys())  # the same order as on disk
        assert (tmp_path / "run" / "list.txt").read_text().splitlines() == on_disk_keys
    with h5py.File(tmp_path / "run" / "subset.h5") as f:
        stamp = dict(f.attrs)
    assert stamp["format"] == fmt and stamp["data_root"] == url


def test_resume_stamp_records_the_url(s3, on_disk, tmp_path, tiny_model, monkeypatch):
    """A killed run's parts are stamped with the URL: the resume from it finishes, one from disk is refused."""
    from conftest import extract_interrupted

    lst, ref = on_disk
    url = f"s3://{BUCKET}/loose"
    cfg = make_config(lst, url, tiny_model, tmp_path / "run", fraction=0.5)
    cfg["data"]["storage_options"] = _options(s3)
    extract_interrupted(cfg, monkeypatch)
    stamp = json.loads((tmp_path / "run" / "parts" / "run.json").read_text())
    assert stamp["data_root"] == url
    disk = dict(cfg, data=dict(cfg["data"], root=str(s3["tmp"] / "loose")))
    with pytest.raises(UserError, match="data_root"):
        extract.run(disk, progress=False)
    assert extract.run(cfg, progress=False).images == 24
    assert np.array_equal(_rows(tmp_path / "run")["prefacen"], ref["prefacen"])


def test_standard_aws_variables(s3, on_disk, tmp_path, tiny_model, monkeypatch):
    """No storage_options: the endpoint and credentials come from AWS_ENDPOINT_URL and the key variables."""
    lst, ref = on_disk
    for k, v in dict(
        AWS_ENDPOINT_URL=s3["endpoint"],
        AWS_ACCESS_KEY_ID=KEY,
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION="us-east-1",
    ).items():
        monkeypatch.setenv(k, v)
    cfg = make_config(lst, f"s3://{BUCKET}/loose", tiny_model, tmp_path / "run", fraction=0.5)
    check(cfg)
    extract.run(cfg, progress=False)
    assert np.array_equal(_rows(tmp_path / "run")["facen"], ref["facen"])


def test_label_from_s3_equals_disk(s3, on_disk, tmp_path, tiny_model):
    lst, _ = on_disk
    cfg = make_config(lst, s3["tmp"] / "loose", tiny_model, tmp_path / "run", fraction=0.5)
    kmeans_run(cfg, k=2)
    merge.run(cfg)
    cfg["label"]["fast"] = False  # through the source, not full.h5
    label.run(cfg, progress=False)
    out = tmp_path / "run"
    shutil.move(out / "labels.h5", tmp_path / "disk_labels.h5")
    cfg["data"].update(root=f"s3://{BUCKET}/loose", storage_options=_options(s3))
    result = label.run(cfg, overwrite=True, progress=False)
    assert not result.fast and result.summary.images == 24 and result.summary.failures == 0
    with h5py.File(out / "labels.h5") as a, h5py.File(tmp_path / "disk_labels.h5") as b:
        assert np.array_equal(a["index"][:], b["index"][:]) and np.array_equal(a["label"][:], b["label"][:])
        assert a.attrs["data_root"] == f"s3://{BUCKET}/loose"


# --------------------------------------------------------------------------- failures


def test_missing_corrupt_empty_and_large_objects_are_failures(s3, tmp_path, tiny_model):
    src = sources.open_source("files", f"s3://{BUCKET}/loose", _storage(s3))
    lines = [s3["rel"][0], "nope/missing.jpg", "bad/empty.jpg", "bad/large.jpg", "", "bad/corrupt.jpg"]
    got = src.read_many(lines, len(s3["blobs"][0]) + 100)
    assert got[0] == (s3["blobs"][0], "")
    assert [r for _, r in got[1:5]] == [
        "missing",
        "empty file",
        f"file larger than {len(s3['blobs'][0]) + 100:,} bytes",
        "empty line in list",
    ]
    assert got[5][0] is not None  # read; the decoder refuses it
    assert src.read(s3["rel"][1], MAX_BYTES) == (s3["blobs"][1], "")

    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{p}\n" for p in [*s3["rel"][:4], "nope/missing.jpg", "bad/corrupt.jpg", "bad/empty.jpg"]))
    cfg = make_config(lst, f"s3://{BUCKET}/loose", tiny_model, tmp_path / "run", fraction=0.5)
    cfg["data"]["storage_options"] = _options(s3)
    summary = extract.run(cfg, progress=False)
    fails = _rows(tmp_path / "run")["failures"]
    assert summary.images == 4
    assert fails == [
        (4, "nope/missing.jpg", "missing"),
        (5, "bad/corrupt.jpg", "truncated jpeg"),
        (6, "bad/empty.jpg", "empty file"),
    ]


def test_recordio_and_tar_failures(s3):
    rec = sources.open_source("recordio", f"s3://{BUCKET}/rec", _storage(s3))
    got = rec.read_many(["1", "999", "0", "x", "24"], MAX_BYTES)
    assert got[0] == (s3["blobs"][0], "") and got[4] == (s3["blobs"][23], "")
    assert [r for _, r in got[1:4]] == ["no record 999 in train.idx", "header record (no image)", "not a record id"]
    tar = sources.open_source("tar", f"s3://{BUCKET}/shards", _storage(s3))
    got = tar.read_many(["a.tar:000003.jpg", "a.tar:nope.jpg", "c.tar:x.jpg", "a.tar", "a.tar:meta.json"], MAX_BYTES)
    assert got[0] == (s3["blobs"][3], "") and got[4] == (b"{}", "")
    assert [r for _, r in got[1:4]] == ["no member nope.jpg in a.tar", "missing shard c.tar", "not shard.tar:member"]
    assert tar.read("sub/b.tar:000020.jpg", 100)[1] == "file larger than 100 bytes"


def test_a_shard_replaced_since_indexing_is_a_failure(s3, tmp_path):
    c = _client(s3["endpoint"])
    body = (s3["tmp"] / "shards" / "a.tar").read_bytes()
    c.put_object(Bucket=BUCKET, Key="swap/a.tar", Body=body)
    tar = sources.open_source("tar", f"s3://{BUCKET}/swap", _storage(s3))
    assert tar.read("a.tar:000001.jpg", MAX_BYTES) == (s3["blobs"][1], "")
    other = tmp_path / "a.tar"
    write_tar(other, {"000000.jpg": s3["blobs"][5], "000001.jpg": s3["blobs"][6]})  # other sizes, same names
    c.put_object(Bucket=BUCKET, Key="swap/a.tar", Body=other.read_bytes())
    data, why = tar.read("a.tar:000001.jpg", MAX_BYTES)
    assert data is None and why in ("shard a.tar changed since it was indexed", "truncated member")


def test_unreachable_roots_are_one_line(s3, tmp_path, tiny_model, on_disk):
    lst, _ = on_disk
    cases = {
        "s3://no-such-bucket/loose": "no such bucket",
        f"s3://{BUCKET}/nothing-here": "no such bucket or key",
    }
    for url, words in cases.items():
        cfg = make_config(lst, url, tiny_model, tmp_path / "run")
        cfg["data"]["storage_options"] = _options(s3)
        with pytest.raises(UserError, match=words):
            extract.run(cfg, progress=False)
    cfg = make_config("", f"s3://{BUCKET}/nothing", tiny_model, tmp_path / "run")
    cfg["data"].update(format="recordio", storage_options=_options(s3))
    with pytest.raises(UserError, match="no RecordIO file"):
        extract.run(cfg, progress=False)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    opts = dict(_options(s3), endpoint_url=dead, config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 2})
    cfg = make_config(lst, f"s3://{BUCKET}/loose", tiny_model, tmp_path / "run")
    cfg["data"]["storage_options"] = opts
    started = time.monotonic()
    with pytest.raises(UserError, match="cannot reach it"):
        extract.run(cfg, progress=False)
    assert not (tmp_path / "run" / "full.h5").exists()
    assert time.monotonic() - started < 60  # never a hang (s3fs retries a refused connection a few times)
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        cfg["data"].update(
            storage_options=dict(_options(s3), endpoint_url=f"http://127.0.0.1:{silent.getsockname()[1]}"), timeout=1.0
        )
        started = time.monotonic()
        with pytest.raises(UserError, match="cannot reach it"):
            extract.run(cfg, progress=False)
        assert time.monotonic() - started < 30  # data.timeout, not the client's 60 s read timeout x its retries


def test_denied_access(s3, tmp_path):
    """With moto's IAM checks on: wrong credentials are one line at the start; a denied object is a failure."""
    import boto3

    endpoint = s3["endpoint"]
    iam = boto3.client(
        "iam", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name="us-east-1"
    )
    iam.create_user(UserName="reader")
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    allow = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="reader", PolicyName="all", PolicyDocument=json.dumps(allow))
    secret_key = f"loose/{s3['rel'][2]}"
    deny = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{BUCKET}/{secret_key}",
    }
    c = _client(endpoint)
    c.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps({"Version": "2012-10-17", "Statement": [deny]}))
    reader = dict(_options(s3), key=key["AccessKeyId"], secret=key["SecretAccessKey"])
    _auth(endpoint, b"0")
    try:
        src = sources.open_source("files", f"s3://{BUCKET}/loose", remote.Storage(reader))
        got = src.read_many(s3["rel"][:3], MAX_BYTES)
        assert got[0] == (s3["blobs"][0], "") and got[2] == (None, "access denied")
        wrong = dict(_options(s3), key="AKIAWRONG", secret="wrong")
        with pytest.raises(UserError, match="access denied .* check the credentials"):
            sources.from_config({"root": f"s3://{BUCKET}/loose", "format": "files", "storage_options": wrong})
    finally:
        _auth(endpoint, b"inf")
        c.delete_bucket_policy(Bucket=BUCKET)


def _auth(endpoint: str, count: bytes) -> None:
    """moto's switch for its IAM checks: on after `count` more requests ("inf": off)."""
    urllib.request.urlopen(
        urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth", data=count, method="POST", headers={"Content-Type": "text/plain"}
        )
    ).read()


# --------------------------------------------------------------------------- throttling and timeouts (http://)


class _Flaky(BaseHTTPRequestHandler):
    """/ok/<n>: the image; /throttled/<n>: 503 twice, then the image; /always/<n>: 503; /slow/<n>: 2 s late;
    /forbidden/<n>: 403. Honours Range as S3 does."""

    body = b""
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        kind = self.path.split("/")[1]
        with self.lock:
            n = self.seen[self.path] = self.seen.get(self.path, 0) + 1
        if kind == "always" or (kind == "throttled" and n <= 2):
            return self._reply(503, b"<Error><Code>SlowDown</Code></Error>")
        if kind == "forbidden":
            return self._reply(403, b"")
        if kind == "slow":
            time.sleep(2)
        if kind not in ("ok", "throttled", "slow"):
            return self._reply(404, b"")
        body, status = self.body, 200
        rng = self.headers.get("Range")
        if rng:
            lo, hi = (int(x) for x in rng.split("=")[1].split("-"))
            body, status = body[lo : hi + 1], 206
        self._reply(status, body)

    do_HEAD = do_GET

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    def log_message(self, *a) -> None:
        pass


@pytest.fixture
def flaky(s3, monkeypatch):
    monkeypatch.setattr(remote, "BACKOFF", 0.01)
    _Flaky.body, _Flaky.seen = s3["blobs"][0], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_throttling_and_timeouts_are_retried_then_failures(flaky, s3):
    src = sources.open_source("files", flaky, remote.Storage(timeout=0.5))
    lines = ["ok/1.jpg", "throttled/1.jpg", "always/1.jpg", "slow/1.jpg", "forbidden/1.jpg", "gone/1.jpg"]
    started = time.monotonic()
    got = src.read_many(lines, MAX_BYTES)
    blob = s3["blobs"][0]
    assert got[0] == (blob, "") and got[1] == (blob, "")  # two 503s, then the image
    assert [r for _, r in got[2:]] == [
        f"throttled ({remote.RETRIES + 1} tries)",
        f"timed out (0.5 s, {remote.RETRIES + 1} tries)",
        "access denied",
        "missing",
    ]
    assert _Flaky.seen["/always/1.jpg"] == remote.RETRIES + 1 and _Flaky.seen["/throttled/1.jpg"] == 3
    assert time.monotonic() - started < 10  # every read in flight together, each bounded
    assert src.read("ok/2.jpg", 100) == (None, "file larger than 100 bytes")  # a reply cut at max_bytes + 1


def test_extract_over_http_records_throttled_images(flaky, s3, on_disk, tmp_path, tiny_model):
    lst = tmp_path / "list.txt"
    lst.write_text("ok/1.jpg\nthrottled/2.jpg\nalways/3.jpg\nok/4.jpg\n")
    cfg = make_config(lst, flaky, tiny_model, tmp_path / "run", fraction=0.5)
    cfg["data"]["timeout"] = 5.0
    summary = extract.run(cfg, progress=False)
    assert summary.images == 3 and _rows(tmp_path / "run")["failures"] == [(2, "always/3.jpg", "throttled (4 tries)")]


# --------------------------------------------------------------------------- any fsspec URL, and the settings


def test_memory_filesystem_reads_every_format(s3):
    """fsspec's memory:// (a sync filesystem): the generic path, a thread pool in place of the event loop."""
    import fsspec

    fs = fsspec.filesystem("memory")
    tmp = s3["tmp"]
    for p in sorted(tmp.rglob("*")):
        if p.is_file():
            fs.pipe_file(f"/mem/{p.relative_to(tmp).as_posix()}", p.read_bytes())
    blobs = s3["blobs"]
    files = sources.open_source("files", "memory://mem/loose")
    assert files.read_many(s3["rel"][:3], MAX_BYTES) == [(b, "") for b in blobs[:3]]
    assert files.read("x.jpg", MAX_BYTES) == (None, "missing")
    rec = sources.open_source("recordio", "memory://mem/rec/train.rec")
    assert list(rec.keys()) == [str(i) for i in range(1, 25)]
    assert rec.read_many(["5", "6"], MAX_BYTES) == [(blobs[4], ""), (blobs[5], "")]
    tar = sources.open_source("tar", "memory://mem/shards")
    keys = list(tar.keys())
    assert len(keys) == 24 and tar.read_many(keys[:2], MAX_BYTES) == [(blobs[0], ""), (blobs[1], "")]


def test_settings_refuse_in_one_line(s3):
    cfg = config.load(None)
    for key, value, words in [
        ("timeout", 0.0, "data.timeout"),
        ("root", "nosuchfs://x/y", "knows no filesystem"),
    ]:
        bad = config.load(None)
        bad["data"][key] = value
        with pytest.raises(UserError, match=words):
            check(bad)
    with pytest.raises(UserError, match="storage_options"):
        config.load(None, {"data.storage_options": "endpoint=x"})
    cfg["data"].update(root=f"s3://{BUCKET}/loose", storage_options=_options(s3))
    check(cfg)
    assert remote.where(f"s3://{BUCKET}/x") == f"s3://{BUCKET}/x" and remote.where("a") == str(Path("a").resolve())
    assert remote.as_root("file:///data/x") == Path("/data/x")  # a local path: the local reader's checks apply
    assert sources.open_source("files", "file:///nonexistent").root == "/nonexistent"


def test_ray_decoding_reads_the_url_with_its_options(s3):
    """The Ray engine's decode step (a plain function on each worker) opens the URL with the run's options."""
    from introspect.engine import distributed

    rel = s3["rel"][:3] + ["nope.jpg"]
    batch = {
        "chunk": np.zeros(4, int),
        "pos": np.arange(4),
        "line": np.array(rel, object),
        "path": [p.encode() for p in rel],
    }
    storage = {"storage_options": _options(s3), "timeout": 30.0}
    got = distributed.decode(batch, (112, 112), None, "files", f"s3://{BUCKET}/loose", storage)
    assert got["ok"].tolist() == [True, True, True, False] and got["reason"][3] == "missing"


def test_report_thumbnails_from_s3_equal_disk(s3):
    from introspect.stages.report_media import thumbnails

    lines = [*s3["rel"][:5], "", "nope.jpg", *s3["rel"][5:70]]
    disk = thumbnails(s3["tmp"] / "loose", lines, 32)
    got = thumbnails(sources.open_source("files", f"s3://{BUCKET}/loose", _storage(s3)), lines, 32)
    assert [t is None for t in got] == [t is None for t in disk] == [False] * 5 + [True, True] + [False] * 19
    assert all(np.array_equal(a, b) for a, b in zip(got, disk) if a is not None)
