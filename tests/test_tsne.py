"""t-SNE interface: CPU backends keep separated clusters apart, seeds reproduce, parameters map."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from introspect.errors import UserError
from introspect.science import tsne

# Short runs: the checks hold after a few hundred iterations, and the machine is shared. A learning
# rate near N / 12 (auto's floor, 200, spreads 400 points wide and slows scikit-learn's tree 5x).
FAST = tsne.TSNEParams(perplexity=20, n_iter=300, learning_rate=40.0, n_jobs=1, seed=3)


@pytest.fixture(scope="module")
def mixture() -> tuple[np.ndarray, np.ndarray]:
    """400 points of 5 separated, unequal Gaussian clusters in 50-d."""
    rng = np.random.RandomState(0)
    sizes = [160, 100, 70, 40, 30]
    y = np.repeat(np.arange(5), sizes)
    centers = rng.randn(5, 50) * 4
    return (centers[y] + rng.randn(len(y), 50)).astype(np.float32), y


@pytest.fixture(scope="module")
def maps(mixture) -> dict[str, list[tuple[np.ndarray, str]]]:
    """openTSNE twice with the same seed (the reproducibility claim), scikit-learn once."""
    X, _ = mixture
    return {
        "opentsne": [tsne.embed(X, FAST, backend="opentsne") for _ in range(2)],
        "sklearn": [tsne.embed(X, FAST, backend="sklearn")],
    }


def knn_accuracy(Y: np.ndarray, y: np.ndarray) -> float:
    """Held-out 5-NN accuracy on the map: high when clusters stay apart."""
    idx = np.random.RandomState(1).permutation(len(Y))
    train, test = idx[: len(Y) // 2], idx[len(Y) // 2 :]
    return KNeighborsClassifier(5).fit(Y[train], y[train]).score(Y[test], y[test])


@pytest.mark.parametrize("backend", ["opentsne", "sklearn"])
def test_cpu_backends_keep_clusters_apart(maps, mixture, backend):
    Y, used = maps[backend][0]
    assert used == backend
    assert Y.shape == (len(mixture[0]), 2) and Y.dtype == np.float32
    assert knn_accuracy(Y, mixture[1]) > 0.9


def test_opentsne_reproduces_for_a_seed(maps):
    (Y, _), (Y2, _) = maps["opentsne"]
    np.testing.assert_array_equal(Y, Y2)


def test_auto_falls_back_to_opentsne_without_gpu(mixture, monkeypatch, caplog):
    assert tsne.available_backends() == ["opentsne", "sklearn"]  # no cuML / tsnecuda here
    ran = []
    monkeypatch.setattr(tsne, "_run", lambda X, params, backend: ran.append(backend) or np.zeros((len(X), 2)))
    with caplog.at_level(logging.INFO, logger="introspect.science.tsne"):
        Y, used = tsne.embed(mixture[0], FAST)
    assert used == "opentsne" and ran == ["opentsne"]  # the real run is the test above
    assert "t-SNE backend: opentsne (auto)" in caplog.text
    assert Y.shape == (len(mixture[0]), 2) and Y.dtype == np.float32


def test_backend_errors_name_the_available_ones(mixture):
    with pytest.raises(UserError, match="opentsne, sklearn"):
        tsne.embed(mixture[0], FAST, backend="umap")
    with pytest.raises(UserError, match="does not work here.*opentsne"):
        tsne.embed(mixture[0], FAST, backend="tsnecuda")


def test_reference_params_map_onto_every_backend():
    ref = tsne.REFERENCE_PARAMS
    assert (ref.perplexity, ref.n_iter, ref.learning_rate, ref.num_neighbors) == (200, 4000, 2000, 1000)
    o = tsne.backend_kwargs(ref, "opentsne", 342012)
    assert o["estimator"]["early_exaggeration_iter"] + o["estimator"]["n_iter"] == 4000
    assert o["estimator"]["learning_rate"] == 2000 and o["estimator"]["negative_gradient_method"] == "fft"
    assert o["affinities"] == dict(perplexity=200, k_neighbors=1000, n_jobs=-1, random_state=0)
    s = tsne.backend_kwargs(ref, "sklearn", 342012)["estimator"]
    assert (s["max_iter"], s["learning_rate"], s["perplexity"]) == (4000, 500, 200)  # sklearn's unit is 4x
    c = tsne.backend_kwargs(ref, "cuml", 342012)["estimator"]
    assert (c["n_neighbors"], c["max_iter"], c["learning_rate"], c["method"]) == (1000, 4000, 2000, "fft")
    assert c["learning_rate_method"] == "none"
    t = tsne.backend_kwargs(ref, "tsnecuda", 342012)["estimator"]
    assert (t["num_neighbors"], t["perplexity"], t["n_iter"], t["learning_rate"]) == (1000, 200, 4000, 2000)
    with pytest.raises(UserError, match="unknown t-SNE backend"):
        tsne.backend_kwargs(ref, "auto")


def test_defaults_and_auto_learning_rate_mapping():
    p = tsne.TSNEParams()
    o = tsne.backend_kwargs(p, "opentsne", 120000)
    assert o["estimator"]["learning_rate"] == 10000 and o["affinities"]["k_neighbors"] == "auto"
    assert (o["estimator"]["initial_momentum"], o["estimator"]["final_momentum"]) == (0.5, 0.8)
    assert tsne.backend_kwargs(p, "sklearn")["estimator"]["learning_rate"] == "auto"  # the same rule, its unit
    with pytest.raises(ValueError, match="n_samples"):
        tsne.backend_kwargs(p, "opentsne")
    c = tsne.backend_kwargs(p, "cuml", 120000)["estimator"]
    assert c["learning_rate"] == 10000 and c["n_neighbors"] == 90  # N / 12, ceil(3 x 30)
    assert tsne.backend_kwargs(p, "tsnecuda", 1200)["estimator"]["learning_rate"] == 200  # floor of the rule
    assert tsne.backend_kwargs(p, "tsnecuda", 50)["estimator"]["num_neighbors"] == 49  # capped at n - 1


@pytest.mark.parametrize(
    "bad",
    [
        dict(perplexity=0),
        dict(n_iter=100),
        dict(learning_rate="fast"),
        dict(learning_rate=-1.0),
        dict(num_neighbors=-5),
        dict(n_jobs=0),
        dict(n_iter=750.5),
        dict(perplexity="30"),
        dict(seed=None),
    ],
)
def test_params_validated(bad):
    with pytest.raises(UserError):
        tsne.TSNEParams(**bad)


def test_perplexity_error_gives_the_largest_that_works():
    tsne.check_perplexity(91, 30)  # 3 x 30 = 90 = n - 1
    with pytest.raises(UserError, match=r"perplexity <= 33\.0\b"):
        tsne.check_perplexity(100, 40)
    best = tsne.max_perplexity(101)  # 33.33
    tsne.check_perplexity(101, best)
    with pytest.raises(UserError, match="33.33"):
        tsne.check_perplexity(101, best + 0.01)
    tsne.check_perplexity(342012, 200, num_neighbors=1000)
    with pytest.raises(UserError, match="num_neighbors"):
        tsne.check_perplexity(500, 200, num_neighbors=1000)
    with pytest.raises(UserError, match=r"perplexity <= 100\.0"):
        tsne.check_perplexity(5000, 200, num_neighbors=300)
    with pytest.raises(UserError, match=r"perplexity <= 3\.0"):
        tsne.embed(np.random.RandomState(0).randn(10, 3), FAST)


def test_pca_curve_and_reduction():
    rng = np.random.RandomState(0)
    X = (rng.randn(300, 8) @ rng.randn(8, 40) + 0.1 * rng.randn(300, 40)).astype(np.float32)
    Z, curve = tsne.pca(X, 5)
    assert Z.shape == (300, 5) and Z.dtype == np.float32
    assert len(curve) == 40 and curve.sum() <= 1 + 1e-6 and np.all(np.diff(curve) <= 1e-9)
    assert tsne.components_for(curve, 0.8) <= 8
    same, curve0 = tsne.pca(X, 0)
    assert same is X
    np.testing.assert_allclose(curve0, curve, rtol=1e-5)
    wide = rng.randn(30, 100)  # fewer points than features
    _, c = tsne.pca(wide, 10)
    assert len(c) == 30 and c.sum() <= 1 + 1e-6
    with pytest.raises(UserError, match="0 \\(off\\) to 30"):
        tsne.pca(wide, 31)


def test_finite_rows_and_embed_refuses_non_finite():
    X = np.ones((5, 3))
    X[1, 2], X[3, 0] = np.nan, np.inf
    np.testing.assert_array_equal(tsne.finite_rows(X), [True, False, True, False, True])
    with pytest.raises(UserError, match="2 of 5 rows"):
        tsne.embed(X, FAST)


def test_a_small_subset_gets_the_largest_perplexity_it_allows(caplog):
    """A first run on a few dozen faces draws a map (saying so) instead of stopping; a set num_neighbors stays
    the user's explicit choice."""
    p = tsne.TSNEParams(perplexity=30.0)
    with caplog.at_level("WARNING"):
        got = tsne.fit_to_rows(p, 55)
    assert got.perplexity == tsne.max_perplexity(55) == 18.0 and "too large for 55 points" in caplog.text
    tsne.check_perplexity(55, got.perplexity)
    assert tsne.fit_to_rows(p, 91) is p  # 3 x 30 = 90 neighbours: fits
    explicit = tsne.TSNEParams(perplexity=30.0, num_neighbors=90)
    assert tsne.fit_to_rows(explicit, 55) is explicit
