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


# --------------------------------------------------------------------------- what the cluster stage uses


def _blobs_in_noise(n_per=150, k=4, d=64, signal=3, seed=0):
    """k separated groups that differ in `signal` dimensions of `d`; the rest is noise."""
    rng = np.random.default_rng(seed)
    centers = np.zeros((k, d))
    centers[:, :signal] = rng.normal(0, 8, (k, signal))
    X = np.concatenate([c + rng.normal(0, 1, (n_per, d)) for c in centers])
    return X, np.repeat(np.arange(k), n_per)


def test_signal_components_keep_what_stands_above_the_noise():
    X, _ = _blobs_in_noise()
    assert 2 <= discovery.signal_components(X, 50) <= 5
    noise = np.random.default_rng(1).normal(size=(600, 64))
    assert discovery.signal_components(noise, 50) == 2  # nothing stands out: the floor
    assert discovery.signal_components(X, 2) == 2  # never more than the cap


def test_whitening_only_the_signal_finds_the_groups():
    """The rule takes the finest reproducible partition: a compact group may come in halves, never mixed."""
    from sklearn.metrics import homogeneity_score

    X, y = _blobs_in_noise(seed=2)
    Z = discovery.whitened_pca(discovery.signal_components(X, 50)).fit_transform(X)
    choice = discovery.select_k(Z, (2, 3, 4, 5, 6, 8), ("kmeans",))
    labels = choice["pick"]["labels"]
    assert choice["k"] >= 4 and homogeneity_score(y, labels) > 0.98
    whitened_all = discovery.whitened_pca(50).fit_transform(X)  # noise whitened as much as signal
    assert homogeneity_score(y, discovery.Partition(4).fit(whitened_all).labels_) < homogeneity_score(
        y, discovery.Partition(4).fit(Z).labels_
    )


def test_tree_facets_group_clusters_that_share_a_direction():
    rng = np.random.default_rng(3)
    # four clusters: two share a large offset along axis 0 ("glasses"), split by axis 1 ("pose")
    centers = np.array([[0, 0], [0, 3], [12, 0], [12, 3]], float)
    Z = np.concatenate([c + rng.normal(0, 0.3, (100, 2)) for c in centers])
    labels = np.repeat(np.arange(4), 100)
    found = discovery.tree_facets(Z, labels, most=4)
    assert [0, 1] in found["members"] and [2, 3] in found["members"]
    assert all(len(m) >= 2 for m in found["members"]) and len(found["tree"]) == 3


def test_same_person_pairs_flag_a_cluster_of_a_few_people():
    rng = np.random.default_rng(4)
    people = rng.normal(size=(2000, 32))  # 2000 people, a few images each, as in a face dataset
    many = people[rng.integers(0, 2000, 1900)] + rng.normal(0, 0.3, (1900, 32))  # an attribute: many people
    few = people[rng.integers(0, 3, 100)] + rng.normal(0, 0.3, (100, 32))  # three people
    E = np.concatenate([many, few])
    labels = np.repeat([0, 1], [1900, 100])
    tau, rows = discovery.same_person_pairs(E, labels)
    assert rows[0]["same_person_pairs"] < discovery.SAME_PERSON_PAIRS <= rows[1]["same_person_pairs"]
    assert -1 <= tau <= 1
