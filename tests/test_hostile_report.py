"""The report and the labelling files it reads: another model's labels.h5 set aside, a hostile --compare refused."""

from __future__ import annotations

import logging
import os
import shutil
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_report import reported  # noqa: F401  (the module's run: extract, cluster, merge, label, report)

from introspect import cli
from introspect.stages import cluster, merge, report


def _copy(cfg: dict, dest: Path) -> dict:
    shutil.copytree(cfg["extract"]["out"], dest, ignore=shutil.ignore_patterns("report"))
    return {**cfg, "extract": {**cfg["extract"], "out": str(dest)}}


def test_labels_of_an_earlier_clustering_are_left_out(reported, tmp_path, caplog):  # noqa: F811
    """Cluster, merge, label; cluster again, merge: the old labels.h5 is not this model's, so no labelled counts."""
    cfg, *_ = reported
    cfg = _copy(cfg, tmp_path / "run")
    out = Path(cfg["extract"]["out"])
    before = report.build(cfg).read_text()
    assert "labelled images (sample" in before and "<td>labelled</td>" in before
    cfg["cluster"] = {**cfg["cluster"], "min_samples": 3, "eps": 0.5}
    cfg["classifier"] = {**cfg["classifier"], "cv": 3}
    cluster.run(cfg)
    merge.run(cfg)
    with caplog.at_level(logging.WARNING):
        text = report.build(cfg).read_text()
    said = [r.getMessage() for r in caplog.records if "leaving out" in r.getMessage()]
    assert len(said) == 1 and "labels.h5" in said[0] and "another merged model" in said[0]
    assert "<td>labelled</td>" not in text and "labelled images (sample" not in text
    run = report.load_run(cfg)  # the distribution came with the same labelling: left out too
    assert run["labels"] is None and run["distribution"] is None
    assert all(f["of"] == "map points in its clusters" for f in run["facets"])
    assert (out / "labels.h5").is_file()  # set aside, not deleted


def test_cluster_again_without_merge_leaves_the_labels_out(reported, tmp_path, caplog):  # noqa: F811
    cfg, *_ = reported
    cfg = _copy(cfg, tmp_path / "run")
    cfg["classifier"] = {**cfg["classifier"], "cv": 3}
    cluster.run(cfg)  # merged.onnx now grafts an older classifier
    with caplog.at_level(logging.WARNING):
        text = report.build(cfg).read_text()
    assert any("older classifier" in r.getMessage() for r in caplog.records)
    assert "<td>labelled</td>" not in text


def _mutate(src: Path, dest: Path, how: str) -> Path:
    shutil.copy(src, dest)
    with h5py.File(dest, "a") as f:
        n = len(f["label"])
        if how == "no label":
            del f["label"]
        elif how == "no index":
            del f["index"]
        elif how == "string labels":
            del f["label"]
            f["label"] = np.array([b"a"] * n)
        elif how == "2-D labels":
            del f["label"]
            f["label"] = np.zeros((n, 2), np.int64)
        elif how == "float labels":
            del f["label"]
            f["label"] = np.zeros(n, np.float32)
        elif how == "lengths differ":
            del f["label"]
            f["label"] = np.zeros(n + 1, np.int64)
        elif how == "unknown ids":
            f["label"][0] = 97
        elif how == "empty":
            for k in ("label", "index", "score", "map"):
                if k in f:
                    shape = f[k].shape[1:]
                    dtype = f[k].dtype
                    del f[k]
                    f.create_dataset(k, (0, *shape), dtype)
        elif how in ("3-column map", "NaN map", "inf map"):
            del f["map"]
            if how == "3-column map":
                f["map"] = np.zeros((n, 3), np.float32)
            else:
                f["map"] = np.full((n, 2), np.nan if how == "NaN map" else np.inf, np.float32)
        elif how == "label is a group":
            del f["label"]
            f.create_group("label")
    return dest


HOSTILE = [
    "no label",
    "no index",
    "string labels",
    "2-D labels",
    "float labels",
    "lengths differ",
    "unknown ids",
    "empty",
    "3-column map",
    "NaN map",
    "inf map",
    "label is a group",
]


@pytest.mark.parametrize("how", HOSTILE)
def test_a_hostile_compare_file_is_one_line(reported, tmp_path, capsys, how):  # noqa: F811
    cfg, *_ = reported
    labels = Path(cfg["extract"]["out"]) / "labels.h5"
    with h5py.File(labels) as f:
        assert "map" in f  # the hostile maps replace a real one
    bad = _mutate(labels, tmp_path / "bad.h5", how)
    rc = cli.main(["report", "--out", cfg["extract"]["out"], "--compare", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert "bad.h5" in err[0] and "nan%" not in err[0]


def test_own_labels_h5_is_checked_like_compare(reported, tmp_path, capsys):  # noqa: F811
    cfg, *_ = reported
    cfg = _copy(cfg, tmp_path / "run")
    out = Path(cfg["extract"]["out"])
    _mutate(out / "labels.h5", tmp_path / "x.h5", "unknown ids")
    shutil.copy(tmp_path / "x.h5", out / "labels.h5")
    assert cli.main(["report", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "clusters [97]" in err[0]


class Hung(BaseException):
    """Raised by the alarm: not an OSError, which the code under test could turn into a line."""


def _hung(*_):
    raise Hung("opened a FIFO and waited for a writer")


@pytest.mark.parametrize("which", ["compare", "labels.h5", "clusters.h5"])
def test_a_fifo_is_refused_not_waited_on(reported, tmp_path, capsys, which):  # noqa: F811
    cfg, *_ = reported
    cfg = _copy(cfg, tmp_path / "run")
    out = Path(cfg["extract"]["out"])
    fifo = tmp_path / "fifo.h5" if which == "compare" else out / which
    if fifo.exists():
        fifo.unlink()
    os.mkfifo(fifo)
    signal.signal(signal.SIGALRM, _hung)
    signal.alarm(60)  # an open() of the FIFO would wait for a writer for ever
    argv = ["report", "--out", str(out)] + (["--compare", str(fifo)] if which == "compare" else [])
    try:
        assert cli.main(argv) == 2
    finally:
        signal.alarm(0)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "FIFO" in err[0], err


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_only_regular_files_are_opened_as_hdf5(tmp_path, kind):
    from introspect.engine import store
    from introspect.errors import UserError

    path = tmp_path / "subset.h5"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path = Path("/dev/null")
    signal.signal(signal.SIGALRM, _hung)
    signal.alarm(30)
    try:
        with pytest.raises(UserError, match="not a regular file"):
            store.open_h5(path)
    finally:
        signal.alarm(0)


VIEW_HOSTILE = {
    "a view label the view does not have": (lambda f, n: f["label_mean"].__setitem__(0, 7), "of view 'mean' [7]"),
    "a view the run does not have": (lambda f, n: f.create_dataset("label_side", data=np.zeros(n, np.int64)), "side"),
    "float view labels": (lambda f, n: _replace(f, "label_mean", np.zeros(n, np.float32)), "label_mean"),
    "a view's scores without its labels": (lambda f, n: f.create_dataset("score_side", data=np.zeros(n)), "side"),
    "string view scores": (lambda f, n: _replace(f, "score_mean", np.array([b"a"] * n)), "score_mean"),
    "view facets of other rows": (lambda f, n: _replace(f, "facets_mean", np.zeros((n + 1, 2), "f4")), "facets_mean"),
}


def _replace(f, name: str, data: np.ndarray) -> None:
    if name in f:
        del f[name]
    f[name] = data


@pytest.mark.parametrize("how", list(VIEW_HOSTILE))
def test_each_views_columns_are_checked(reported, tmp_path, capsys, how):  # noqa: F811
    """labels.h5's per-view columns (label_V, score_V, facets_V) are checked, label_V against the view's clusters."""
    from test_report_views import _with_views

    cfg = _with_views(reported[0], tmp_path / "run")
    out = Path(cfg["extract"]["out"])
    assert "mean" in report.load_run(cfg)["labels"]["views"]  # the view's column as label writes it is taken
    bad = shutil.copy(out / "labels.h5", tmp_path / "bad.h5")
    with h5py.File(bad, "a") as f:
        VIEW_HOSTILE[how][0](f, len(f["label"]))
    rc = cli.main(["report", "--out", str(out), "--compare", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert "bad.h5" in err[0] and VIEW_HOSTILE[how][1] in err[0], err
