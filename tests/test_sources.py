"""Datasets as they ship: MXNet/InsightFace RecordIO pairs and tar shards, read without unpacking."""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import make_config, write_images

from introspect.engine import sources
from introspect.engine.images import MAX_BYTES
from introspect.engine.rundir import RunDir
from introspect.engine.sources import MAGIC, FileSource, RecordIOSource, TarSource, open_source
from introspect.errors import UserError
from introspect.stages import extract

# --------------------------------------------------------------------------- writers (after the spec)

_MAGIC = struct.pack("<I", MAGIC)


def frame(payload: bytes) -> bytes:
    """dmlc-core's RecordIOWriter::WriteRecord: split at every 4-byte-aligned magic (cflag 1, 2, 3), pad to 4."""
    out, dptr, n = [], 0, len(payload)
    for i in range(0, (n >> 2) << 2, 4):
        if payload[i : i + 4] == _MAGIC:
            out += [_MAGIC, struct.pack("<I", ((1 if dptr == 0 else 2) << 29) | (i - dptr)), payload[dptr:i]]
            dptr = i + 4
    out += [_MAGIC, struct.pack("<I", ((3 if dptr else 0) << 29) | (n - dptr)), payload[dptr:]]
    out.append(b"\0" * (((n + 3) & ~3) - n))
    return b"".join(out)


def pack(image: bytes, label: float | list[float] = 0.0, rid: int = 0, id2: int = 0) -> bytes:
    """MXNet's recordio.pack: IRHeader 'IfQQ', the label array after it when flag > 0."""
    if isinstance(label, (int, float)):
        return struct.pack("<IfQQ", 0, float(label), rid, id2) + image
    arr = np.asarray(label, np.float32)
    return struct.pack("<IfQQ", len(arr), 0.0, rid, id2) + arr.tobytes() + image


def write_rec(path: Path, records: dict[int, bytes], offsets: dict[int, int] | None = None) -> dict[int, int]:
    """A .rec and its .idx (`id\\toffset` lines, MXIndexedRecordIO's); `offsets` overrides some entries."""
    where, buf = {}, bytearray()
    for rid, payload in records.items():
        where[rid] = len(buf)
        buf += frame(payload)
    path.write_bytes(bytes(buf))
    idx = where | (offsets or {})
    path.with_suffix(".idx").write_text("".join(f"{k}\t{v}\n" for k, v in idx.items()))
    return where


def insightface_rec(path: Path, images: list[bytes], labels: list[int]) -> None:
    """InsightFace's layout: record 0 a header (flag 2, label = [first identity record, end]), images 1..n,
    then one record per identity (flag 2, label = its image id range)."""
    n = len(images)
    ids = sorted(set(labels))
    records = {0: pack(b"", [n + 1, n + 1 + len(ids)])}
    for i, (img, lab) in enumerate(zip(images, labels), start=1):
        records[i] = pack(img, float(lab), i) if i % 2 else pack(img, [float(lab), 0.5], i)  # both variants
    for k, c in enumerate(ids):
        members = [i for i, lab in enumerate(labels, start=1) if lab == c]
        records[n + 1 + k] = pack(b"", [members[0], members[-1] + 1])
    write_rec(path, records)


def write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """30 loose JPEGs and the same bytes as an InsightFace .rec and as two tar shards (with .json beside)."""
    tmp = tmp_path_factory.mktemp("sources")
    root = tmp / "loose"
    rel = write_images(root, 30, seed=5)
    blobs = [(root / p).read_bytes() for p in rel]
    insightface_rec(tmp / "train.rec", blobs, [i % 4 for i in range(30)])
    (tmp / "shards" / "sub").mkdir(parents=True)
    for s, (lo, hi) in enumerate(((0, 18), (18, 30))):
        members = {}
        for i in range(lo, hi):
            members[f"{i:06d}.jpg"] = blobs[i]
            members[f"{i:06d}.json"] = b'{"id": %d}' % i
        write_tar(tmp / "shards" / ("sub/b.tar" if s else "a.tar"), members)
    return tmp, rel, blobs


# --------------------------------------------------------------------------- reading


def test_frame_splits_at_the_magic():
    payload = b"abcd" + _MAGIC + b"efgh" + _MAGIC + b"xyz"
    data = frame(payload)
    flags = [struct.unpack_from("<I", data, o)[0] >> 29 for o in (4, 16, 28)]
    assert flags == [1, 2, 3]
    assert len(data) % 4 == 0


def test_recordio_reads_every_image(faces):
    tmp, _, blobs = faces
    src = open_source("recordio", tmp / "train.rec")
    assert list(src.keys()) == [str(i) for i in range(1, 31)]  # the header and identity records left out
    for i, b in enumerate(blobs, start=1):
        assert src.read(str(i), MAX_BYTES) == (b, "")
    head, image, _ = src.unpack(0, MAX_BYTES)
    assert head[0] == 2 and list(head[1]) == [31, 35] and image == b""
    head, _, _ = src.unpack(2, MAX_BYTES)  # the label-array variant
    assert head[0] == 2 and list(head[1]) == [1.0, 0.5]
    assert src.read("0", MAX_BYTES) == (None, "header record (no image)")
    assert RecordIOSource(tmp).read("1", MAX_BYTES) == (blobs[0], "")  # the folder holding train.rec


def test_recordio_multipart_and_failures(tmp_path):
    img = b"\xff\xd8" + b"ab" + _MAGIC + b"cdef" + _MAGIC + _MAGIC + b"tail"  # magic at aligned offsets
    records = {
        0: pack(b"first image, no header record"),
        1: pack(img, 3.0, 1),
        2: pack(b"x" * 40, 1.0, 2),
        3: pack(b"y" * 40, [1.0, 2.0, 3.0], 3),
        4: pack(b"", 0.0, 4),
    }
    where = write_rec(tmp_path / "d.rec", records)
    rec = tmp_path / "d.rec"
    src = RecordIOSource(rec)
    assert src.read("1", MAX_BYTES) == (img, "")  # multi-part record joined, magic put back
    assert list(src.keys()) == ["0", "1", "2", "3", "4"]  # record 0 is an image here
    # a wrong offset in the idx: into the middle of record 2
    (tmp_path / "d.idx").write_text("".join(f"{k}\t{v + (8 if k == 2 else 0)}\n" for k, v in where.items()))
    src = RecordIOSource(rec)
    data, why = src.read("2", MAX_BYTES)
    assert data is None and "bad magic" in why
    assert src.read("99", MAX_BYTES) == (None, "no record 99 in d.idx")
    assert src.read("abc", MAX_BYTES) == (None, "not a record id")
    assert src.read("", MAX_BYTES) == (None, "empty line in list")
    assert src.read("4", MAX_BYTES) == (None, "empty record")
    assert src.read("3", 10)[1].startswith("record larger than")
    # a truncated last record
    full = rec.read_bytes()
    rec.write_bytes(full[: where[4] + 12])
    assert RecordIOSource(rec).read("4", MAX_BYTES)[1].startswith("truncated record")
    rec.write_bytes(full[: where[3] + 20])
    src = RecordIOSource(rec)
    assert src.read("3", MAX_BYTES)[1].startswith("truncated record")
    assert src.read("4", MAX_BYTES)[1].startswith("offset")  # past the end of the file
    assert src.read("1", MAX_BYTES) == (img, "")


def test_recordio_threads_and_pickle(faces):
    tmp, _, blobs = faces
    src = pickle.loads(pickle.dumps(RecordIOSource(tmp / "train.rec")))
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: src.read(str(i), MAX_BYTES)[0], list(range(1, 31)) * 4))
    assert got == blobs * 4


def test_open_source_refuses(tmp_path):
    with pytest.raises(ValueError, match="not one of"):
        open_source("zip", tmp_path)
    with pytest.raises(ValueError, match="no RecordIO file"):
        open_source("recordio", tmp_path / "nope.rec")
    with pytest.raises(ValueError, match="not a folder"):
        open_source("tar", tmp_path / "nope")
    (tmp_path / "bad.rec").write_bytes(b"")
    (tmp_path / "bad.idx").write_text("0\t0\n1\tzz\n")
    with pytest.raises(ValueError, match="not an MXNet index"):
        open_source("recordio", tmp_path / "bad.rec")
    with pytest.raises(ValueError, match="needs a list"):
        list(FileSource(tmp_path).keys())


def test_tar_reads_every_image(faces, tmp_path):
    tmp, _, blobs = faces
    src = open_source("tar", tmp / "shards")
    keys = list(src.keys())
    assert keys == [f"a.tar:{i:06d}.jpg" for i in range(18)] + [f"sub/b.tar:{i:06d}.jpg" for i in range(18, 30)]
    assert [src.read(k, MAX_BYTES)[0] for k in keys] == blobs
    assert src.read("a.tar:000001.json", MAX_BYTES) == (b'{"id": 1}', "")
    assert src.read("a.tar:nope.jpg", MAX_BYTES) == (None, "no member nope.jpg in a.tar")
    assert src.read("c.tar:000001.jpg", MAX_BYTES) == (None, "missing shard c.tar")
    assert src.read("000001.jpg", MAX_BYTES) == (None, "not shard.tar:member")
    assert src.read("a.tar:000001.jpg", 10) == (None, "file larger than 10 bytes")
    # a shard cut short: its last member truncated
    cut = tmp_path / "cut"
    cut.mkdir()
    data = (tmp / "shards" / "a.tar").read_bytes()
    whole = TarSource(tmp / "shards").shard("a.tar")[1]
    off, size = whole["000017.jpg"]
    (cut / "a.tar").write_bytes(data[: off + size // 2])
    src = TarSource(cut)
    read = [src.read(f"a.tar:{i:06d}.jpg", MAX_BYTES) for i in (0, 17)]
    assert read[0] == (blobs[0], "")
    assert read[1][0] is None and read[1][1] in ("truncated member", "no member 000017.jpg in a.tar")
    assert pickle.loads(pickle.dumps(src)).read("a.tar:000000.jpg", MAX_BYTES) == (blobs[0], "")


# --------------------------------------------------------------------------- the stages on them


def _rows(out: Path, kind: str = "full"):
    with h5py.File(out / f"{kind}.h5") as f:
        fails = [
            (int(i), p.decode(), r.decode())
            for i, p, r in zip(*(f[f"failures/{k}"][:] for k in ("index", "path", "reason")))
        ]
        return f["index"][:], f["prefacen"][:], fails


def test_extract_on_rec_and_tar_matches_loose_files(faces, tmp_path, tiny_model):
    tmp, rel, _ = faces
    lst = tmp_path / "loose.txt"
    lst.write_text("".join(p + "\n" for p in rel))
    loose = make_config(lst, tmp / "loose", tiny_model, tmp_path / "loose", fraction=0.5)
    extract.run(loose, progress=False)
    ref_index, ref, _ = _rows(tmp_path / "loose")

    # recordio without a list: the container enumerated into <out>/list.txt
    cfg = make_config("", tmp / "train.rec", tiny_model, tmp_path / "rec", fraction=0.5)
    cfg["data"]["format"] = "recordio"
    extract.run(cfg, progress=False)
    out = tmp_path / "rec"
    assert (out / "list.txt").read_text().split() == [str(i) for i in range(1, 31)]
    index, got, fails = _rows(out)
    assert np.array_equal(index, ref_index) and np.allclose(got, ref, atol=1e-6) and not fails
    assert np.array_equal(_rows(out, "subset")[1], _rows(tmp_path / "loose", "subset")[1])
    assert extract.run(cfg, progress=False).images == 30  # already complete: the same list and run

    # recordio with a list: failures recorded with their keys
    lst = tmp_path / "ids.txt"
    lst.write_text("1\n2\n999\n\n0\nx\n3\n")
    cfg = make_config(lst, tmp, tiny_model, tmp_path / "rec2", fraction=0.5)
    cfg["data"]["format"] = "recordio"
    extract.run(cfg, progress=False)
    index, got, fails = _rows(tmp_path / "rec2")
    assert index.tolist() == [0, 1, 6] and np.allclose(got, ref[[0, 1, 2]], atol=1e-6)
    assert fails == [
        (2, "999", "no record 999 in train.idx"),
        (3, "", "empty line in list"),
        (4, "0", "header record (no image)"),
        (5, "x", "not a record id"),
    ]

    # tar, enumerated
    cfg = make_config("", tmp / "shards", tiny_model, tmp_path / "tar", fraction=0.5)
    cfg["data"]["format"] = "tar"
    extract.run(cfg, progress=False)
    index, got, fails = _rows(tmp_path / "tar")
    assert np.array_equal(index, ref_index) and np.allclose(got, ref, atol=1e-6) and not fails
    assert (tmp_path / "tar" / "list.txt").read_text().splitlines()[0] == "a.tar:000000.jpg"


def test_format_is_part_of_the_run(faces, tmp_path, tiny_model):
    tmp, _, _ = faces
    cfg = make_config("", tmp / "train.rec", tiny_model, tmp_path / "run", fraction=0.5)
    cfg["data"]["format"] = "recordio"
    extract.run(cfg, progress=False)
    with h5py.File(tmp_path / "run" / "full.h5") as f:
        assert f.attrs["format"] == "recordio"
    cfg["data"]["format"] = "files"
    with pytest.raises(UserError, match="need a list"):
        extract.run(cfg, progress=False)
    cfg["data"]["format"] = "zip"
    cfg["data"]["list"] = str(tmp_path / "run" / "list.txt")
    with pytest.raises(UserError, match="not one of"):
        extract.run(cfg, progress=False)


def test_resolve_list_for_later_stages(faces, tmp_path):
    tmp, _, _ = faces
    data = {"list": "", "root": str(tmp / "shards"), "format": "tar"}
    run_dir = RunDir(tmp_path / "run")
    with pytest.raises(UserError, match="run `introspect extract` first"):
        sources.resolve_list(data, run_dir)
    path = sources.resolve_list(data, run_dir, write=True)
    assert path == run_dir.path("list") and len(path.read_text().splitlines()) == 30
    assert sources.resolve_list(data, run_dir) == path
    assert sources.resolve_list(dict(data, list="mine.txt"), run_dir) == Path("mine.txt")


def test_label_lists_carry_record_ids(faces, tmp_path, tiny_model):
    """extract on a .rec without a list, 2 clusters, merge, label: the per-cluster lists hold record ids."""
    import onnx
    from sklearn.cluster import KMeans

    from introspect.science import classifier
    from introspect.stages import label, merge

    tmp, _, _ = faces
    out = tmp_path / "run"
    cfg = make_config("", tmp / "train.rec", tiny_model, out, fraction=0.5)
    cfg["data"]["format"] = "recordio"
    extract.run(cfg, progress=False)
    with h5py.File(out / "subset.h5") as f:
        X, index = f["prefacen"][:], f["index"][:]
    y = KMeans(2, n_init=4, random_state=0).fit_predict(X)
    with h5py.File(out / "clusters.h5", "w") as f:
        f["index"], f["label"], f["tsne"] = index, y.astype(np.int64), np.zeros((len(y), 2), np.float32)
    est, _ = classifier.fit_validated(X, y, cv=2, Cs=[1.0])
    onnx.save(classifier.match_net(classifier.to_onnx(est, X.shape[1]), onnx.load(tiny_model)), out / "classifier.onnx")
    merge.run(cfg)
    cfg["label"]["fast"] = False  # through the source, not full.h5
    result = label.run(cfg, progress=False)
    assert not result.fast and result.summary.images == 30
    listed = sorted(int(line) for p in (out / "clusters").glob("*.txt") for line in p.read_text().split())
    assert listed == list(range(1, 31))
