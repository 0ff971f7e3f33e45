"""A killed extract resumes to exactly the result of an uninterrupted run.

The real thing: `introspect extract` in a subprocess, SIGKILLed at several moments, then run again.
The crash states a kill can leave during the final copy are made directly (they last milliseconds).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, make_config, write_images
from test_extract import assert_same_rows, read

from introspect.engine import store, stream
from introspect.stages import extract

N = 600
CHUNK = 32


class Job:
    """A 600-line list (optionally with bad images) and its uninterrupted result."""

    def __init__(self, tmp: Path, model: Path, root: Path, rel: list[str], bad: bool):
        lines = list(rel)
        if bad:
            b = root / "bad"
            b.mkdir(exist_ok=True)
            (b / "empty.jpg").write_bytes(b"")
            (b / "text.jpg").write_text("no image")
            data = (root / rel[0]).read_bytes()
            (b / "truncated.jpg").write_bytes(data[: len(data) // 3])
            cv2.imwrite(str(b / "gray.png"), cv2.imread(str(root / rel[0]))[..., 0])
            kinds = ["missing/x.jpg", "bad/empty.jpg", "bad/text.jpg", "bad/truncated.jpg", "", "bad/gray.png"]
            for k, pos in enumerate(range(5, N, 23)):  # bad ones in most chunks, inside and outside the subset
                lines[pos] = kinds[k % len(kinds)]
        self.list = tmp / ("bad.txt" if bad else "list.txt")
        self.list.write_text("".join(ln + "\n" for ln in lines))
        self.root, self.model, self.tmp = root, model, tmp
        ref = tmp / ("ref_bad" if bad else "ref")
        extract.run(make_config(self.list, root, model, ref), progress=False)
        self.ref = {name: read(ref / name) for name in ("full.h5", "subset.h5")}
        self.runs = 0

    def out(self) -> Path:
        self.runs += 1
        return self.tmp / f"out{self.runs}"

    def cmd(self, out: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "introspect.cli",
            "extract",
            "-q",
            "--list",
            str(self.list),
            "--root",
            str(self.root),
            "--model",
            str(self.model),
            "--out",
            str(out),
            "--chunk-size",
            str(CHUNK),
            "--batch-size",
            "16",
            "--fraction",
            "0.2",
            "--workers",
            "2",
        ]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("resume") / "data"
    return root, write_images(root, N, seed=7)


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_model, images) -> Job:
    return Job(tmp_path_factory.mktemp("job"), tiny_model, *images, bad=False)


@pytest.fixture(scope="module")
def bad_job(tmp_path_factory, tiny_model, images) -> Job:
    return Job(tmp_path_factory.mktemp("badjob"), tiny_model, *images, bad=True)


ENV = dict(os.environ, PYTHONPATH=str(REPO))


def parts_in(out: Path) -> set[int]:
    return {int(p.name[1:10]) for p in (out / "parts").glob("c*.h5")} if (out / "parts").is_dir() else set()


def kill_when(cmd: list[str], ready, timeout: float = 60) -> None:
    """Start the command, SIGKILL it as soon as `ready()` holds; it must still be running then."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(
                    f"the run ended (rc {proc.returncode}) before the kill point: {proc.stderr.read().decode()[-2000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail("kill point not reached in time")
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill() if proc.poll() is None else None
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def finish(job: Job, out: Path, done: set[int]) -> None:
    """Run the same command to completion; it redoes exactly the chunks without a part."""
    res = subprocess.run(job.cmd(out), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    processed = int(re.search(r"\((\d+) this session\)", res.stdout).group(1))
    full = job.ref["full.h5"]
    assert processed == int(sum(1 for i in full["index"] if i // CHUNK not in done)), res.stdout
    assert f"{len(full['index'])} images, {len(full['fail_index'])} failed" in res.stdout
    check(job, out)


def check(job: Job, out: Path) -> None:
    assert sorted(set(os.listdir(out)) - {"timings.json"}) == ["full.h5", "subset.h5"]  # no parts left
    for name, ref in job.ref.items():
        got = read(out / name)
        assert_same_rows(got, ref)
        assert got["attrs"] == ref["attrs"]
    full = read(out / "full.h5")
    # every line exactly once: a row or a failure
    seen = np.concatenate([full["index"], full["fail_index"]])
    assert len(seen) == N and sorted(seen.tolist()) == list(range(N))
    assert np.all(np.diff(full["index"]) > 0)


def test_kill_very_early(job):
    out = job.out()
    kill_when(job.cmd(out), lambda: (out / "parts" / "run.json").exists())
    assert not (out / "full.h5").exists()
    done = parts_in(out)
    finish(job, out, done)


def test_kill_during_imports(job):
    out = job.out()
    start = time.monotonic()
    kill_when(job.cmd(out), lambda: time.monotonic() - start > 0.05)
    assert not (out / "full.h5").exists()
    finish(job, out, parts_in(out))


def test_killed_twice_then_finished(job):
    out = job.out()
    kill_when(job.cmd(out), lambda: len(parts_in(out)) >= 3)
    first = parts_in(out)
    assert len(first) >= 3 and not (out / "full.h5").exists()
    kill_when(job.cmd(out), lambda: len(parts_in(out)) >= 12)
    second = parts_in(out)
    assert first < second and len(second) < (N + CHUNK - 1) // CHUNK and not (out / "full.h5").exists()
    assert second == set(range(len(second)))  # parts are finished in list order
    finish(job, out, second)


def test_kill_with_bad_images(bad_job):
    assert len(bad_job.ref["full.h5"]["fail_index"]) > 20
    assert 0 < len(bad_job.ref["subset.h5"]["fail_index"]) < len(bad_job.ref["full.h5"]["fail_index"])
    out = bad_job.out()
    kill_when(bad_job.cmd(out), lambda: len(parts_in(out)) >= 7)
    done = parts_in(out)
    assert not (out / "full.h5").exists()
    finish(bad_job, out, done)


# --------------------------------------------------------------------------- short-lived crash states


class Crash(Exception):
    pass


@pytest.fixture
def small(dataset, tiny_model, tmp_path):
    """The 120-image dataset, its uninterrupted result, and a config for another out folder."""
    lst, root, _ = dataset
    extract.run(make_config(lst, root, tiny_model, tmp_path / "ref"), progress=False)
    ref = {name: read(tmp_path / "ref" / name) for name in ("full.h5", "subset.h5")}
    return make_config(lst, root, tiny_model, tmp_path / "out"), ref


def _same(cfg, ref):
    out = Path(cfg["extract"]["out"])
    assert sorted(set(os.listdir(out)) - {"timings.json"}) == ["full.h5", "subset.h5"]
    for name in ref:
        got = read(out / name)
        assert_same_rows(got, ref[name])
        assert got["attrs"] == ref[name]["attrs"]


def test_crash_between_the_two_result_files(small, monkeypatch):
    cfg, ref = small
    real, calls = store.concat, []

    def concat(sources, failure_files, dest, *args):
        calls.append(dest.name)
        if len(calls) == 2:
            raise Crash
        return real(sources, failure_files, dest, *args)

    with monkeypatch.context() as m:
        m.setattr(store, "concat", concat)
        with pytest.raises(Crash):
            extract.run(cfg, progress=False)
    out = Path(cfg["extract"]["out"])
    assert (out / "full.h5").exists() and not (out / "subset.h5").exists()
    summary = extract.run(cfg, progress=False)
    assert summary.processed == 0  # every chunk was done; only the copy is redone
    _same(cfg, ref)


def test_crash_while_writing_a_part_and_a_result(small, monkeypatch):
    cfg, ref = small
    with monkeypatch.context() as m:
        m.setattr(stream, "_finalize", lambda *a, **k: (_ for _ in ()).throw(Crash))
        with pytest.raises(Crash):
            extract.run(cfg, progress=False)
    out = Path(cfg["extract"]["out"])
    parts = out / "parts"
    assert sorted(p.name for p in parts.glob("c*.h5")) == [store.part_name(i) for i in range(4)]
    # chunk 2 was being written when the kill came; a result was half copied
    (parts / store.part_name(2)).rename(parts / (store.part_name(2) + ".tmp"))
    with open(parts / (store.part_name(2) + ".tmp"), "r+b") as f:
        f.truncate(100)
    (out / "full.h5.tmp").write_bytes(b"\x89HDF half a file")
    summary = extract.run(cfg, progress=False)
    assert summary.processed == 32 and summary.resumed_chunks == 3
    _same(cfg, ref)


def test_crash_after_results_before_cleanup(small):
    cfg, ref = small
    extract.run(cfg, progress=False)
    out = Path(cfg["extract"]["out"])
    (out / "parts").mkdir()
    (out / "parts" / store.part_name(1)).write_bytes(b"left over")
    before = {p: p.read_bytes() for p in out.glob("*.h5")}
    summary = extract.run(cfg, progress=False)
    assert summary.processed == 0 and summary.images == 120
    assert {p: p.read_bytes() for p in out.glob("*.h5")} == before
    _same(cfg, ref)


def test_resume_with_other_batching(small, monkeypatch):
    """Batch size and workers are not part of the run: a resume may change them."""
    cfg, ref = small
    real, seen = store.write_part, []

    def write_part(path, *args):
        seen.append(path)
        real(path, *args)
        if len(seen) == 2:
            raise Crash

    with monkeypatch.context() as m:
        m.setattr(store, "write_part", write_part)
        with pytest.raises(Crash):
            extract.run(cfg, progress=False)
    cfg["extract"].update(batch_size=5, workers=1)
    summary = extract.run(cfg, progress=False)
    assert summary.resumed_chunks == 2 and summary.processed == 120 - 64
    _same(cfg, ref)
