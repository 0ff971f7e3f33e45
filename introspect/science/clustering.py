"""Clusters on the 2-D t-SNE map: the reference's KNN-DBSCAN, and DBSCAN / HDBSCAN / OPTICS to compare.

Every method z-scores the map first (t-SNE's scale is arbitrary; the reference's eps=0.05 is
in z-units), numbers clusters 0..K-1 by decreasing size, and refuses a useless result (no
cluster, or a single one) with advice on which knob to turn. The estimators follow
scikit-learn's conventions, so `clone`, `get_params` and `set_params` work.

Errors: like scikit-learn, everything here raises `ValueError` on bad input or parameters. A
setting that finds no cluster, or a single one, on the given map raises `NoClusters` (a
`ValueError`), whose message says which knob to turn, so that a caller trying many settings
(the sweep) can catch exactly that and keep the others as mistakes.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, clone
from sklearn.cluster import DBSCAN, HDBSCAN, OPTICS
from sklearn.neighbors import KNeighborsClassifier
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from ..errors import UserError, refuse_unless

NOISE = -1


class NoClusters(ValueError):
    """The setting finds no cluster, or a single one, on this map; the message says which knob to turn.

    Raised too when a neighbour count (min_samples, min_cluster_size) exceeds the number of points,
    which leaves every point noise.
    """


# --------------------------------------------------------------------------- shared rules


def zscore_fit(X: np.ndarray, zscore: bool) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) of the map; a flat axis keeps scale 1 rather than dividing by zero."""
    if not zscore:
        return np.zeros(X.shape[1]), np.ones(X.shape[1])
    scale = X.std(axis=0)
    return X.mean(axis=0), np.where(scale > 0, scale, 1.0)


def renumber_by_size(labels: np.ndarray, max_id: int = NOISE) -> np.ndarray:
    """Map from the given cluster ids to 0..K-1 by decreasing size (ties: smaller id first); noise stays -1.

    Returned as a lookup array indexed by `label + 1`, so noise (-1) maps through index 0. It
    covers the ids up to the larger of `labels.max()` and `max_id`; an id absent from `labels`
    maps to noise (so other labels over a wider id range, e.g. DBSCAN's before the classifier
    dropped some clusters, can go through the same lookup).
    """
    ids, counts = np.unique(labels[labels != NOISE], return_counts=True)
    order = ids[np.lexsort((ids, -counts))]
    lookup = np.full(max(int(labels.max(initial=NOISE)), int(max_id)) + 2, NOISE, dtype=np.int64)
    lookup[order + 1] = np.arange(len(order))
    return lookup


def check_clusters(labels: np.ndarray, what: str, looser: str, stricter: str) -> None:
    """No cluster, or one, is not an answer: say which way to move the parameters."""
    k = len(np.unique(labels[labels != NOISE]))
    if k == 0:
        raise NoClusters(f"{what} found no cluster (every point is noise): {looser}")
    if k == 1:
        raise NoClusters(f"{what} found a single cluster: {stricter}")


def check_min_samples(value: int | float | None, n: int, name: str, where: str) -> None:
    """A neighbour count above the number of points can never be reached: name the largest that can."""
    if value is not None and isinstance(value, (int, np.integer)) and value > n:
        raise NoClusters(f"{name}={value} is larger than the {n} points {where}: use {name} <= {n}")


# --------------------------------------------------------------------------- KNN-DBSCAN


class KNNDBSCAN(ClusterMixin, BaseEstimator):
    """The reference's KNN-DBSCAN: DBSCAN on a random part of the z-scored map, a 5-NN classifier labels all.

    DBSCAN builds every point's eps-neighbourhood list; on a t-SNE map, dense regions make these
    lists long, and their total grows with the number of points times the density, i.e. with n²
    for a given map. Fitting on a fraction s of the points cuts it by s² and the classifier
    puts every point (noise included) into a cluster, and gives `predict` for new points.

    min_samples and the subsample go together: a point's neighbour count within eps is
    proportional to the fraction sampled, so min_samples on a fraction s means the same density
    threshold as min_samples / s on all points: the reference's 120 on a random half (seed 42) is
    240 on the full map. Likewise, when the number of points on the map changes (a bigger or
    smaller subset of the data) the density per z-unit changes with it: scale min_samples with N
    to keep the same threshold (e.g. 120 for 342,012 points -> about 35 for 100,000), or scale
    eps with 1 / sqrt(N) and keep min_samples.

    Parameters
    ----------
    eps : float, default=0.05
        DBSCAN's neighbourhood radius, in z-units of the map (in the map's own units with
        `zscore=False`).
    min_samples : int, default=120
        DBSCAN's neighbour count for a core point, counted on the subsample, the point itself
        included. At most the number of points in the subsample.
    subsample : float in (0, 1], default=0.5
        Fraction of the points DBSCAN sees; 1.0 = all of them.
    n_neighbors : int, default=5
        Neighbours the classifier votes with (fewer if DBSCAN leaves fewer core points).
    random_state : int, RandomState instance or None, default=42
        Seeds the subsample: `RandomState(random_state).permutation(n)[:int(n * subsample)]`.
    zscore : bool, default=True
        Z-score the map's axes before clustering (the reference's eps is in z-units).
    n_jobs : int or None, default=None
        Parallel jobs of DBSCAN and of the classifier.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of every point, 0..K-1 by decreasing size (ties: DBSCAN's order); never noise.
    n_clusters_ : int
        K, the number of clusters.
    mean_, scale_ : ndarray of shape (n_features,)
        The z-scoring of the map (zeros and ones with `zscore=False`); a flat axis has scale 1.
    subsample_indices_ : ndarray of shape (int(n_samples * subsample),)
        The points DBSCAN saw, in the order it saw them.
    dbscan_labels_ : ndarray of shape (int(n_samples * subsample),)
        DBSCAN's labels of those points in the numbering of `labels_`; -1 for DBSCAN's noise and
        for the points of a small DBSCAN cluster the classifier never predicts (outvoted even on
        its own points by a big neighbour: it labels nothing, so it is no cluster).
    knn_ : KNeighborsClassifier
        Fitted on the core points of the clusters kept, with DBSCAN's ids as classes.
    label_map_ : ndarray of shape (n_clusters_,)
        The label of each of `knn_.classes_`.
    n_features_in_ : int
        Number of columns of the map (2 for a t-SNE map).

    Raises
    ------
    NoClusters
        From `fit`, when DBSCAN finds no cluster, or a single one (also after dropping the
        clusters the classifier never predicts), or when min_samples exceeds the subsample.
    ValueError
        From `fit`, on an invalid parameter or input (NaN, too few points).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.RandomState(0)
    >>> X = np.concatenate([rng.randn(200, 2), rng.randn(100, 2) + 8])
    >>> km = KNNDBSCAN(eps=0.3, min_samples=5).fit(X)
    >>> km.n_clusters_, np.bincount(km.labels_).tolist()
    (2, [200, 100])
    >>> km.predict([[8.0, 8.0], [0.0, 0.0]]).tolist()
    [1, 0]
    """

    def __init__(
        self,
        eps: float = 0.05,
        min_samples: int = 120,
        subsample: float = 0.5,
        n_neighbors: int = 5,
        random_state: int | None = 42,
        zscore: bool = True,
        n_jobs: int | None = None,
    ) -> None:
        self.eps = eps
        self.min_samples = min_samples
        self.subsample = subsample
        self.n_neighbors = n_neighbors
        self.random_state = random_state
        self.zscore = zscore
        self.n_jobs = n_jobs

    def _validate(self, n: int) -> int:
        if not isinstance(self.subsample, numbers.Real) or not 0 < self.subsample <= 1:
            raise ValueError(f"subsample must be in (0, 1], not {self.subsample}; the reference used 0.5")
        if not isinstance(self.eps, numbers.Real) or not self.eps > 0:
            raise ValueError(f"eps must be > 0, not {self.eps}; the reference used 0.05 (z-units)")
        if not isinstance(self.min_samples, numbers.Integral) or self.min_samples < 1:
            raise ValueError(f"min_samples must be a whole number >= 1, not {self.min_samples}")
        if not isinstance(self.n_neighbors, numbers.Integral) or self.n_neighbors < 1:
            raise ValueError(f"n_neighbors must be a whole number >= 1, not {self.n_neighbors}")
        m = int(n * self.subsample)
        if m < 2:
            raise ValueError(
                f"a subsample of {self.subsample} of {n} points leaves {m}; raise subsample or give more points"
            )
        check_min_samples(int(self.min_samples), m, "min_samples", f"in the subsample ({self.subsample} of {n})")
        return m

    def fit(self, X: np.ndarray, y: None = None) -> KNNDBSCAN:
        """Cluster X; every point gets a cluster (labels_).

        Raises NoClusters when DBSCAN finds no cluster or a single one, ValueError on bad input.
        """
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        m = self._validate(len(X))
        self.mean_, self.scale_ = zscore_fit(X, self.zscore)
        Z = (X - self.mean_) / self.scale_
        idx = check_random_state(self.random_state).permutation(len(X))[:m]
        raw = DBSCAN(eps=self.eps, min_samples=int(self.min_samples), n_jobs=self.n_jobs).fit_predict(Z[idx])
        looser = f"lower min_samples (now {self.min_samples}) or raise eps (now {self.eps})"
        stricter = f"raise min_samples (now {self.min_samples}) or lower eps (now {self.eps})"
        check_clusters(raw, "DBSCAN", looser, stricter)
        core = raw != NOISE
        while True:
            knn = KNeighborsClassifier(n_neighbors=min(self.n_neighbors, int(core.sum())), n_jobs=self.n_jobs)
            knn.fit(Z[idx][core], raw[core])
            first = knn.predict(Z)
            # A DBSCAN cluster of a few points beside a big one can be outvoted everywhere, even
            # on its own points: it labels nothing, so it is no cluster. Refit without it.
            unseen = np.setdiff1d(knn.classes_, first)
            if not unseen.size:
                break
            core &= ~np.isin(raw, unseen)
        # Dropping outvoted clusters can leave one: as useless as DBSCAN finding one.
        check_clusters(first, "DBSCAN and its classifier", looser, stricter)
        # Number clusters by their final size; the map from the classifier's classes keeps
        # predict(X) identical to labels_ (relabelling and refitting could flip 5-NN ties).
        # The lookup spans all of DBSCAN's ids, dropped ones included (they map to noise): a
        # dropped id can be larger than every kept one.
        lookup = renumber_by_size(first, max_id=int(raw.max()))
        self.knn_ = knn
        self.label_map_ = lookup[knn.classes_ + 1]
        self.labels_ = lookup[first + 1]
        self.n_clusters_ = len(knn.classes_)
        self.subsample_indices_ = idx
        self.dbscan_labels_ = lookup[raw + 1]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Cluster of each new point (z-scored with the fitted map's mean and scale)."""
        check_is_fitted(self, "knn_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        Z = (X - self.mean_) / self.scale_
        proba_cols = np.searchsorted(self.knn_.classes_, self.knn_.predict(Z))
        return self.label_map_[proba_cols]


# --------------------------------------------------------------------------- DBSCAN, HDBSCAN, OPTICS


class ZScoreCluster(ClusterMixin, BaseEstimator):
    """A scikit-learn clusterer run on the z-scored map, with introspect's numbering and error rules.

    Noise stays -1 (DBSCAN, HDBSCAN and OPTICS have no predict; points they leave out are
    left out).

    Parameters
    ----------
    estimator : estimator with fit_predict, or None, default=None
        The clusterer; cloned at fit, never fitted itself. None: DBSCAN(eps=0.05,
        min_samples=240), the reference's density threshold on all points of the map.
    zscore : bool, default=True
        Z-score the map's axes before clustering (eps is then in z-units).

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of every point, 0..K-1 by decreasing size (ties: the estimator's order); -1 noise.
    n_clusters_ : int
        K, the number of clusters (noise not counted).
    mean_, scale_ : ndarray of shape (n_features,)
        The z-scoring of the map (zeros and ones with `zscore=False`); a flat axis has scale 1.
    estimator_ : estimator
        The fitted clone of `estimator`.
    n_features_in_ : int
        Number of columns of the map.

    Raises
    ------
    NoClusters
        From `fit`, when the estimator finds no cluster or a single one, or when its
        min_samples or min_cluster_size exceeds the number of points.
    ValueError
        From `fit`, on invalid input (NaN, fewer than 2 points) or estimator parameters.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.cluster import DBSCAN
    >>> rng = np.random.RandomState(0)
    >>> X = np.concatenate([rng.randn(200, 2), rng.randn(100, 2) + 8])
    >>> zc = ZScoreCluster(DBSCAN(eps=0.3, min_samples=5)).fit(X)
    >>> zc.n_clusters_, np.bincount(zc.labels_ + 1).tolist()  # noise, cluster 0, cluster 1
    (2, [1, 199, 100])
    """

    def __init__(self, estimator: BaseEstimator | None = None, zscore: bool = True) -> None:
        self.estimator = estimator
        self.zscore = zscore

    def fit(self, X: np.ndarray, y: None = None) -> ZScoreCluster:
        """Cluster X; noise stays -1. Raises NoClusters when there is no cluster or a single one."""
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        est = clone(self.estimator if self.estimator is not None else DBSCAN(eps=0.05, min_samples=240))
        name, looser, stricter = _advice(est)
        p = est.get_params()
        for key in ("min_samples", "min_cluster_size"):
            check_min_samples(p.get(key), len(X), key, "on the map")
        self.mean_, self.scale_ = zscore_fit(X, self.zscore)
        raw = est.fit_predict((X - self.mean_) / self.scale_)
        check_clusters(raw, name, looser, stricter)
        self.labels_ = renumber_by_size(raw)[raw + 1]
        self.n_clusters_ = int(self.labels_.max()) + 1
        self.estimator_ = est
        return self


def _advice(est: BaseEstimator) -> tuple[str, str, str]:
    """(name, how to get more clusters, how to split one cluster) for an estimator's parameters."""
    p = est.get_params()
    if isinstance(est, DBSCAN):
        return (
            "DBSCAN",
            f"lower min_samples (now {p['min_samples']}) or raise eps (now {p['eps']})",
            f"raise min_samples (now {p['min_samples']}) or lower eps (now {p['eps']})",
        )
    if isinstance(est, HDBSCAN):
        return (
            "HDBSCAN",
            f"lower min_cluster_size (now {p['min_cluster_size']}) or min_samples (now {p['min_samples']})",
            f"lower min_cluster_size (now {p['min_cluster_size']}) or set max_cluster_size",
        )
    if isinstance(est, OPTICS):
        return (
            "OPTICS",
            f"lower min_samples (now {p['min_samples']}) or xi (now {p['xi']})",
            f"lower xi (now {p['xi']}) or min_cluster_size (now {p['min_cluster_size']})",
        )
    name = type(est).__name__
    return name, f"change {name}'s parameters", f"change {name}'s parameters"


# --------------------------------------------------------------------------- by name

#: Starting points on a z-scored map of ~300k points (the reference's scale); tune from there.
DEFAULTS: dict[str, dict] = {
    "knn-dbscan": {},  # the reference's own: eps 0.05, min_samples 120 on a random half (seed 42)
    "dbscan": dict(eps=0.05, min_samples=240),  # the same density threshold on all points
    "hdbscan": dict(min_cluster_size=500, copy=True),
    "optics": dict(min_samples=240, xi=0.05, min_cluster_size=500),
}
_CLASSES = {"dbscan": DBSCAN, "hdbscan": HDBSCAN, "optics": OPTICS}


def make_clusterer(method: str = "knn-dbscan", **params) -> BaseEstimator:
    """The clusterer for `method` (knn-dbscan | dbscan | hdbscan | optics), z-scoring the map first.

    params override DEFAULTS[method]; `zscore=False` skips z-scoring. Only knn-dbscan labels
    every point and can predict; dbscan, hdbscan and optics leave noise at -1. HDBSCAN and
    OPTICS are the reference's suggested improvement (no single eps for clusters of different
    density); OPTICS is slow on hundreds of thousands of points (try `max_eps`).
    """
    if method not in DEFAULTS:
        raise ValueError(f"unknown clustering method {method!r}; choose one of {', '.join(DEFAULTS)}")
    if method == "knn-dbscan":
        valid = KNNDBSCAN().get_params()
        _check_keys(method, params, valid)
        return KNNDBSCAN(**params)
    zscore = params.pop("zscore", True)
    cls = _CLASSES[method]
    _check_keys(method, params, cls().get_params())
    return ZScoreCluster(cls(**{**DEFAULTS[method], **params}), zscore=zscore)


def _check_keys(method: str, params: dict, valid: dict) -> None:
    unknown = sorted(set(params) - set(valid) - {"zscore"})
    if unknown:
        raise ValueError(
            f"{method} has no parameter {', '.join(unknown)}; it takes {', '.join(sorted(set(valid) | {'zscore'}))}"
        )


#: Where the clusters are found: the activations' whitened PCA space, or the reference's t-SNE map.
SPACES = ("pca", "map")
#: Methods per space; "auto" lets the rule choose (pca) or is the reference's KNN-DBSCAN (map).
PCA_METHODS = ("kmeans", "ward")
#: The views `cluster.views` may name (science/views.py).
VIEW_NAMES = ("center", "mean", "noid")


@dataclass(frozen=True)
class ClusterSettings:
    """The pipeline's [cluster] as checked values: a mistake is one line before t-SNE runs, not after.

    `space` "pca" partitions the whitened PCA space of the activations (`science.discovery`);
    "map" clusters the z-scored t-SNE map, the reference's way. `settings` "auto" lets a rule
    choose without labels (pca: method and k by stability; map: the sweep's recommendation);
    "fixed" takes the keys as given.
    """

    space: str = "pca"
    settings: str = "auto"
    method: str = "auto"
    k: int = 0
    k_grid: tuple[int, ...] = (2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40)
    components: int = 50
    refits: int = 3
    facets: int = 10
    unknown: float = 0.01
    eps: float = 0.05
    min_samples: int = 120
    subsample: float = 0.5
    n_neighbors: int = 5
    min_cluster_size: int = 500
    seed: int = 42
    views: tuple[str, ...] = ("center", "mean", "noid")
    same_person: int = 10
    rule_rows: int = 50_000
    noid_rows: int = 50_000

    def __post_init__(self) -> None:
        methods = ("auto", *PCA_METHODS) if self.space == "pca" else ("auto", *DEFAULTS)
        checks = [
            (self.space in SPACES, f"space = {self.space!r} is not one of: {', '.join(SPACES)}"),
            (self.settings in ("auto", "fixed"), f"settings = {self.settings!r} is not one of: auto, fixed"),
            (
                self.method in methods,
                f"method = {self.method!r} is not one of {', '.join(methods)} (space {self.space})",
            ),
            (self.k >= 0 and self.k != 1, f"k = {self.k} must be 0 (the rule chooses) or at least 2"),
            (
                self.settings == "auto" or self.space == "map" or (self.k >= 2 and self.method != "auto"),
                "settings = 'fixed' in the pca space needs cluster.k >= 2 and cluster.method kmeans or ward",
            ),
            (len(self.k_grid) > 0 and min(self.k_grid) >= 2, f"k_grid = {list(self.k_grid)}: numbers of clusters >= 2"),
            (self.components >= 2, f"components = {self.components} must be at least 2"),
            (self.refits >= 2, f"refits = {self.refits} must be at least 2 (stability compares refits)"),
            (self.facets >= 0, f"facets = {self.facets} must be at least 0 (0: none)"),
            (0 <= self.unknown < 0.5, f"unknown = {self.unknown} must be in [0, 0.5) (a share; 0: off)"),
            (self.eps > 0, f"eps = {self.eps} must be > 0 (z-units of the map, e.g. 0.05)"),
            (self.min_samples >= 1, f"min_samples = {self.min_samples} must be at least 1"),
            (0 < self.subsample <= 1, f"subsample = {self.subsample} must be in (0, 1]"),
            (self.n_neighbors >= 1, f"n_neighbors = {self.n_neighbors} must be at least 1"),
            (self.min_cluster_size >= 2, f"min_cluster_size = {self.min_cluster_size} must be at least 2"),
            (0 <= self.seed < 2**32, f"seed = {self.seed} must be in 0 .. 2**32 - 1"),
            (
                len(self.views) > 0 and self.views[0] == "center" and len(set(self.views)) == len(self.views),
                f"views = {list(self.views)} must start with 'center' (the reference's view) and name each view once",
            ),
            (
                set(self.views) <= set(VIEW_NAMES),
                f"views = {list(self.views)}: each must be one of {', '.join(VIEW_NAMES)}",
            ),
            (1 <= self.same_person <= 100, f"same_person = {self.same_person} must be in 1 .. 100"),
            (self.rule_rows == 0 or self.rule_rows >= 100, f"rule_rows = {self.rule_rows}: 0 (every row) or >= 100"),
            (self.noid_rows == 0 or self.noid_rows >= 100, f"noid_rows = {self.noid_rows}: 0 (every row) or >= 100"),
        ]
        refuse_unless("cluster", checks)

    @classmethod
    def from_config(cls, c: dict) -> ClusterSettings:
        values = {f.name: c[f.name] for f in fields(cls)}
        grid = values["k_grid"]
        if not all(isinstance(k, int) and not isinstance(k, bool) for k in grid):
            raise UserError(f"cluster.k_grid = {grid!r}: give whole numbers of clusters, e.g. [4, 8, 16]")
        values["k_grid"] = tuple(grid)
        views = values["views"]
        if not isinstance(views, list | tuple) or not all(isinstance(v, str) for v in views):
            raise UserError(f'cluster.views = {views!r}: give a list of view names, e.g. ["center", "mean"]')
        values["views"] = tuple(views)
        return cls(**values)

    @property
    def map_method(self) -> str:
        return "knn-dbscan" if self.method == "auto" else self.method

    def check_rows(self, n: int) -> None:
        """Settings that cannot work on `n` points, said before t-SNE runs."""
        if self.space == "pca" and self.settings == "fixed" and self.k > n // 2:
            raise UserError(f"cluster.k = {self.k} is too many clusters for {n} points; lower it")
        if self.space == "pca" and self.settings == "auto" and min(self.k_grid) > n // 5:
            raise UserError(f"cluster.k_grid {list(self.k_grid)} asks for too many clusters for {n} points")
        if self.space == "map" and self.map_method in ("knn-dbscan", "dbscan"):
            seen = n * (self.subsample if self.map_method == "knn-dbscan" else 1)
            if self.min_samples > seen:
                raise UserError(
                    f"cluster.min_samples = {self.min_samples} is more than the {int(seen)} points DBSCAN sees; "
                    "lower it (it scales with the subset: see `introspect sweep`)"
                )

    def estimator(self) -> BaseEstimator:
        """The configured map clusterer; keys a method does not take are not passed to it."""
        method = self.map_method
        if method == "knn-dbscan":
            params = dict(
                eps=self.eps,
                min_samples=self.min_samples,
                subsample=self.subsample,
                n_neighbors=self.n_neighbors,
                random_state=self.seed,
            )
        elif method == "dbscan":
            params = dict(eps=self.eps, min_samples=self.min_samples)
        elif method == "hdbscan":
            params = dict(min_cluster_size=self.min_cluster_size, min_samples=self.min_samples)
        else:
            params = dict(min_samples=self.min_samples, min_cluster_size=self.min_cluster_size)
        return make_clusterer(method, **params)
