"""introspect.science.discovery on synthetic Gaussian blobs: fast, no net."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from introspect.science import discovery


def blobs(k: int, n_per: int = 60, d: int = 8, sep: float = 12.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * sep
    y = np.repeat(np.arange(k), n_per)
    return centers[y] + rng.normal(size=(k * n_per, d)), y


def test_rule_picks_true_k_on_separated_blobs():
    X, _ = blobs(5, n_per=40)
    sel = discovery.select_k(X, ks=(2, 3, 5, 7, 10), n_boot=2)
    assert sel["k"] == 5
    assert not sel["boundary"]
    assert {"method", "k", "stable", "ari", "jaccard", "labels"} <= set(sel["pick"])


def test_boundary_pick_is_flagged():
    X, _ = blobs(8, n_per=30)
    sel = discovery.select_k(X, ks=(2, 4, 8), methods=("kmeans",), n_boot=2, extend=0)
    assert sel["k"] == 8 and sel["boundary"]


def test_boundary_pick_extends_grid():
    X, _ = blobs(12, n_per=30)
    sel = discovery.select_k(X, ks=(2, 4, 8), methods=("kmeans",), n_boot=2, extend=1)
    assert sel["ks"] == [2, 4, 8, 12, 18]
    assert sel["k"] == 12 and not sel["boundary"]


def test_partition_linear_matches_proba_on_raw_activations():
    X, _ = blobs(4, d=12)
    space = discovery.whitened_pca(6).fit(X)
    Z = space.transform(X)
    part = discovery.Partition(4, "kmeans").fit(Z)
    W, b = part.linear(space)
    L = X @ W + b
    P = np.exp(L - L.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(P, part.predict_proba(Z), atol=1e-6)
    assert (part.predict(Z) == part.labels_).mean() > 0.99


def test_ward_partition_sizes_sorted():
    X, _ = blobs(3, n_per=50)
    labels = discovery.Partition(3, "ward").fit(X).labels_
    counts = np.bincount(labels)
    assert len(counts) == 3 and (np.diff(counts) <= 0).all()


def test_facets_group_clusters_sharing_a_direction():
    rng = np.random.default_rng(1)
    n, d = 2000, 8
    a, b = rng.random(n) < 0.1, rng.random(n) < 0.1  # rare, hence skewed, like planted attributes
    X = rng.normal(size=(n, d))
    X[:, 0] += 8 * a
    X[:, 1] += 8 * b
    labels = a.astype(int) * 2 + b.astype(int)  # 4 clusters: every combination
    fac = discovery.facets(X, labels, n_facets=4, random_state=0)
    got = {tuple(m) for m in fac["members"]}
    assert (2, 3) in got  # a = 1
    assert (1, 3) in got  # b = 1
    M = discovery.facet_matrix(fac["members"], 4)
    P = np.eye(4)[labels]
    np.testing.assert_allclose(discovery.facet_proba(P, fac["members"]), P @ M)


def test_identity_measure_high_for_a_tight_cluster():
    rng = np.random.default_rng(2)
    E = rng.normal(size=(600, 32))
    person = rng.normal(size=32)
    E[:100] = person + 0.2 * rng.normal(size=(100, 32))  # cluster 0: one person
    labels = np.repeat(np.arange(6), 100)
    sc = discovery.identity_scores(E, labels)
    coh = [s["cohesion"] for s in sc]
    lift = [s["knn_lift"] for s in sc]
    assert np.argmax(coh) == 0 and coh[0] > 0.5 and max(coh[1:]) < 0.1
    assert lift[0] > 4 and max(lift[1:]) < 2


@pytest.mark.parametrize("by", ["distance", "proba"])
def test_unknown_threshold_flags_far_rows(by):
    X, _ = blobs(4, n_per=200, sep=12.0 if by == "distance" else 1.5)  # proba saturates when far apart
    rng = np.random.default_rng(3)
    idx = rng.permutation(len(X))
    part = discovery.Partition(4).fit(X[idx[:600]])
    thr = discovery.unknown_threshold(part, X[idx[600:]], q=0.05, by=by)
    lab = discovery.predict_with_unknown(part, X[idx[600:]], thr, by=by)
    assert 0.0 < (lab < 0).mean() <= 0.1
    if by == "distance":
        far = discovery.predict_with_unknown(part, X[:5] + 100.0, thr)
        assert (far == -1).all()


def test_clone_get_params_and_determinism():
    p = discovery.Partition(n_clusters=5, method="ward", n_init=2, random_state=7)
    q = clone(p)
    assert q.get_params() == {"n_clusters": 5, "method": "ward", "n_init": 2, "random_state": 7}
    assert isinstance(discovery.whitened_pca(5), type(clone(discovery.whitened_pca(5))))
    X, _ = blobs(4)
    s1 = discovery.select_k(X, ks=(3, 4, 5), methods=("kmeans",), n_boot=2, random_state=3)
    s2 = discovery.select_k(X, ks=(3, 4, 5), methods=("kmeans",), n_boot=2, random_state=3)
    assert (s1["method"], s1["k"]) == (s2["method"], s2["k"])
    np.testing.assert_array_equal(s1["pick"]["labels"], s2["pick"]["labels"])
    a = discovery.Partition(4, random_state=1).fit(X).labels_
    np.testing.assert_array_equal(a, discovery.Partition(4, random_state=1).fit(X).labels_)


def test_bad_method_raises():
    with pytest.raises(ValueError):
        discovery.Partition(2, method="nope").fit(np.zeros((5, 2)))
