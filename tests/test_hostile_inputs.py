"""Hostile inputs, second pass: forged tar headers, results kept when --overwrite is given a wrong root or list,
outputs that are not regular files, NUL bytes in a list, damaged RecordIO indexes, many shards, align's outputs,
and two shard extracts enumerating one container at once."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REPO, make_config, write_images
from test_label import _fresh, labelled_run  # noqa: F401  (a fixture)
from test_sources import insightface_rec, pack, write_rec, write_tar

from introspect import cli, config
from introspect.engine import rundir, sources, store
from introspect.engine.images import MAX_BYTES
from introspect.engine.sources import RecordIOSource, TarSource
from introspect.errors import UserError
from introspect.stages import align, label

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _cli(capsys, *argv) -> tuple[int, str]:
    rc = cli.main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip()


def _args(cfg: dict, *more) -> list[str]:
    d, e = cfg["data"], cfg["extract"]
    argv = ["--list", d["list"], "--root", d["root"], "--model", cfg["model"]["path"], "--out", e["out"]]
    return argv + ["--batch-size", "16", "--chunk-size", "32", "--fraction", "0.2", *more]


def _failures(path: Path) -> list[tuple[int, str, str]]:
    with h5py.File(path) as f:
        g = f["failures"]
        return [(int(i), p.decode(), r.decode()) for i, p, r in zip(g["index"][:], g["path"][:], g["reason"][:])]


def _jpeg() -> bytes:
    import cv2

    rng = np.random.default_rng(0)
    return cv2.imencode(".jpg", (rng.random((112, 112, 3)) * 255).astype(np.uint8))[1].tobytes()


# --------------------------------------------------------------------------- a tar header that claims gigabytes

CLAIM = 3 << 30


def forged_shard(path: Path, kind: str) -> None:
    """A shard with one good member, then a pax ('x') or GNU long-name ('L') header claiming 3 GB of header data,
    the file made that long by a hole: about 48 KB on disk, 3 GB to a reader that reads the header whole."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for i in range(40):
            data = _jpeg() if i == 0 else b"x" * 1000
            info = tarfile.TarInfo(f"{i:03d}.jpg")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    good = buf.getvalue().rstrip(b"\0")
    good += b"\0" * (-len(good) % 512)
    header = tarfile.TarInfo("././@LongLink" if kind == "L" else "././@PaxHeader")
    header.type = tarfile.GNUTYPE_LONGNAME if kind == "L" else tarfile.XHDTYPE
    header.size = CLAIM
    with open(path, "wb") as f:
        f.write(good + header.tobuf(format=tarfile.GNU_FORMAT))
        f.truncate(len(good) + 512 + CLAIM + 1024)  # a hole: nothing more is written


_MEASURE = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a regression fails here, never swaps the machine
from introspect.engine.sources import TarSource
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
src = TarSource(sys.argv[1])
entry = src.shard("bomb.tar")
try:
    keys, err = list(src.keys()), ""
except ValueError as e:
    keys, err = [], str(e)
read = src.read("bomb.tar:000.jpg", 1 << 26)[1]
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"entry": entry if isinstance(entry, str) else "indexed", "err": err, "read": read, "mb": grown}))
"""


@pytest.mark.parametrize("kind", ["x", "L"])
def test_a_tar_header_claiming_gigabytes_is_refused_without_reading_it(tmp_path, kind):
    forged_shard(tmp_path / "bomb.tar", kind)
    assert os.stat(tmp_path / "bomb.tar").st_blocks * 512 < 1 << 20  # sparse: small on disk
    r = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(tmp_path)], env=ENV, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert got["mb"] < 64, got  # 3 GB before
    assert "bomb.tar is refused" in got["entry"] and "header claims more than 1 MB" in got["entry"]
    assert got["err"] == got["entry"] and got["read"] == got["entry"]  # enumerating: one line; reading: the reason


def test_a_forged_shard_is_one_line_in_extract(tmp_path, tiny_model, capsys):
    (tmp_path / "shards").mkdir()
    forged_shard(tmp_path / "shards" / "bomb.tar", "x")
    cfg = make_config("", tmp_path / "shards", tiny_model, tmp_path / "out")
    rc, err = _cli(capsys, "extract", "-q", *_args(cfg), "--set", "data.format=tar")
    assert rc == 2 and len(err.splitlines()) == 1 and "bomb.tar is refused" in err, err


# --------------------------------------------------------------------------- --overwrite with a mistyped root or list


def _snapshot(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


@pytest.mark.parametrize("mistake", ["root", "list", "root_is_a_file"])
def test_overwrite_with_a_wrong_root_or_list_keeps_the_results(dataset, tiny_model, tmp_path, capsys, mistake):
    lst, root, rel = dataset
    cfg = make_config(lst, root, tiny_model, tmp_path / "out")
    assert _cli(capsys, "extract", "-q", *_args(cfg))[0] == 0
    before = _snapshot(tmp_path / "out")
    assert {"full.h5", "subset.h5"} <= set(before)
    wrong = tmp_path / "elsewhere.txt"
    wrong.write_text("".join(f"nope/{p}\n" for p in rel))
    bad = {
        "root": ["--root", tmp_path / "nowhere"],
        "list": ["--list", wrong],
        "root_is_a_file": ["--set", f"data.root={lst}"],
    }[mistake]
    rc, err = _cli(capsys, "extract", "-q", *_args(cfg), "--overwrite", *bad)
    assert rc == 2 and len(err.splitlines()) == 1 and "nothing was removed" in err, err
    assert _snapshot(tmp_path / "out") == before


def test_label_overwrite_with_a_wrong_root_keeps_the_labels(labelled_run, tmp_path, capsys):  # noqa: F811
    cfg = _fresh(labelled_run[0], tmp_path)
    out = Path(cfg["extract"]["out"])
    argv = ["label", "-q", "--out", out, "--list", cfg["data"]["list"]]
    assert _cli(capsys, *argv, "--root", cfg["data"]["root"])[0] == 0
    before = _snapshot(out)
    for bad in (["--root", tmp_path / "nowhere"], ["--root", cfg["data"]["list"]]):
        rc, err = _cli(capsys, *argv, "--overwrite", *bad)
        assert rc == 2 and len(err.splitlines()) == 1 and "nothing was removed" in err, err
        assert _snapshot(out) == before and (out / "clusters").is_dir()


# --------------------------------------------------------------------------- outputs that are not regular files


def _special(path: Path, kind: str) -> socket.socket | None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        return s
    return None


@pytest.mark.parametrize("kind", ["fifo", "folder", "socket"])
def test_the_common_writer_never_replaces_what_is_not_a_regular_file(tmp_path, kind):
    path = tmp_path / "result.json"
    keep = _special(path, kind)
    with pytest.raises(UserError, match=f"(?i)exists and is a {kind}, not a regular file"):
        rundir.write_bytes(path, b"{}")
    assert not path.is_file() and path.exists()
    link = tmp_path / "link.json"
    link.symlink_to(path)
    with pytest.raises(UserError, match="not a regular file"):  # judged by what it points to
        rundir.write_bytes(link, b"{}")
    assert not list(tmp_path.glob("*.tmp"))
    if keep:
        keep.close()


def test_a_file_where_a_folder_is_written_is_refused(tmp_path):
    (tmp_path / "clusters").write_text("mine")
    with pytest.raises(UserError, match="is a regular file, not a folder"):
        with rundir.writing_dir(tmp_path / "clusters"):
            pass
    assert (tmp_path / "clusters").read_text() == "mine"


def test_model_prepare_to_a_fifo_is_one_line(tiny_model, tmp_path, capsys):
    os.mkfifo(tmp_path / "out.onnx")
    rc, err = _cli(capsys, "model", "prepare", tiny_model, "--out", tmp_path / "out.onnx")
    assert rc == 2 and len(err.splitlines()) == 1 and "is a FIFO" in err, err
    assert (tmp_path / "out.onnx").is_fifo()


@pytest.mark.parametrize("which", ["list", "attrs"])
def test_synth_to_a_fifo_is_one_line(tmp_path, capsys, which):
    from introspect.synth.spec import attrs_path

    lst = tmp_path / "synth.txt"
    os.mkfifo(lst if which == "list" else attrs_path(lst))
    rc, err = _cli(capsys, "synth", "-q", "--n", 4, "--root", tmp_path / "img", "--list", lst)
    assert rc == 2 and len(err.splitlines()) == 1 and "is a FIFO" in err, err
    assert not (tmp_path / "img").exists() or not any((tmp_path / "img").rglob("*.jpg"))


# --------------------------------------------------------------------------- a NUL byte in a list line


def test_a_nul_in_a_list_line_is_a_recorded_failure_in_extract_and_label(labelled_run, tmp_path, capsys):  # noqa: F811
    cfg = _fresh(labelled_run[0], tmp_path)
    lines = Path(cfg["data"]["list"]).read_text().splitlines()
    bad = [*lines[:5], "a\0b.jpg", *lines[5:]]
    lst = tmp_path / "nul.txt"
    lst.write_bytes("".join(p + "\n" for p in bad).encode())
    out = tmp_path / "nul-run"
    ecfg = make_config(lst, cfg["data"]["root"], cfg["model"]["path"], out, fraction=0.5)
    for _ in range(2):  # and again: already complete, not stuck
        assert _cli(capsys, "extract", "-q", *_args(ecfg))[0] == 0
    assert (5, "a\\x00b.jpg", "path contains NUL") in _failures(out / "full.h5")
    lcfg = {**cfg, "data": {**cfg["data"], "list": str(lst)}}
    lcfg["label"]["fast"] = False
    for _ in range(2):
        label.run(lcfg, progress=False)
    assert (5, "a\\x00b.jpg", "path contains NUL") in _failures(Path(cfg["extract"]["out"]) / "labels.h5")


def test_a_nul_in_a_container_key_is_its_reason(tmp_path):
    write_rec(tmp_path / "d.rec", {1: pack(b"img", 0.0, 1)})
    assert RecordIOSource(tmp_path / "d.rec").read("1\0", MAX_BYTES) == (None, "path contains NUL")
    (tmp_path / "shards").mkdir()
    write_tar(tmp_path / "shards" / "a.tar", {"x.jpg": b"img"})
    src = TarSource(tmp_path / "shards")
    assert src.read("a.tar:x\0.jpg", MAX_BYTES) == (None, "path contains NUL")
    assert src.read("a\0.tar:x.jpg", MAX_BYTES) == (None, "path contains NUL")
    assert store.printable("a\0b\udce9") == "a\\x00b\\xe9"


# --------------------------------------------------------------------------- RecordIO: header, index, ids


@pytest.mark.parametrize("end", [float("inf"), float("nan"), -3.0, 0.0, 2.5])
def test_a_recordio_header_whose_label_is_not_an_id_is_one_line(tmp_path, end):
    write_rec(tmp_path / "d.rec", {0: pack(b"", [end, 9.0]), 1: pack(b"img", 0.0, 1)})
    src = RecordIOSource(tmp_path / "d.rec")
    with pytest.raises(ValueError, match="record 0 is a header whose first label") as e:
        list(src.keys())
    assert "\n" not in str(e.value)
    data = {"list": "", "root": str(tmp_path / "d.rec"), "format": "recordio"}
    with pytest.raises(UserError, match="first label"):
        sources.resolve_list(data, rundir.RunDir(tmp_path / "run"), write=True)


def test_duplicate_ids_in_a_recordio_index_are_refused(tmp_path):
    write_rec(tmp_path / "d.rec", {1: pack(b"one", 0.0, 1), 2: pack(b"two", 0.0, 2)})
    idx = tmp_path / "d.idx"
    idx.write_text(idx.read_text() + "1\t0\n")
    with pytest.raises(ValueError, match="lists record id 1 more than once"):
        RecordIOSource(tmp_path / "d.rec")
    with pytest.raises(UserError, match="more than once"):
        sources.from_config({"format": "recordio", "root": str(tmp_path / "d.rec")})


@pytest.mark.parametrize("line", ["+1\t0\n", "-1\t0\n", "1_0\t0\n", "\u0661\t0\n", "1\t+0\n", "0x1\t0\n"])
def test_a_recordio_index_holds_ascii_digits_only(tmp_path, line):
    write_rec(tmp_path / "d.rec", {1: pack(b"one", 0.0, 1)})
    (tmp_path / "d.idx").write_text(line, encoding="utf-8")
    with pytest.raises(ValueError, match="not an MXNet index"):
        RecordIOSource(tmp_path / "d.rec")


@pytest.mark.parametrize("line", ["\u0661", "\uff11", "1_0", "+1", "-1", " 1", "1 ", "1.0", "9" * 30])
def test_recordio_ids_in_a_list_are_ascii_digits_only(tmp_path, line):
    write_rec(tmp_path / "d.rec", {1: pack(b"one", 0.0, 1), 10: pack(b"ten", 0.0, 10)})
    src = RecordIOSource(tmp_path / "d.rec")
    assert src.read(line, MAX_BYTES) == (None, "not a record id")
    assert src.read("10", MAX_BYTES) == (b"ten", "")


def test_insightface_header_still_bounds_the_images(tmp_path):
    insightface_rec(tmp_path / "train.rec", [b"a", b"b", b"c"], [0, 1, 0])
    assert list(RecordIOSource(tmp_path / "train.rec").keys()) == ["1", "2", "3"]


# --------------------------------------------------------------------------- tar: many shards, odd member names

_MANY = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
from introspect.engine.sources import TarSource
src = TarSource(sys.argv[1])
keys = list(src.keys())
got = [src.read(k, 1 << 20) for k in keys]
print(len(keys), sum(d is not None for d, _ in got), sorted({r for _, r in got}))
"""


def test_three_hundred_shards_under_ulimit_256(tmp_path):
    for i in range(300):
        write_tar(tmp_path / f"{i:03d}.tar", {f"{i}.jpg": b"img%d" % i})
    r = subprocess.run([sys.executable, "-c", _MANY, str(tmp_path)], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["300", "300", "['']"]


def test_a_shard_changed_after_indexing_is_not_read_at_old_offsets(tmp_path):
    write_tar(tmp_path / "a.tar", {"x.jpg": b"first"})
    src = TarSource(tmp_path)
    assert src.read("a.tar:x.jpg", MAX_BYTES) == (b"first", "")
    write_tar(tmp_path / "a.tar", {"y.jpg": b"0123456789", "x.jpg": b"other"})
    assert src.read("a.tar:x.jpg", MAX_BYTES) == (None, "shard a.tar changed since it was indexed")


def test_member_names_with_a_line_break_are_left_out_with_one_warning(tmp_path, caplog):
    write_tar(tmp_path / "a.tar", {"ok.jpg": b"1", "two\nlines.jpg": b"2", "cr\r.jpg": b"3", "z.jpg": b"4"})
    (tmp_path / "sub\nx").mkdir()
    write_tar(tmp_path / "sub\nx" / "b.tar", {"c.jpg": b"5"})
    with caplog.at_level("WARNING"):
        keys = list(TarSource(tmp_path).keys())
    assert keys == ["a.tar:ok.jpg", "a.tar:z.jpg"]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and warned[0].startswith("3 shard or member names hold a line break")
    path = sources.resolve_list({"list": "", "root": str(tmp_path), "format": "tar"}, rundir.RunDir(tmp_path / "r"), 1)
    assert path.read_text().splitlines() == keys


# --------------------------------------------------------------------------- align's outputs


def _align_cfg(tmp_path: Path, **align_keys) -> dict:
    root = tmp_path / "photos"
    write_images(root, 3)
    lst = tmp_path / "photos.txt"
    lst.write_text("".join(f"{i // 100:03d}/{i:06d}.jpg\n" for i in range(3)))
    cfg = config.load(None)
    cfg["data"].update(list=str(lst), root=str(root))
    cfg["align"].update(root=str(tmp_path / "aligned"), list=str(tmp_path / "lists" / "aligned.txt"), workers=1)
    cfg["align"]["model"] = str(tmp_path / "no-detector.onnx")  # never reached: refused before any work
    cfg["align"].update(align_keys)
    return cfg


@pytest.mark.parametrize("target", ["data.list", "photo", "folder", "fifo", "sidecar_folder"])
def test_align_refuses_an_aligned_list_that_would_replace_something(tmp_path, target):
    cfg = _align_cfg(tmp_path)
    photo = Path(cfg["data"]["root"]) / "000" / "000001.jpg"
    out = {
        "data.list": Path(cfg["data"]["list"]),
        "photo": photo,
        "folder": tmp_path / "a_folder",
        "fifo": tmp_path / "fifo.txt",
        "sidecar_folder": tmp_path / "lists" / "x.txt",
    }[target]
    if target == "folder":
        out.mkdir()
    elif target == "fifo":
        os.mkfifo(out)
    elif target == "sidecar_folder":
        align.sidecars(out)[0].mkdir(parents=True)
    cfg["align"]["list"] = str(out)
    before = photo.read_bytes()
    with pytest.raises(UserError) as e:
        align.run(cfg, progress=False)
    says = {"data.list": "is data.list", "photo": "is a photo of data.list"}.get(target, "not a regular file")
    assert says in str(e.value) and "\n" not in str(e.value)
    assert photo.read_bytes() == before and not (tmp_path / "aligned").exists()  # nothing done


def test_two_aligns_into_other_roots_do_not_share_one_list(tmp_path):
    cfg = _align_cfg(tmp_path)
    with rundir.holding(Path(cfg["align"]["list"]), "align"):  # another align, into another root, is writing it
        with pytest.raises(UserError, match="in use by another introspect run"):
            align.run(cfg, progress=False)


# --------------------------------------------------------------------------- two shards enumerate one container


def test_two_shard_extracts_with_an_empty_list_started_together(tmp_path, tiny_model):
    blobs = [(tmp_path / "img" / p).read_bytes() for p in write_images(tmp_path / "img", 64)]
    (tmp_path / "shards").mkdir()
    sidecars = {f"{k:05d}.json": b"{}" for k in range(1500)}  # members that are not images: a slower enumeration
    for s in range(32):
        images = {f"{i:03d}.jpg": blobs[i] for i in (2 * s, 2 * s + 1)}
        write_tar(tmp_path / "shards" / f"{s:02d}.tar", images | sidecars)
    cfg = make_config("", tmp_path / "shards", tiny_model, tmp_path / "out")
    argv = [sys.executable, "-m", "introspect.cli", "extract", "-q", *_args(cfg), "--set", "data.format=tar"]
    procs = [
        subprocess.Popen([*argv, "--shard", f"{i}/2"], cwd=REPO, env=ENV, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    done = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert [rc for rc, _ in done] == [0, 0], done
    lines = (tmp_path / "out" / "list.txt").read_text().splitlines()
    assert len(lines) == 64 and lines[0] == "00.tar:000.jpg"
    assert not list((tmp_path / "out").glob("*.tmp")) and not list((tmp_path / "out").glob(".*.lock"))
    assert _cli_join(tmp_path / "out") == 0


def _cli_join(out: Path) -> int:
    return cli.main(["join", "--out", str(out)])


@pytest.mark.parametrize("planted", ["symlink", "fifo"])
def test_a_planted_temporary_file_is_never_written_through(tmp_path, planted):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    tmp = rundir.temp_name(tmp_path / "result.json")
    tmp.symlink_to(victim) if planted == "symlink" else os.mkfifo(tmp)
    writer = threading.Thread(target=rundir.write_bytes, args=(tmp_path / "result.json", b"{}"), daemon=True)
    writer.start()
    writer.join(30)
    if writer.is_alive():  # blocked opening the FIFO: let it go, then fail
        os.close(os.open(tmp, os.O_RDONLY | os.O_NONBLOCK))
        pytest.fail("the writer opened the planted FIFO and blocked")
    assert (tmp_path / "result.json").read_bytes() == b"{}" and victim.read_text() == "keep"
