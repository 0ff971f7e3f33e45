"""The cluster stage end to end on a generated subset: files, figures, and the ONNX classifier."""

from __future__ import annotations

import json

import h5py
import numpy as np
import onnxruntime as ort
import pytest
from conftest import make_config

from introspect import cli
from introspect.errors import UserError
from introspect.science import placement
from introspect.stages import cluster


def write_subset(path, n=600, d=64, k=4, seed=0, nan_rows=0):
    """A subset.h5 whose activations form k well separated groups (one big, like the reference's)."""
    rng = np.random.default_rng(seed)
    sizes = [n // 2] + [n // (2 * (k - 1))] * (k - 1)
    centers = rng.normal(0, 6, (k, d))
    X = np.concatenate([c + rng.normal(0, 1, (s, d)) for c, s in zip(centers, sizes)]).astype(np.float32)
    truth = np.repeat(np.arange(k), sizes)
    order = rng.permutation(len(X))
    X, truth = X[order], truth[order]
    X[:nan_rows] = np.nan
    with h5py.File(path, "w") as f:
        f["prefacen"] = X
        f["facen"] = X[:, :8]
        f["index"] = np.arange(len(X), dtype=np.int64) * 3
    return X, truth


@pytest.fixture
def run_cfg(tmp_path, tiny_model):
    out = tmp_path / "run"
    out.mkdir()
    X, truth = write_subset(out / "subset.h5")
    cfg = make_config(tmp_path / "l.txt", tmp_path, tiny_model, out)
    cfg["tsne"].update(perplexity=20.0, n_iter=500, pca=20, backend="opentsne")
    cfg["cluster"].update(space="map", settings="fixed", eps=0.3, min_samples=10)  # the reference's way
    return cfg, X, truth


def test_by_default_clusters_are_found_in_the_pca_space_with_k_chosen_by_the_rule(run_cfg):
    """The groups are found and never mixed; the rule may split the big one (it is reproducible), no more."""
    from sklearn.metrics import homogeneity_score

    cfg, X, truth = run_cfg
    cfg["cluster"].update(space="pca", settings="auto")
    m = cluster.run(cfg).metrics
    with h5py.File(f"{cfg['extract']['out']}/clusters.h5") as f:
        label = f["label"][:]
    assert homogeneity_score(truth, label) > 0.98
    d = m["discovery"]
    assert d["space"] == "pca" and 4 <= d["k"] <= 6 and not d["boundary"] and len(d["table"]) >= 4
    assert m["unknown"] is None or 0 < m["unknown"]["threshold"] < 1
    assert isinstance(m["facets"], list) and all(len(f["clusters"]) >= 2 for f in m["facets"])
    assert len(m["identity"]) == d["k"] and all("flagged" in r for r in m["identity"])


def test_a_pick_at_the_edge_of_the_grid_extends_the_grid(run_cfg):
    cfg, X, truth = run_cfg
    cfg["cluster"].update(space="pca", settings="auto", k_grid=[2, 3])
    d = cluster.run(cfg).metrics["discovery"]
    assert len(d["ks"]) > 2 and d["k"] >= 4  # 3 was the grid's edge: the rule looked further


def test_cluster_writes_map_labels_classifier_and_metrics(run_cfg):
    from sklearn.metrics import adjusted_rand_score

    cfg, X, truth = run_cfg
    m = cluster.run(cfg).metrics
    out = cfg["extract"]["out"]
    with h5py.File(f"{out}/clusters.h5") as f:
        Y, index, label = f["tsne"][:], f["index"][:], f["label"][:]
        assert Y.shape == (len(X), 2) and np.isfinite(Y).all()
        assert np.array_equal(index, np.arange(len(X)) * 3)
        assert len(f["pca_curve"]) > 0
        mean, comps, rows = f["map_pca_mean"][:], f["map_pca_components"][:], f["map_pca_rows"][:]
    assert rows.shape == (len(X), comps.shape[0]) and comps.shape[1] == X.shape[1] == mean.shape[0]
    np.testing.assert_allclose(placement.reduce(X, mean, comps), rows, atol=1e-3)  # new rows land in the same space
    assert adjusted_rand_score(truth, label) > 0.95
    assert m["clusters"] == 4 and sum(m["sizes"]) == len(X) - m["noise"]
    assert m["classifier"]["accuracy"] > 0.95
    assert json.load(open(f"{out}/metrics.json"))["clusters"] == 4
    sess = ort.InferenceSession(f"{out}/classifier.onnx", providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: X})[0].ravel()
    assert (got == label).mean() > 0.99
    assert m["onnx_check"]["label_mismatches"] == 0 and m["onnx_check"]["max_abs_diff"] < 1e-4


def test_nan_rows_are_left_out(run_cfg, tmp_path):
    cfg, _, _ = run_cfg
    X, _ = write_subset(tmp_path / "run" / "subset.h5", nan_rows=5)
    m = cluster.run(cfg).metrics
    assert m["rows"] == len(X) - 5


def test_perplexity_too_large_is_lowered_saying_so_unless_neighbours_are_set(run_cfg, caplog):
    cfg, _, _ = run_cfg
    cfg["tsne"]["perplexity"] = 500.0
    cfg["tsne"]["num_neighbors"] = 1000  # the user's explicit neighbours: one clear error, nothing changed
    with pytest.raises(UserError, match="num_neighbors"):
        cluster.run(cfg)
    cfg["tsne"]["num_neighbors"] = 0
    cfg["cluster"]["views"] = ["center"]
    with caplog.at_level("WARNING"):
        m = cluster.run(cfg).metrics
    assert "too large for 600 points" in caplog.text and m["tsne"]["perplexity"] == 199.66


def test_no_subset_is_one_line(tmp_path, capsys):
    assert cli.main(["cluster", "--out", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "make extract" in err[0]
