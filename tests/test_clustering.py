"""Clustering the map: KNN-DBSCAN finds known blobs, predicts, reproduces; errors say what to change."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import adjusted_rand_score

from introspect.science.clustering import (
    DEFAULTS,
    KNNDBSCAN,
    NoClusters,
    ZScoreCluster,
    make_clusterer,
    renumber_by_size,
)

CENTERS = np.array([[0, 0], [6, 0], [0, 6], [6, 6], [3, 10]])
SIZES = [1500, 600, 400, 250, 150]  # one big cluster, like the reference's map
STDS = [1.0, 0.6, 0.5, 0.4, 0.3]  # unequal densities


def blobs(seed: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    y = np.repeat(np.arange(len(SIZES)), (np.array(SIZES) * scale).astype(int))
    return CENTERS[y] + np.array(STDS)[y, None] * rng.randn(len(y), 2), y


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return blobs(0)


def fitted(X: np.ndarray, **params) -> KNNDBSCAN:
    return KNNDBSCAN(**{"eps": 0.1, "min_samples": 10, **params}).fit(X)


def test_params_round_trip_through_clone():
    m = KNNDBSCAN(eps=0.2, min_samples=7, subsample=0.3, n_jobs=1)
    assert m.get_params() == dict(
        eps=0.2, min_samples=7, subsample=0.3, n_neighbors=5, random_state=42, zscore=True, n_jobs=1
    )
    assert KNNDBSCAN().get_params()["min_samples"] == 120 and KNNDBSCAN().get_params()["eps"] == 0.05
    c = clone(m)
    assert c is not m and c.get_params() == m.get_params()
    assert c.set_params(min_samples=9) is c and c.min_samples == 9 and m.min_samples == 7
    z = clone(make_clusterer("hdbscan", min_cluster_size=30))
    assert z.get_params()["estimator__min_cluster_size"] == 30


def test_finds_the_blobs_and_labels_every_point(data):
    X, y = data
    m = fitted(X)
    assert m.n_clusters_ == 5 and m.labels_.shape == (len(X),) and m.labels_.min() == 0
    assert adjusted_rand_score(y, m.labels_) > 0.9
    sizes = np.bincount(m.labels_)
    assert np.all(np.diff(sizes) <= 0)  # 0 is the largest
    assert len(m.subsample_indices_) == len(X) // 2 and np.all(m.scale_ > 0)


def test_predict_agrees_with_fit_and_labels_new_points(data):
    X, y = data
    m = fitted(X)
    np.testing.assert_array_equal(m.predict(X), m.labels_)
    assert np.array_equal(m.fit_predict(X), m.labels_)
    Xn, yn = blobs(1, scale=0.4)
    assert adjusted_rand_score(yn, m.predict(Xn)) > 0.9
    # the same blob gets the same id as in the fitted labels
    for k in range(5):
        assert np.bincount(m.predict(Xn[yn == k])).argmax() == np.bincount(m.labels_[y == k]).argmax()
    with pytest.raises(ValueError):
        m.predict(X[:, :1])


def test_reproducible_for_a_seed(data):
    X, _ = data
    a, b = fitted(X), fitted(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.subsample_indices_, b.subsample_indices_)
    c = fitted(X, random_state=7)
    assert not np.array_equal(a.subsample_indices_, c.subsample_indices_)
    assert adjusted_rand_score(a.labels_, c.labels_) > 0.9


def test_min_samples_scales_with_the_subsample(data):
    """10 on a half is the density threshold of 20 on all points."""
    X, _ = data
    half, full = fitted(X), fitted(X, subsample=1.0, min_samples=20)
    assert adjusted_rand_score(half.labels_, full.labels_) > 0.9


def test_errors_say_what_to_change(data):
    X, _ = data
    with pytest.raises(NoClusters, match=r"no cluster.*lower min_samples \(now 50\) or raise eps \(now 0.01\)"):
        fitted(X, eps=0.01, min_samples=50)
    with pytest.raises(NoClusters, match=r"single cluster: raise min_samples \(now 5\) or lower eps \(now 2.0\)"):
        fitted(X, eps=2.0, min_samples=5)
    with pytest.raises(NoClusters, match=r"min_samples=2000 .* use min_samples <= 1450"):
        fitted(X, min_samples=2000)
    with pytest.raises(ValueError, match="subsample"):
        fitted(X, subsample=0)
    with pytest.raises(ValueError, match="knn-dbscan, dbscan, hdbscan, optics"):
        make_clusterer("kmeans")
    with pytest.raises(ValueError, match="no parameter epsilon"):
        make_clusterer("dbscan", epsilon=0.1)
    with pytest.raises(NoClusters, match=r"DBSCAN found a single cluster.*raise min_samples \(now 5\)"):
        make_clusterer("dbscan", eps=3.0, min_samples=5).fit(X)
    with pytest.raises(NoClusters, match=r"min_cluster_size=500 .* <= 300"):
        make_clusterer("hdbscan").fit(X[:300])


@pytest.mark.parametrize(
    "method, params",
    [  # 0.3 x the points: eps 0.1 / sqrt(0.3) keeps the density threshold
        ("knn-dbscan", dict(eps=0.18, min_samples=10)),
        ("dbscan", dict(eps=0.18, min_samples=20)),
        ("hdbscan", dict(min_cluster_size=40)),
        ("optics", dict(min_samples=10, min_cluster_size=40)),
    ],
)
def test_make_clusterer_each_method(method, params):
    X, y = blobs(2, scale=0.3)  # small: OPTICS is slow
    c = make_clusterer(method, **params)
    labels = c.fit_predict(X)
    assert isinstance(c, KNNDBSCAN if method == "knn-dbscan" else ZScoreCluster)
    keep = labels >= 0  # HDBSCAN / OPTICS / DBSCAN leave noise at -1
    assert keep.mean() > 0.8
    assert adjusted_rand_score(y[keep], labels[keep]) > 0.9
    assert np.all(np.diff(np.bincount(labels[keep])) <= 0)
    assert set(DEFAULTS) == {"knn-dbscan", "dbscan", "hdbscan", "optics"}


def test_zscore_makes_the_map_scale_irrelevant(data):
    X, _ = data
    a = fitted(X)
    b = fitted(X * 250.0 + 40.0)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    with pytest.raises(NoClusters, match="no cluster"):
        fitted(X * 250.0, zscore=False)


def test_renumber_by_size():
    labels = np.array([2, 2, -1, 0, 1, 1, 1, 0, 2, 3])
    lookup = renumber_by_size(labels)
    np.testing.assert_array_equal(lookup[labels + 1], [1, 1, -1, 2, 0, 0, 0, 2, 1, 3])


def test_knn_dbscan_drops_a_cluster_the_knn_never_predicts():
    """A DBSCAN pair beside a big cluster is outvoted 3 to 2 on its own points: no cluster, no crash."""
    from introspect.science.clustering import KNNDBSCAN

    rng = np.random.default_rng(0)
    big = rng.uniform(-1, 1, (400, 2)) * 0.3
    pair = np.array([[0.34, 0.0], [0.345, 0.0]])  # each other's neighbours, just beyond eps of the big one
    X = np.concatenate([big, pair, rng.uniform(5, 6, (100, 2))])
    est = KNNDBSCAN(eps=0.02, min_samples=2, subsample=1.0, n_neighbors=5, zscore=False).fit(X)
    raw_clusters = len(np.unique(est.dbscan_labels_[est.dbscan_labels_ >= 0]))
    assert est.n_clusters_ == len(np.unique(est.labels_)) == len(est.knn_.classes_)
    assert np.array_equal(est.predict(X), est.labels_)
    assert raw_clusters >= est.n_clusters_
