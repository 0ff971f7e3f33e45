"""New data labelled into a new folder lands on the run's map (the merged model records its clusters.h5), and the
report draws it; when the run's clusters.h5 is gone or changed, label and report say so in one line."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import kmeans_run, make_config, write_images
from test_label import _with_map
from test_report import reported  # noqa: F401  (the real run: t-SNE map, clusters, merged, labelled)

from introspect import cli
from introspect.engine.merged import load_merged
from introspect.stages import label, merge, report


@pytest.fixture(scope="module")
def run_with_map(tmp_path_factory, tiny_model):
    """A run (tiny net, k-means clusters, a map with its projection, merged) and 50 images it never saw."""
    tmp = tmp_path_factory.mktemp("newdata")
    root = tmp / "data"
    rel = write_images(root, 150, seed=5)
    lst = tmp / "list.txt"
    lst.write_text("".join(p + "\n" for p in rel[:100]))
    cfg = make_config(lst, root, tiny_model, tmp / "run", fraction=0.5)
    kmeans_run(cfg)
    _with_map(cfg)  # and merged
    new = tmp / "new.txt"
    new.write_text("".join(p + "\n" for p in rel[100:]))
    return cfg, new


def _label_into(cfg: dict, new: Path, out: Path, model: Path | str = "") -> label.LabelResult:
    """`introspect label --list new --out out`, with `label.model` when given: the documented way for new data."""
    data = {**cfg["data"], "list": str(new)}
    return label.run(
        {
            **cfg,
            "data": data,
            "extract": {**cfg["extract"], "out": str(out)},
            "label": {**cfg["label"], "model": str(model)},
        },
        progress=False,
    )


def _read(path: Path) -> dict:
    with h5py.File(path) as f:
        return {k: f[k][:] for k in ("index", "label", "map") if k in f} | {"attrs": dict(f.attrs)}


def test_new_data_in_a_new_folder_is_placed_like_in_the_run_folder(run_with_map, tmp_path):
    cfg, new = run_with_map
    run = Path(cfg["extract"]["out"])
    meta = load_merged(run / "merged.onnx")[1]
    assert meta["clusters_path"] == str((run / "clusters.h5").resolve()) and len(meta["clusters_sha256"]) == 64
    away = _label_into(cfg, new, tmp_path / "new", run / "merged.onnx")
    assert not (tmp_path / "new" / "clusters.h5").exists()  # nothing of the run copied
    home_dir = tmp_path / "copy"
    shutil.copytree(run, home_dir)
    home = _label_into(cfg, new, home_dir)  # the run folder itself: its own clusters.h5, as before
    a, b = _read(away.labels), _read(home.labels)
    assert a["map"].shape == (50, 2) and np.isfinite(a["map"]).all()
    np.testing.assert_array_equal(a["label"], b["label"])
    np.testing.assert_allclose(a["map"], b["map"], atol=1e-5)
    assert a["attrs"]["unplaced"] == ""
    assert all(r["subset_share"] is not None for r in away.distribution)  # the subset's shares: drift is measured
    assert away.distribution == home.distribution


def test_a_changed_or_missing_run_is_one_line_and_still_labels(run_with_map, tmp_path, caplog):
    cfg, new = run_with_map
    moved = tmp_path / "run"
    shutil.copytree(cfg["extract"]["out"], moved)
    merge.run({**cfg, "extract": {**cfg["extract"], "out": str(moved)}})  # the copy's model records the copy
    good = _read(_label_into(cfg, new, tmp_path / "good", moved / "merged.onnx").labels)

    shutil.move(moved, tmp_path / "moved")  # a run folder moved with its model: found beside the model
    got = _label_into(cfg, new, tmp_path / "a", tmp_path / "moved" / "merged.onnx")
    np.testing.assert_allclose(_read(got.labels)["map"], good["map"], atol=1e-5)

    with h5py.File(tmp_path / "moved" / "clusters.h5", "a") as f:  # clustered again, not merged again
        f.attrs["touched"] = 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="introspect"):
        got = _label_into(cfg, new, tmp_path / "b", tmp_path / "moved" / "merged.onnx")
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "no map positions" in warned[0] and "changed since" in warned[0], warned
    b = _read(got.labels)
    assert "map" not in b and "changed since" in b["attrs"]["unplaced"]
    np.testing.assert_array_equal(b["label"], good["label"])  # still labelled, the same
    assert all(r["subset_share"] is None for r in got.distribution)

    alone = tmp_path / "alone" / "model.onnx"  # the model copied away, its run deleted
    alone.parent.mkdir()
    shutil.copy(tmp_path / "moved" / "merged.onnx", alone)
    shutil.rmtree(tmp_path / "moved")
    argv = ["label", "-q", "--set", f"label.model={alone}", "--list", str(new), "--root", cfg["data"]["root"]]
    caplog.clear()
    assert cli.main([*argv, "--out", str(tmp_path / "c"), "--set", "extract.batch_size=16"]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "is not there any more" in warned[0] and str(moved / "clusters.h5") in warned[0]
    assert "\n" not in warned[0]
    np.testing.assert_array_equal(_read(tmp_path / "c" / "labels.h5")["label"], good["label"])


def test_report_draws_new_data_labelled_elsewhere_or_says_why_not(reported, tmp_path, caplog):  # noqa: F811
    cfg, _, _, lines = reported
    run = Path(cfg["extract"]["out"])
    new = tmp_path / "new.txt"
    new.write_text("".join(p + "\n" for p in lines if p.startswith("g2/")))
    _label_into({**cfg, "label": {**cfg["label"], "fast": False}}, new, tmp_path / "new", run / "merged.onnx")
    shown = {**cfg, "report": {**cfg["report"], "compare": str(tmp_path / "new" / "labels.h5")}}
    text = report.build(shown).read_text()
    assert "new data (sample, 30)" in text and '"nx":[]' not in text.replace(" ", "")
    assert "has no map positions" not in text

    aside = tmp_path / "aside.h5"
    shutil.move(run / "clusters.h5", aside)  # the run's clusters.h5 away while new data is labelled
    try:
        _label_into(cfg, new, tmp_path / "lost", run / "merged.onnx")
    finally:
        shutil.move(aside, run / "clusters.h5")
    lost = {**cfg, "report": {**cfg["report"], "compare": str(tmp_path / "lost" / "labels.h5")}}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="introspect"):
        text = report.build(lost).read_text()
    assert '"nx":[]' in text.replace(" ", "") and "new data (sample," not in text
    assert "has no map positions" in text and "is not there any more" in text  # the page says why
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "has no map positions" in warned[0] and "is not there any more" in warned[0]
