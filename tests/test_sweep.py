"""`introspect sweep`: no-ground-truth scores, the documented rule, and its files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_config
from test_cluster import write_subset

from introspect import cli
from introspect.errors import UserError
from introspect.stages import sweep


@pytest.fixture
def sweep_cfg(tmp_path, tiny_model):
    out = tmp_path / "run"
    out.mkdir()
    X, truth = write_subset(out / "subset.h5")
    cfg = make_config(tmp_path / "l.txt", tmp_path, tiny_model, out)
    cfg["tsne"].update(n_iter=500, pca=20, backend="opentsne")
    # eps 0.3 / 10 finds the 4 groups; 0.01 / 250 finds none (a row, not a crash)
    cfg["sweep"].update(perplexity=[20.0], eps=[0.01, 0.3], min_samples=[10, 250], seeds=2)
    return cfg, X, truth


def test_sweep_recommends_the_setting_that_finds_the_groups(sweep_cfg):
    cfg, X, truth = sweep_cfg
    result = sweep.run(cfg).record
    assert result["recommended"] == {"perplexity": 20.0, "eps": 0.3, "min_samples": 10}
    rows = {(r["eps"], r["min_samples"]): r for r in result["rows"]}
    assert len(rows) == 4 and "error" in rows[0.01, 250]
    good = rows[0.3, 10]
    assert good["clusters"] == 4 and good["stable"] == 4 and good["ari"] > 0.95 and good["accuracy"] > 0.95
    out = cfg["extract"]["out"]
    assert json.load(open(f"{out}/sweep/sweep.json"))["recommended"] == result["recommended"]
    assert open(f"{out}/sweep/contact.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    text = sweep.summary(result)
    assert "eps = 0.3" in text and "min_samples = 10" in text and "perplexity = 20" in text


def test_matched_clusters_counts_clusters_found_again():
    a = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, -1])
    b = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0, -1])  # cluster 0 again, 1 and 2 merged
    assert sweep.matched_clusters(a, b) == 2  # 1 -> Jaccard 4/6, 2 -> 2/6
    assert sweep.matched_clusters(a, a) == 3
    assert sweep.stability([a, a]) == (1.0, 3.0)


def test_rule_prefers_stable_then_ari_and_respects_limits():
    limits = dict(max_clusters=10, max_noise=0.5, min_accuracy=0.9)
    base = dict(clusters=5, noise=0.1, accuracy=0.95, silhouette=0.2, ari=0.8, stable=4.0)
    rows = [
        {**base, "name": "fewer stable", "stable": 3.0, "ari": 0.99},
        {**base, "name": "pick"},
        {**base, "name": "lower ari", "ari": 0.7},
        {**base, "name": "too many", "clusters": 11, "stable": 9.0},
        {**base, "name": "noisy", "noise": 0.6, "stable": 9.0},
        {**base, "name": "unlearnable", "accuracy": 0.5, "stable": 9.0},
        {"name": "failed", "error": "DBSCAN found no cluster"},
    ]
    assert sweep.recommend(rows, limits)["name"] == "pick"
    assert sweep.recommend(rows[3:], limits) is None


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("eps", [], "eps"),
        ("min_samples", [2.5], "whole numbers"),
        ("perplexity", [-1], "positive"),
        ("seeds", 1, "2 t-SNE seeds"),
    ],
)
def test_bad_grid_is_one_clear_error(sweep_cfg, key, value, match):
    cfg, _, _ = sweep_cfg
    cfg["sweep"][key] = value
    with pytest.raises(UserError, match=match):
        sweep.run(cfg)


def test_sweep_cli_one_line_errors(tmp_path, capsys):
    assert cli.main(["sweep", "--out", str(tmp_path / "nothing")]) == 2
    assert "make extract" in capsys.readouterr().err
    assert (
        cli.main(["sweep", "--out", str(tmp_path), "--set", "cluster.space=map", "--set", "cluster.method=hdbscan"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "knn-dbscan or dbscan" in err[0]


def test_evaluate_sweep_scores_every_row_against_planted_attributes(sweep_cfg, tmp_path, capsys):
    """The groups are planted attributes here: the recommended row finds them, the failed row is absent."""
    import csv

    from introspect.stages import evaluate
    from introspect.synth import COLUMNS

    cfg, X, truth = sweep_cfg
    sweep.run(cfg)
    n_lines = 3 * len(X)  # write_subset's index is 0, 3, 6...
    rows = [[f"{i}.jpg", i, "none", "none", "frontal", "0", "0", "0", "none"] for i in range(n_lines)]
    for line, group in zip(range(0, n_lines, 3), truth):
        if group == 1:
            rows[line][2] = "sun"
        elif group == 2:
            rows[line][4] = "left"
        elif group == 3:
            rows[line][7] = "1"
    lst = tmp_path / "synth.txt"
    with open(tmp_path / "synth.attrs.csv", "w", newline="") as f:
        csv.writer(f).writerows([COLUMNS, *rows])
    cfg["data"]["list"] = str(lst)
    scored = evaluate.run_sweep(cfg)
    assert len(scored) == 1  # rows that found no cluster (or one) have no labels
    pick = [r for r in scored if r["recommended"]]
    assert len(pick) == 1 and pick[0]["nmi"] > 0.9
    assert pick[0]["f1_union"]["glasses"] > 0.95 and pick[0]["f1_union"]["pose"] > 0.95
    assert cli.main(["evaluate", "--sweep", "--out", cfg["extract"]["out"], "--list", str(lst)]) == 0
    assert "* the sweep's choice" in capsys.readouterr().out
