"""A run in which every input fails exits 2 with one line naming the likely cause, in every stage that reads a
list (align, extract, label; files, recordio, tar; a shard; a resume), and the docs' `find` makes a list
those stages read."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import kmeans_run, make_config, write_images
from test_align import yunet  # noqa: F401  (a fixture)
from test_sources import write_tar

from introspect import cli
from introspect.engine import diagnose, store, stream
from introspect.engine.diagnose import FIND, Failures, nothing_read
from introspect.engine.sources import FileSource
from introspect.errors import UserError
from introspect.stages import extract, label, merge


def _photos(tmp_path: Path, n: int = 10) -> tuple[Path, list[str]]:
    root = tmp_path / "photos"
    return root, write_images(root, n, seed=1)


def _find_list(tmp_path: Path) -> Path:
    """The list the README's old command wrote: `find photos -name '*.jpg' > photos.txt`, run beside photos/."""
    lst = tmp_path / "photos.txt"
    subprocess.run("find photos -name '*.jpg' | sort > photos.txt", shell=True, cwd=tmp_path, check=True)
    return lst


def test_docs_find_lists_every_photo_relative_to_the_root(tmp_path):
    root = tmp_path / "photos"
    (root / "sub dir").mkdir(parents=True)
    png = b"\x89PNG\r\n\x1a\n"
    for name in ("a.jpg", "b.JPEG", "sub dir/c.png", "d.Jpg", "e.PNG", "notes.txt", "f.gif"):
        (root / name).write_bytes(png)
    cmd = FIND.replace("ROOT", "photos").replace("LIST", "photos.txt")
    subprocess.run(["bash", "-c", cmd], cwd=tmp_path, check=True)
    info = stream.scan_list(tmp_path / "photos.txt")
    with stream.open_list(info.path) as f:
        lines = sorted(line.rstrip("\n") for line in f)
    assert lines == ["a.jpg", "b.JPEG", "d.Jpg", "e.PNG", "sub dir/c.png"] and info.lines == 5
    source = FileSource(root)
    assert all(source.read(line, 1 << 20)[0] == png for line in lines)  # relative to the root, as read


def test_diagnosis_names_each_cause(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root, rel = _photos(tmp_path, 3)

    def verdict(lines: list[str], root: str | Path) -> str:
        f = Failures()
        for line in lines:
            f.add(line, "missing")
        return nothing_read(f, FileSource(root), whole=True)

    doubled = verdict([f"photos/{p}" for p in rel], "photos")
    assert doubled.startswith("all 3 images failed (missing: 3); e.g. photos/000/000000.jpg: missing")
    assert "start with the root's own name 'photos/'" in doubled and doubled.endswith("--root .")
    deep = verdict([f"photos/{p}" for p in rel], tmp_path / "photos")
    assert f"--root {tmp_path}" in deep  # an absolute root loses its last folder
    assert "'photos/000/'" in verdict([f"photos/{p}" for p in rel], "photos/000")  # two folders named twice
    (tmp_path / "e").mkdir()
    assert "relative to the current folder" in verdict([f"photos/{p}" for p in rel], "e")
    assert "does not exist" in verdict(rel, "nowhere")
    assert "is not a folder" in verdict(rel, f"photos/{rel[0]}")
    assert "find . -type f" in verdict(rel, tmp_path / "e")  # names the way to write the list
    assert diagnose.doubled_prefix(rel[0], "photos", FileSource("photos")) is None


def test_extract_with_the_root_named_twice_exits_2(tmp_path, tiny_model, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _photos(tmp_path)
    lst = _find_list(tmp_path)
    argv = ["extract", "-q", "--list", lst, "--root", "photos", "--model", tiny_model, "--out", tmp_path / "run"]
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "all 10 images failed (missing: 10)" in err and "'photos/'" in err and "--root ." in err, err
    assert cli.main([str(a) for a in argv[:-4] + ["--root", ".", *argv[-4:]]]) == 0  # the fix it names works


def test_extract_stream_stops_with_the_same_line(tmp_path, tiny_model, monkeypatch):
    """Past the preprocessing check (which already says it), the stream itself reaches the same verdict."""
    monkeypatch.chdir(tmp_path)
    root, rel = _photos(tmp_path, 20)
    lst = tmp_path / "l.txt"
    lst.write_text("".join(f"photos/{p}\n" for p in rel))
    cfg = make_config(lst, root, tiny_model, tmp_path / "run", chunk_size=4, batch_size=4)
    job_inputs = stream.Inputs(stream.scan_list(lst), root)
    monkeypatch.setattr(extract, "check_preprocessing", lambda *a, **k: {})
    with pytest.raises(UserError, match=r"all 20 images failed \(missing: 20\).*'photos/'"):
        extract.run(cfg, progress=False)
    assert not (tmp_path / "run" / "full.h5").exists() and not (tmp_path / "run" / "parts").exists()
    with pytest.raises(UserError, match=r"all 20 images failed.*'photos/'.*nothing was removed"):
        stream.probe(job_inputs, (112, 112))


def test_a_shard_whose_every_line_fails_exits_2(tmp_path, tiny_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root, rel = _photos(tmp_path, 16)
    lines = [f"photos/{p}" if (i // 4) % 2 == 0 else p for i, p in enumerate(rel)]  # shard 0/2's chunks all fail
    lst = tmp_path / "l.txt"
    lst.write_text("".join(p + "\n" for p in lines))
    cfg = make_config(lst, root, tiny_model, tmp_path / "run", chunk_size=4, batch_size=4, fraction=1.0)
    monkeypatch.setattr(extract, "check_preprocessing", lambda *a, **k: {})
    from introspect.engine.rundir import Shard

    with pytest.raises(UserError, match=r"all 8 images failed \(missing: 8\).*'photos/'"):
        extract.run(cfg, Shard(0, 2), progress=False)
    assert extract.run(cfg, Shard(1, 2), progress=False).images == 8


def test_a_resumed_run_that_read_nothing_exits_2(tmp_path, tiny_model, monkeypatch):
    """The local engine's early stop does not apply to a resume; the check of the finished parts does."""
    monkeypatch.chdir(tmp_path)
    root, rel = _photos(tmp_path, 12)
    lst = tmp_path / "l.txt"
    lst.write_text("".join(f"photos/{p}\n" for p in rel))
    cfg = make_config(lst, root, tiny_model, tmp_path / "run", chunk_size=4, batch_size=4, workers=1)
    monkeypatch.setattr(extract, "check_preprocessing", lambda *a, **k: {})
    real, calls = store.write_part, []

    def killed_at_the_second_part(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(store, "write_part", killed_at_the_second_part)
    with pytest.raises(KeyboardInterrupt):
        extract.run(cfg, progress=False)
    monkeypatch.setattr(store, "write_part", real)
    with pytest.raises(UserError, match=r"all 12 images failed \(missing: 12\).*'photos/'"):
        extract.run(cfg, progress=False)
    assert not (tmp_path / "run" / "full.h5").exists()


def test_tar_and_recordio_lists_that_read_nothing(tmp_path, tiny_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, rel = _photos(tmp_path, 6)
    (tmp_path / "shards").mkdir()
    write_tar(tmp_path / "shards" / "a.tar", {Path(p).name: (tmp_path / "photos" / p).read_bytes() for p in rel})
    lst = tmp_path / "tar.txt"
    lst.write_text("".join(f"shards/a.tar:{Path(p).name}\n" for p in rel))
    cfg = make_config(lst, tmp_path / "shards", tiny_model, tmp_path / "tar")
    cfg["data"]["format"] = "tar"
    with pytest.raises(UserError, match=r"all 6 images failed \(missing shard.*'shards/'.*--root"):
        extract.run(cfg, progress=False)

    from test_sources import insightface_rec

    insightface_rec(tmp_path / "train.rec", [(tmp_path / "photos" / p).read_bytes() for p in rel], [0] * 6)
    lst = tmp_path / "ids.txt"
    lst.write_text("".join(f"{p}\n" for p in rel))  # file names where record ids belong
    cfg = make_config(lst, tmp_path / "train.rec", tiny_model, tmp_path / "rec")
    cfg["data"]["format"] = "recordio"
    with pytest.raises(UserError, match=r"all 6 images failed \(not a record id: 6\); e\.g\. 000/000000\.jpg"):
        extract.run(cfg, progress=False)


def test_label_on_a_list_that_reads_nothing(tmp_path, tiny_model, monkeypatch):
    root = tmp_path / "data"
    rel = write_images(root, 60, seed=3)
    lst = tmp_path / "list.txt"
    lst.write_text("".join(p + "\n" for p in rel))
    cfg = make_config(lst, root, tiny_model, tmp_path / "run", fraction=0.5)
    kmeans_run(cfg)
    merge.run(cfg)
    monkeypatch.chdir(tmp_path)
    new = tmp_path / "new.txt"
    new.write_text("".join(f"data/{p}\n" for p in rel[:5]))
    cfg["data"].update(list=str(new), root="data")
    with pytest.raises(UserError, match=r"all 5 images failed \(missing: 5\).*'data/'.*--root \."):
        label.run(cfg, progress=False)
    assert not (tmp_path / "run" / "labels.h5").exists()


def test_align_on_photos_that_give_no_crop_exits_2(tmp_path, yunet, monkeypatch, capsys):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    _photos(tmp_path, 3)
    lst = _find_list(tmp_path)
    argv = ["align", "-q", "--list", lst, "--root", "photos", "--out", tmp_path / "al", "--set", f"align.model={yunet}"]
    argv += ["--out-list", tmp_path / "lists" / "aligned.txt"]
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "all 3 photos failed (missing: 3)" in err and "'photos/'" in err and "--root ." in err, err
    assert "aligned.failures.csv" in err  # every photo's reason is kept
    rc = cli.main([str(a) for a in argv[:5] + ["."] + argv[6:]])  # the fix it names: textures, no face
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "all 3 photos failed (no face found: 3)" in err and "detector found no face" in err, err
