"""The subset rule: `extract.fraction = "auto"` keeps at least `extract.min_subset` lines; a number is exact."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import REPO, extract_interrupted, make_config
from test_sources import faces  # noqa: F401  (30 images as a .rec and as tar shards)

from introspect import cli, config
from introspect.engine import stream
from introspect.engine.stream import StreamSettings, subset_threshold
from introspect.errors import UserError
from introspect.stages import extract

SEED = 2463426724


def _count(lines: int, threshold: float, seed: int = SEED) -> int:
    return int(stream.subset_mask(lines, threshold, seed).sum())


def test_threshold_keeps_at_least_the_minimum_and_the_reference_subset():
    ref = stream.subset_mask(10_000, 0.02, SEED)
    for least in (500, 1234, 9999):
        t = subset_threshold(10_000, 0.02, SEED, least)
        got = stream.subset_mask(10_000, t, SEED)
        assert got.sum() == least  # exactly: doubles do not tie
        assert (got >= ref).all()  # the reference's lines, then the next smallest draws
        assert t == subset_threshold(10_000, 0.02, SEED, least, block=777)  # however the draws are read
        assert subset_threshold(10_000, t, SEED, least) == t  # applying the rule twice changes nothing
    assert subset_threshold(10_000, 0.02, SEED + 1, 500) != subset_threshold(10_000, 0.02, SEED, 500)


def test_threshold_is_the_fraction_when_it_keeps_enough_or_the_whole_short_list():
    assert subset_threshold(10_000, 0.02, SEED, 0) == 0.02  # min_subset 0: the reference's rule
    assert _count(10_000, 0.02) > 150
    assert subset_threshold(10_000, 0.02, SEED, 150) == 0.02  # already enough: exactly the fraction
    assert subset_threshold(10_000, 0.02, SEED, 150, block=64) == 0.02
    assert subset_threshold(216, 0.02, SEED, 2000) == 1.0  # the 216 faces: every one
    assert subset_threshold(2000, 0.02, SEED, 2000) == 1.0


def test_auto_fraction_and_an_explicit_one():
    cfg = config.load(None)
    assert cfg["extract"]["fraction"] == "auto" and cfg["extract"]["min_subset"] == 2000
    s = StreamSettings.from_config(cfg["extract"])
    assert (s.fraction, s.min_subset) == (stream.AUTO_FRACTION, 2000)
    assert s.for_list(216).fraction == 1.0
    ref = StreamSettings.from_config(config.load(REPO / "pipelines" / "reference.toml")["extract"])
    assert (ref.fraction, ref.min_subset) == (0.02, 0)  # an explicit number: exactly that share
    assert ref.for_list(216).fraction == 0.02
    for overrides in ({"extract.fraction": 0.02}, {"extract.fraction": config.from_text("extract.fraction", "0.02")}):
        s = StreamSettings.from_config(config.load(None, overrides)["extract"])
        assert (s.fraction, s.min_subset) == (0.02, 0)
    auto = config.load(None, {"extract.fraction": config.from_text("extract.fraction", "auto")})
    assert StreamSettings.from_config(auto["extract"]).min_subset == 2000
    for bad in ("most", 0, 1.5):
        with pytest.raises(UserError, match="extract.fraction"):
            StreamSettings.from_config(config.load(None, {"extract.fraction": bad})["extract"])
    with pytest.raises(UserError, match="extract.min_subset"):
        StreamSettings.from_config(config.load(None, {"extract.min_subset": -1})["extract"])


def _index(path) -> np.ndarray:
    with h5py.File(path) as f:
        return f["index"][:]


def test_a_short_list_is_subset_whole_and_recorded(dataset, tiny_model, tmp_path):
    lst, root, _ = dataset  # 120 images: 2 % would be 2 or 3
    cfg = make_config(lst, root, tiny_model, tmp_path / "out", fraction="auto")
    extract.run(cfg, progress=False)
    np.testing.assert_array_equal(_index(tmp_path / "out" / "subset.h5"), np.arange(120))
    attrs = dict(h5py.File(tmp_path / "out" / "subset.h5").attrs)
    assert attrs["fraction"] == 1.0 and attrs["fraction_setting"] == "auto" and attrs["min_subset"] == 2000


def test_at_least_min_subset_lines_and_the_reference_ones(dataset, tiny_model, tmp_path):
    lst, root, _ = dataset
    cfg = make_config(lst, root, tiny_model, tmp_path / "out", fraction="auto", min_subset=30, full=False)
    extract.run(cfg, progress=False)
    got = _index(tmp_path / "out" / "subset.h5")
    assert len(got) == 30 and set(np.flatnonzero(stream.subset_mask(120, 0.02, SEED))) <= set(got.tolist())
    t = h5py.File(tmp_path / "out" / "subset.h5").attrs["fraction"]
    np.testing.assert_array_equal(got, np.flatnonzero(stream.subset_mask(120, t, SEED)))  # the recorded threshold


def test_a_long_list_keeps_the_fraction_exactly(dataset, tiny_model, tmp_path):
    lst, root, rel = dataset
    lines = [rel[i % len(rel)] for i in range(3000)]  # a long list of the same few files: only the subset is run
    lst.write_text("".join(p + "\n" for p in lines))
    cfg = make_config(lst, root, tiny_model, tmp_path / "out", fraction="auto", min_subset=20, full=False)
    extract.run(cfg, progress=False)
    np.testing.assert_array_equal(
        _index(tmp_path / "out" / "subset.h5"), np.flatnonzero(stream.subset_mask(3000, 0.02, SEED))
    )
    assert h5py.File(tmp_path / "out" / "subset.h5").attrs["fraction"] == 0.02


def test_the_reference_settings_give_the_reference_subset(dataset, tiny_model, tmp_path):
    lst, root, _ = dataset
    ref = config.load(REPO / "pipelines" / "reference.toml")
    cfg = make_config(lst, root, tiny_model, tmp_path / "out", full=False)
    cfg["extract"].update(fraction=ref["extract"]["fraction"], seed=ref["extract"]["seed"])
    extract.run(cfg, progress=False)  # min_subset stays 2000: an explicit fraction ignores it
    want = np.flatnonzero(np.random.RandomState(2463426724).random(120) < 0.02)  # the reference's own rule
    np.testing.assert_array_equal(_index(tmp_path / "out" / "subset.h5"), want)


def test_a_resume_does_not_mix_two_subsets(dataset, tiny_model, tmp_path, monkeypatch):
    lst, root, _ = dataset
    out = tmp_path / "out"
    cfg = make_config(lst, root, tiny_model, out, fraction="auto", min_subset=30)
    extract_interrupted(cfg, monkeypatch)
    other = make_config(lst, root, tiny_model, out, fraction="auto", min_subset=40)  # another threshold
    with pytest.raises(UserError, match="fraction"):
        extract.run(other, progress=False)
    assert extract.run(cfg, progress=False).resumed_chunks > 0  # the same rule resumes
    with pytest.raises(UserError, match="fraction"):
        extract.run(make_config(lst, root, tiny_model, out, fraction=0.02), progress=False)


def test_cli_fraction_is_exact_and_auto_is_the_default(dataset, tiny_model, tmp_path):
    lst, root, _ = dataset
    base = ["extract", "-q", "--model", str(tiny_model), "--list", str(lst), "--root", str(root)]
    base += ["--batch-size", "16", "--chunk-size", "32", "--no-full"]
    assert cli.main([*base, "--out", str(tmp_path / "a"), "--fraction", "0.2"]) == 0
    want = np.flatnonzero(stream.subset_mask(120, 0.2, SEED))
    np.testing.assert_array_equal(_index(tmp_path / "a" / "subset.h5"), want)
    assert cli.main([*base, "--out", str(tmp_path / "b"), "--set", "extract.min_subset=50"]) == 0
    assert len(_index(tmp_path / "b" / "subset.h5")) == 50
    assert cli.main([*base, "--out", str(tmp_path / "c"), "--fraction", "auto"]) == 0
    assert len(_index(tmp_path / "c" / "subset.h5")) == 120


@pytest.mark.parametrize("fmt, root", [("recordio", "train.rec"), ("tar", "shards")])
def test_every_image_of_a_container_counts_too(faces, tmp_path, tiny_model, fmt, root):  # noqa: F811
    tmp, _, _ = faces
    cfg = make_config("", tmp / root, tiny_model, tmp_path / fmt, fraction="auto", min_subset=20, full=False)
    cfg["data"]["format"] = fmt  # list = "": the container's keys, counted once enumerated
    extract.run(cfg, progress=False)
    t = h5py.File(tmp_path / fmt / "subset.h5").attrs["fraction"]
    want = np.flatnonzero(stream.subset_mask(30, t, SEED))
    assert len(want) == 20 and np.array_equal(_index(tmp_path / fmt / "subset.h5"), want)
