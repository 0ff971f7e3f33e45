"""Tests for introspect.evaluate: scoring a clustering against the planted ground truth."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from introspect.errors import UserError
from introspect.science.planted import (
    best_cluster,
    best_union,
    binary_targets,
    chance_f1,
    evaluate,
    format_table,
    group_folds,
    probe_auc,
    probe_f1,
    probe_features,
    probe_scores,
    read_attrs,
)
from introspect.synth import COLUMNS, attrs_path, synthesize

N = 400
SUN, LEFT, RIGHT = 10, 11, 12  # cluster ids that isolate glasses=sun, pose=left, pose=right


def _write_csv(path: Path, columns: dict[str, list]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows(zip(*(columns[c] for c in COLUMNS)))
    return path


def _planted(n: int = N) -> dict[str, list]:
    """Attributes on fixed row ranges (disjoint where clusters must isolate them), shuffled."""
    col = {
        "glasses": ["none"] * n,
        "mask": ["none"] * n,
        "pose": ["frontal"] * n,
        "dark": ["0"] * n,
        "gray": ["0"] * n,
        "blur": ["0"] * n,
        "occluder": ["none"] * n,
    }
    for name, value, rows in [
        ("glasses", "sun", range(0, 30)),
        ("pose", "left", range(30, 60)),
        ("pose", "right", range(60, 90)),
        ("mask", "medical", range(100, 140)),
        ("dark", "1", range(140, 170)),
        ("gray", "1", range(170, 200)),
        ("glasses", "clear", range(200, 260)),
        ("blur", "1", range(260, 290)),
        ("occluder", "hand", range(290, 292)),
    ]:
        for i in rows:
            col[name][i] = value
    order = np.random.default_rng(1).permutation(n)
    col = {k: [v[i] for i in order] for k, v in col.items()}
    col["path"] = [f"{i // 100:03d}/{i:06d}.jpg" for i in range(n)]
    col["identity"] = np.random.default_rng(2).integers(0, 80, n).tolist()
    return col


def _labels(col: dict[str, list]) -> np.ndarray:
    """A clustering with one cluster for sun glasses, one per turn side, the rest at random (some noise)."""
    glasses, pose = np.array(col["glasses"]), np.array(col["pose"])
    labels = np.random.default_rng(3).integers(-1, 5, len(glasses))
    labels[glasses == "sun"] = SUN
    labels[pose == "left"] = LEFT
    labels[pose == "right"] = RIGHT
    return labels


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, dict[str, list]]:
    col = _planted()
    return _write_csv(tmp_path / "synth.attrs.csv", col), col


# --------------------------------------------------------------------------- read_attrs


def test_read_attrs_picks_the_requested_rows(planted):
    path, col = planted
    for index in ([0, 5, 6, 399], [399, 0, 5, 5], []):
        got = read_attrs(path, np.array(index, dtype=np.int64))
        assert set(got) == set(COLUMNS)
        assert got["path"].tolist() == [col["path"][i] for i in index]
        assert got["identity"].dtype == np.int64
        assert got["identity"].tolist() == [col["identity"][i] for i in index]
        assert got["pose"].tolist() == [col["pose"][i] for i in index]


def test_read_attrs_reads_what_synth_writes(tmp_path):
    lst = tmp_path / "lists" / "synth.txt"
    synthesize(24, 5, tmp_path / "img", lst, workers=1, progress=False)
    with open(attrs_path(lst), newline="") as f:
        rows = list(csv.DictReader(f))
    got = read_attrs(attrs_path(lst), np.arange(3, 24, 4))
    for j, i in enumerate(range(3, 24, 4)):
        assert {c: str(got[c][j]) for c in COLUMNS} == rows[i]
    assert lst.read_text().splitlines()[7] == got["path"][1]


def test_read_attrs_mistakes(planted, tmp_path):
    path, _ = planted
    with pytest.raises(UserError, match="introspect synth"):
        read_attrs(tmp_path / "real.attrs.csv", np.arange(3))
    with pytest.raises(UserError, match="another list"):
        read_attrs(path, np.array([3, N]))
    with pytest.raises(UserError, match="negative"):
        read_attrs(path, np.array([-1, 3]))
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="not a ground-truth CSV"):
        read_attrs(tmp_path / "other.csv", np.arange(1))


# --------------------------------------------------------------------------- targets and F1


def test_binary_targets_names_and_skips(planted):
    path, col = planted
    attrs = read_attrs(path, np.arange(N))
    every = binary_targets(attrs)
    assert list(every) == [
        "glasses",
        "glasses=clear",
        "glasses=sun",
        "mask=medical",
        "pose",
        "pose=left",
        "pose=right",
        "dark",
        "gray",
        "blur",
        "occluder",
        "occluder=hand",
        "occluder=phone",
        "occluder=mic",
        "occluder=bar",
    ]
    assert every["pose"].sum() == 60 and every["glasses"].sum() == 90 and every["glasses=sun"].sum() == 30
    assert np.array_equal(every["dark"], np.array(col["dark"]) == "1")
    kept = binary_targets(attrs, min_positives=5)
    assert not any(k.startswith("occluder") for k in kept) and "pose" in kept


def test_isolating_cluster_scores_one_and_chance_is_far_lower(planted):
    _, col = planted
    y = np.array(col["glasses"]) == "sun"
    labels = _labels(col)
    assert best_cluster(labels, y) == (1.0, SUN)
    assert best_union(labels, y) == (1.0, [SUN])
    one, union = chance_f1(labels, y, seed=0, shuffles=5)
    assert one < 0.3 and union < 0.3


def test_union_of_two_clusters_makes_pose(planted):
    _, col = planted
    y = np.array(col["pose"]) != "frontal"
    labels = _labels(col)
    f1_one, cluster = best_cluster(labels, y)
    assert cluster in (LEFT, RIGHT) and f1_one == pytest.approx(2 * 30 / (30 + 60))
    f1_union, union = best_union(labels, y)
    assert f1_union == 1.0 and sorted(union) == [LEFT, RIGHT]
    assert max(chance_f1(labels, y, seed=4)) < 0.4


def test_noise_is_never_a_cluster():
    labels = np.array([-1, -1, -1, 0, 0, 1])
    y = np.array([1, 1, 1, 0, 1, 0], dtype=bool)
    assert best_cluster(labels, y) == (pytest.approx(2 * 1 / (2 + 4)), 0)
    assert best_union(labels, y)[1] == [0]
    assert best_cluster(np.full(6, -1), y) == (0.0, None)


def test_greedy_union_is_the_best_of_all_unions():
    rng = np.random.default_rng(0)
    for _ in range(30):
        labels = rng.integers(-1, 7, 80)
        y = rng.random(80) < rng.uniform(0.05, 0.6)
        if not y.any():
            continue
        ids = np.unique(labels[labels >= 0])
        best = max(
            2 * (y & np.isin(labels, s)).sum() / (np.isin(labels, s).sum() + y.sum())
            for r in range(1, len(ids) + 1)
            for s in itertools.combinations(ids, r)
        )
        f1, union = best_union(labels, y)
        assert f1 == pytest.approx(best)
        chosen = np.isin(labels, union)
        assert f1 == pytest.approx(2 * (y & chosen).sum() / (chosen.sum() + y.sum()))


# --------------------------------------------------------------------------- probe


def test_probe_auc_finds_linear_code_and_not_noise():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 100, N)
    y = rng.random(N) < 0.3
    folds = group_folds(groups, 5, seed=0)
    X = rng.standard_normal((N, 32)).astype(np.float32)
    assert 0.3 < probe_auc(probe_features(X), y, folds) < 0.7
    assert probe_f1(y, probe_scores(probe_features(X), y, folds)) < 0.5
    X[:, 0] += 3.0 * y
    assert probe_auc(probe_features(X), y, folds) > 0.95
    assert probe_f1(y, probe_scores(probe_features(X), y, folds)) > 0.8
    assert probe_auc(probe_features(X), np.zeros(N, bool), folds) is None


def test_probe_folds_are_grouped_by_identity():
    """X encodes identity only and the attribute is constant per identity: only a probe that
    has seen the person can "predict" it, so grouped folds must sit at chance while row folds
    (every row its own group) score high -- the check would be meaningless if both were high."""
    rng = np.random.default_rng(0)
    ids, per, dim = 200, 3, 256  # enough identities that the grouped AUC sits near 0.5 (0.41-0.60 over 8 seeds)
    groups = np.repeat(np.arange(ids), per)
    y = np.repeat(rng.permutation(np.arange(ids) % 2 == 0), per)
    X = (np.repeat(rng.standard_normal((ids, dim)), per, axis=0) + 0.3 * rng.standard_normal((ids * per, dim))).astype(
        np.float32
    )
    Z = probe_features(X, dims=None)
    folds = group_folds(groups, 5, seed=0)
    assert len(folds) == 5
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
    assert np.array_equal(np.sort(np.concatenate([t for _, t in folds])), np.arange(ids * per))
    assert probe_auc(Z, y, group_folds(np.arange(ids * per), 5, seed=0)) > 0.9
    assert 0.35 < probe_auc(Z, y, folds) < 0.65


def test_probe_features_reduce_only_wide_inputs():
    X = np.random.default_rng(0).standard_normal((300, 200)).astype(np.float32)
    assert probe_features(X, dims=16).shape == (300, 16)
    assert probe_features(X, dims=None).shape == (300, 200)
    assert group_folds(np.zeros(10), 5) == []


# --------------------------------------------------------------------------- evaluate


def test_evaluate_end_to_end(planted):
    path, col = planted
    rng = np.random.default_rng(5)
    labels = _labels(col)
    X = rng.standard_normal((N, 48)).astype(np.float32)
    X[:, 0] += 4.0 * (np.array(col["glasses"]) == "sun")
    result = evaluate(np.arange(N), labels, X, path, seed=0)
    json.dumps(result)
    by = {r["target"]: r for r in result["targets"]}
    assert {s["target"] for s in result["skipped"]} == {
        "occluder",
        "occluder=hand",
        "occluder=phone",
        "occluder=mic",
        "occluder=bar",
    }
    assert by["glasses=sun"]["f1_cluster"] == 1.0 and by["glasses=sun"]["cluster"] == SUN
    assert by["glasses=sun"]["f1_cluster_chance"] < 0.3
    assert by["pose"]["f1_union"] == 1.0 and by["pose"]["f1_cluster"] < 0.7
    assert by["glasses=sun"]["probe_auc"] > 0.95 and by["glasses=sun"]["probe_f1"] > 0.8
    assert 0.25 < by["dark"]["probe_auc"] < 0.75 and by["dark"]["probe_f1"] < 0.4
    assert result["probe"] == {"rows": N, "dims": 48, "folds": 5, "grouped_by": "identity"}
    assert result["clusters"] == 8 and result["noise"] == int((labels < 0).sum())
    for what in ("combination", "identity"):
        a = result["agreement"][what]
        assert 0.0 <= a["nmi"] <= 1.0 and -0.5 <= a["ari"] <= 1.0

    table = format_table(result)
    for r in result["targets"] + result["skipped"]:
        assert r["target"] in table
    assert "NMI" in table and "ARI" in table
    assert max(map(len, table.splitlines())) <= 100


def test_probe_rows_cap(planted):
    path, col = planted
    X = np.random.default_rng(0).standard_normal((N, 8)).astype(np.float32)
    result = evaluate(np.arange(N), _labels(col), X, path, probe_rows=150)
    assert result["probe"]["rows"] == 150
    assert all(r["probe_auc"] is None or 0.0 <= r["probe_auc"] <= 1.0 for r in result["targets"])
    assert evaluate(np.arange(N), _labels(col), X, path, probe_rows=150) == result  # seeded


def test_labels_equal_to_the_combination_agree_perfectly(planted):
    path, col = planted
    combo = ["|".join(v) for v in zip(*(col[c] for c in COLUMNS[2:]))]
    labels = np.unique(combo, return_inverse=True)[1]
    result = evaluate(np.arange(N), labels, None, path)
    assert result["agreement"]["combination"] == {"nmi": pytest.approx(1.0), "ari": pytest.approx(1.0)}
    assert result["probe"] is None and all(r["probe_auc"] is None for r in result["targets"])
    assert "AUC" in format_table(result)


def test_evaluate_on_a_subset_of_the_list(planted):
    path, col = planted
    index = np.arange(0, N, 2)
    labels = _labels(col)[index]
    result = evaluate(index, labels, None, path)
    assert {r["target"]: r["positives"] for r in result["targets"]}["pose=left"] == sum(
        col["pose"][i] == "left" for i in index
    )


def test_evaluate_mistakes(planted):
    path, _ = planted
    with pytest.raises(UserError, match="labels"):
        evaluate(np.arange(N), np.zeros(N - 1, int), None, path)
    with pytest.raises(UserError, match="X must be"):
        evaluate(np.arange(N), np.zeros(N, int), np.zeros((N, 3, 3)), path)
    with pytest.raises(UserError, match="labels"):
        evaluate(np.arange(N), np.zeros(N), None, path)


# --------------------------------------------------------------------------- the stage


def _write_run(out: Path, col: dict[str, list], drop_from_clusters: int = 0) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    out.mkdir(parents=True, exist_ok=True)
    index = np.arange(0, N, 2, dtype=np.int64)  # every other line was in the subset
    X = np.random.default_rng(5).standard_normal((len(index), 48)).astype(np.float32)
    X[:, 0] += 4.0 * (np.array(col["glasses"])[index] == "sun")
    with h5py.File(out / "subset.h5", "w") as f:
        f["prefacen"], f["index"] = X, index
    keep = slice(drop_from_clusters, None)  # clusters.h5 leaves NaN rows out
    with h5py.File(out / "clusters.h5", "w") as f:
        f["index"], f["label"] = index[keep], _labels(col)[index][keep]
    return index[keep], X[keep]


def test_evaluate_stage_reads_the_run_and_writes_json(planted, tmp_path, capsys):
    from introspect import cli

    path, col = planted
    out = tmp_path / "run"
    index, X = _write_run(out, col, drop_from_clusters=3)
    assert cli.main(["evaluate", "--out", str(out), "--list", str(tmp_path / "synth.txt")]) == 0
    printed = capsys.readouterr().out
    assert "glasses=sun" in printed and "F1 sup" in printed
    saved = json.loads((out / "evaluation.json").read_text())
    direct = evaluate(index, _labels(col)[index], X, path)
    assert saved["targets"] == json.loads(json.dumps(direct["targets"]))
    assert saved["rows"] == N // 2 - 3


def test_evaluate_stage_mistakes_are_one_line(planted, tmp_path, capsys):
    from introspect import cli

    _, col = planted
    out = tmp_path / "run"
    assert cli.main(["evaluate", "--out", str(out)]) == 2
    assert "make cluster" in capsys.readouterr().err
    _write_run(out, col)
    assert cli.main(["evaluate", "--out", str(out), "--attrs", str(tmp_path / "none.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ground truth" in err[0]
