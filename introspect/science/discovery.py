"""Unsupervised discovery of what a net attends to: cluster the activations in whitened PCA space.

Why not the t-SNE map: the map keeps local neighbourhoods and distorts everything else, so
clusters drawn on it split an attribute by whatever else dominates locally (identity, a second
attribute) and its density-based clusters depend on eps/min_samples in ways no rule without labels
reads well.  Here the map is for looking only; the partition is made in the activations' own
geometry, reduced by PCA and **whitened** (every component scaled to unit variance): the few
high-variance directions (lighting, identity) then no longer drown out the low-variance ones in
which rarer attributes (a mask, a head turn) live.

Pieces, each usable alone:

- `whitened_pca`: the space (scikit-learn's ``PCA(whiten=True)``).
- `Partition`: k-means or Ward in that space, with nearest-centroid `predict` and a softmax
  `predict_proba` that is one linear layer of the activations (`Partition.linear`), so it can be
  grafted into an ONNX net as a Gemm + Softmax.
- `stability_table` / `select_k`: the rule that picks k and the method without labels
  (Hennig's clusterwise Jaccard over subsample refits; see `select_k`).
- `facets`: groups of clusters a person names once ("glasses", whatever the pose and blur);
  a facet is a set of clusters, so its per-image probability is a MatMul of the cluster
  probabilities with a 0/1 membership matrix.
- `identity_scores`: does a cluster hold mostly one or a few people (from the embeddings)?
- `unknown_threshold` / `predict_with_unknown`: rows too far from every centroid are -1.
"""

from __future__ import annotations

import contextlib

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, FastICA
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits  # a scikit-learn dependency

__all__ = [
    "JACCARD_STABLE",
    "METHODS",
    "Partition",
    "clusterwise_jaccard",
    "facet_matrix",
    "facet_proba",
    "facets",
    "identity_scores",
    "predict_with_unknown",
    "select_k",
    "stability_table",
    "unknown_threshold",
    "whitened_pca",
]

#: Hennig (2007): a cluster whose mean Jaccard over refits is >= 0.75 is "stable".
JACCARD_STABLE = 0.75
#: A stable cluster counts for the rule when it holds at least this share of the rows (and 10 rows).
MIN_CLUSTER_SHARE = 0.02
METHODS = ("kmeans", "ward")


def whitened_pca(n_components: int = 50, random_state: int | None = 0) -> PCA:
    """PCA to `n_components`, each scaled to unit variance: rare attributes' directions count."""
    return PCA(n_components=n_components, whiten=True, svd_solver="randomized", random_state=random_state)


def _relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """0..K-1 by decreasing size (ties: lower old id), so labels do not depend on fit order."""
    ids, counts = np.unique(labels, return_counts=True)
    order = ids[np.lexsort((ids, -counts))]
    lut = np.empty(ids.max() + 1, dtype=np.int64)
    lut[order] = np.arange(order.size)
    return lut[labels]


def _ward_tree(Z: np.ndarray) -> np.ndarray:
    return linkage(Z, method="ward")


def _cut(tree: np.ndarray, k: int) -> np.ndarray:
    return _relabel_by_size(fcluster(tree, t=k, criterion="maxclust") - 1)


class Partition(ClusterMixin, BaseEstimator):
    """A flat partition of (whitened) rows into `n_clusters`, with centroids for new rows.

    Parameters
    ----------
    n_clusters : int
        Number of clusters K.
    method : {"kmeans", "ward"}
        k-means (``n_init`` restarts, seeded) or Ward's agglomerative linkage cut at K.
    n_init : int
        k-means restarts.
    random_state : int or None
        Seed of k-means; Ward is deterministic.

    Attributes after fit: ``labels_`` (0..K-1 by decreasing size), ``cluster_centers_`` (K x d
    means of the members), ``weights_`` (cluster shares).  `predict` is the nearest centroid;
    `predict_proba` the softmax of ``-|z - mu_k|^2 / 2 + log w_k`` (an isotropic Gaussian
    mixture in the whitened space), linear in z up to a per-row constant (see `linear`).
    """

    def __init__(self, n_clusters: int = 8, method: str = "kmeans", n_init: int = 4, random_state: int | None = 0):
        self.n_clusters = n_clusters
        self.method = method
        self.n_init = n_init
        self.random_state = random_state

    def fit(self, Z: np.ndarray, y: None = None) -> Partition:
        Z = np.asarray(Z, dtype=np.float64)
        k = int(self.n_clusters)
        if not 1 <= k <= len(Z):
            raise ValueError(f"n_clusters must be in 1..{len(Z)}, got {self.n_clusters!r}")
        if self.method == "kmeans":
            km = KMeans(k, n_init=self.n_init, random_state=self.random_state).fit(Z)
            labels = _relabel_by_size(km.labels_)
        elif self.method == "ward":
            labels = _cut(_ward_tree(Z), k)
        else:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        self.labels_ = labels
        k_found = int(labels.max()) + 1
        self.cluster_centers_ = np.stack([Z[labels == j].mean(axis=0) for j in range(k_found)])
        self.weights_ = np.bincount(labels, minlength=k_found) / len(labels)
        return self

    def _logits(self, Z: np.ndarray) -> np.ndarray:
        Z = np.asarray(Z, dtype=np.float64)
        C = self.cluster_centers_
        return Z @ C.T - 0.5 * (C**2).sum(axis=1) + np.log(self.weights_)

    def predict(self, Z: np.ndarray) -> np.ndarray:
        """Nearest centroid (Euclidean in the whitened space); a block of rows at a time (rows x K x d stays small)."""
        Z, C = np.asarray(Z), self.cluster_centers_
        step = max(1, (1 << 23) // max(C.size, 1))
        return np.concatenate(
            [((Z[a : a + step, None, :] - C[None]) ** 2).sum(axis=2).argmin(axis=1) for a in range(0, len(Z), step)]
            or [np.zeros(0, np.int64)]
        )

    def predict_proba(self, Z: np.ndarray) -> np.ndarray:
        """Cluster probabilities: softmax of the isotropic-Gaussian logits (see class doc)."""
        L = self._logits(Z)
        L -= L.max(axis=1, keepdims=True)
        P = np.exp(L)
        return P / P.sum(axis=1, keepdims=True)

    def linear(self, space: PCA) -> tuple[np.ndarray, np.ndarray]:
        """(W, b) with ``softmax(X @ W + b) == predict_proba(space.transform(X))`` on raw activations.

        Whitening is affine and the Gaussian logits are affine in z (the ``-|z|^2/2`` term is the
        same for every cluster and cancels in the softmax), so the whole space + partition is one
        Gemm: the graft is MatMul, Add, Softmax."""
        scale = space.components_.T / np.sqrt(space.explained_variance_)  # raw -> whitened
        C = self.cluster_centers_
        W = scale @ C.T
        b = -space.mean_ @ W - 0.5 * (C**2).sum(axis=1) + np.log(self.weights_)
        return W, b


# --------------------------------------------------------------------------- stability


def clusterwise_jaccard(reference: np.ndarray, other: np.ndarray, n_reference: int | None = None) -> np.ndarray:
    """Per reference cluster, the best Jaccard with any cluster of `other` (same rows).

    `n_reference`: the reference's cluster count, so a cluster absent from these rows scores 0.
    """
    ka, kb = max(int(reference.max()) + 1, n_reference or 0), int(other.max()) + 1
    inter = np.zeros((ka, kb))
    np.add.at(inter, (reference, other), 1)
    sa, sb = inter.sum(axis=1), inter.sum(axis=0)
    union = sa[:, None] + sb[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        J = np.where(union > 0, inter / union, 0.0)
    return J.max(axis=1)


def stability_table(
    Z: np.ndarray,
    ks: list[int] | tuple[int, ...],
    methods: tuple[str, ...] = METHODS,
    n_boot: int = 3,
    fraction: float = 0.8,
    random_state: int = 0,
    n_init: int = 2,
    threads: int | None = 1,
) -> list[dict]:
    """Every (method, k): how reproducible its clusters are under subsample refits.

    For each of `n_boot` random subsamples (`fraction` of the rows, no replacement) the method is
    refitted and every cluster of the fit on all rows is matched, on the shared rows, to its best
    Jaccard counterpart (Hennig 2007).  Row keys: method, k, ``jaccard`` (per-cluster means over
    refits, a K-list), ``mean_jaccard``, ``stable`` (clusters with mean Jaccard >=
    `JACCARD_STABLE`), ``stable_share`` (rows in those), ``ari`` (mean ARI fit vs refit),
    ``labels`` (the all-rows fit).

    `threads`: BLAS / OpenMP threads inside (None: left as they are).  One by default: the rule's
    many small k-means fits oversubscribe threads on busy cores (bench/rule_threads.py: 56.5 s
    free vs 5.4 s pinned, 10.4x, on 3,000 x 30 rows on a 2-core box at load 7.5; same pick)."""
    with _threads(threads):
        return _stability_table(np.asarray(Z, dtype=np.float64), ks, methods, n_boot, fraction, random_state, n_init)


def _threads(threads: int | None) -> contextlib.AbstractContextManager:
    """BLAS / OpenMP capped at `threads` inside the block (None or 0: left as they are)."""
    return threadpool_limits(int(threads)) if threads else contextlib.nullcontext()


def _stability_table(
    Z: np.ndarray, ks, methods: tuple[str, ...], n_boot: int, fraction: float, random_state: int, n_init: int
) -> list[dict]:
    n = len(Z)
    rng = np.random.default_rng(random_state)
    subs = [np.sort(rng.choice(n, int(round(fraction * n)), replace=False)) for _ in range(n_boot)]
    rows = []
    for method in methods:
        if method == "ward":
            full_tree = _ward_tree(Z)
            sub_trees = [_ward_tree(Z[s]) for s in subs]
        for k in ks:
            if method == "ward":
                ref = _cut(full_tree, k)
                refits = [_cut(t, k) for t in sub_trees]
            else:
                ref = Partition(k, "kmeans", n_init, random_state).fit(Z).labels_
                refits = [
                    Partition(k, "kmeans", n_init, random_state + 1 + b).fit(Z[s]).labels_ for b, s in enumerate(subs)
                ]
            k_ref = int(ref.max()) + 1
            J = np.mean([clusterwise_jaccard(ref[s], r, k_ref) for s, r in zip(subs, refits)], axis=0)
            ari = float(np.mean([adjusted_rand_score(ref[s], r) for s, r in zip(subs, refits)]))
            sizes = np.bincount(ref, minlength=len(J))
            ok = J >= JACCARD_STABLE
            big = sizes >= max(MIN_CLUSTER_SHARE * n, 10)
            rows.append(
                {
                    "method": method,
                    "k": int(k),
                    "jaccard": J.tolist(),
                    "mean_jaccard": float(J.mean()),
                    "stable": int(ok.sum()),
                    "stable_sized": int((ok & big).sum()),
                    "stable_share": float(sizes[ok].sum() / n),
                    "ari": ari,
                    "labels": ref,
                }
            )
    return rows


def _rule_key(row: dict) -> tuple:
    """Most stable clusters of a useful size; ties: more rows in stable clusters, higher ARI, fewer clusters.

    Only clusters holding at least `MIN_CLUSTER_SHARE` of the rows count: at large k, tiny
    clusters of near-duplicates are reproducible too, and counting them would always favour the
    finest partition (measured: four separated blobs went to k = 90 when every stable cluster counted).
    """
    return (row["stable_sized"], row["stable_share"], row["ari"], -row["k"])


def select_k(
    Z: np.ndarray,
    ks: list[int] | tuple[int, ...] = (4, 6, 8, 12, 16, 20, 24, 32, 40),
    methods: tuple[str, ...] = ("kmeans",),
    n_boot: int = 3,
    fraction: float = 0.8,
    random_state: int = 0,
    extend: int = 1,
    threads: int | None = 1,
) -> dict:
    """Pick (method, k) without labels: the partition with the most reproducible clusters.

    Rule: maximise the number of clusters whose mean clusterwise Jaccard over subsample refits
    is >= 0.75 (Hennig's "stable"); ties go to the higher ARI, then to fewer clusters.  Why:
    every stable cluster is one more thing a person can name and the deployed model can learn;
    splitting finer adds clusters only while they stay reproducible, and unstable splits (of a
    continuum, or of noise) lower the count instead of raising it, so the count has an interior
    maximum.  When the pick is the largest k of the grid, the grid is extended (`extend` times,
    by 1.5x steps) and the rule rerun; a pick still at the edge (or at the smallest k) comes
    back with ``boundary=True``, never silently.

    Method: k-means by default.  Measured on four generated sets (bench/discovery.py), k-means'
    best partition beat Ward's on three (Ward won only where a few people form most clusters),
    and Ward must not compete in the same count: its cuts are nested and deterministic, so its
    top splits (e.g. the 4 glasses clusters at k = 4) are trivially stable and won a set where
    its union F1 was far below k-means' (`methods=("kmeans", "ward")` to allow it anyway).

    `threads`: k-means' BLAS / OpenMP threads (1 by default; see `stability_table`).

    Returns {"pick": row, "method", "k", "boundary", "rows": [...], "ks": [...]}."""
    ks = sorted({int(k) for k in ks})
    rows = stability_table(Z, ks, methods, n_boot, fraction, random_state, threads=threads)
    for _ in range(extend):
        top = max(rows, key=_rule_key)
        if top["k"] != ks[-1]:
            break
        more = [int(round(ks[-1] * 1.5 ** (i + 1))) for i in range(2)]
        more = [k for k in more if k < len(Z) // 5]
        if not more:
            break
        rows += stability_table(Z, more, methods, n_boot, fraction, random_state, threads=threads)
        ks += more
    pick = max(rows, key=_rule_key)
    return {
        "pick": pick,
        "method": pick["method"],
        "k": pick["k"],
        "boundary": pick["k"] in (ks[0], ks[-1]),
        "ks": ks,
        "rows": rows,
    }


# --------------------------------------------------------------------------- facets


def _otsu(v: np.ndarray) -> float:
    """The threshold maximising the between-group variance of a 1-D sample (exact 1-D 2-means)."""
    x = np.sort(v)
    n = x.size
    c = np.cumsum(x)
    w = np.arange(1, n)  # rows in the low group
    m_lo, m_hi = c[:-1] / w, (c[-1] - c[:-1]) / (n - w)
    j = int(np.argmax(w * (n - w) * (m_hi - m_lo) ** 2))
    return float((x[j] + x[j + 1]) / 2)


def facets(
    Z: np.ndarray,
    labels: np.ndarray,
    n_facets: int = 10,
    min_share: float = 0.02,
    max_share: float = 0.3,
    min_skew: float = 1.0,
    random_state: int = 0,
) -> dict:
    """Group clusters into facets: independent binary directions, each a set of clusters.

    Attributes are planted independently and are mostly rare, so each is a skewed, non-Gaussian
    direction of the whitened space: independent component analysis recovers such directions.
    Each component (sign fixed so its long tail is positive) splits the rows in two at Otsu's
    threshold (the cut maximising the between-group variance, i.e. 1-D 2-means); a cluster
    belongs to the facet when most of its rows lie on the high side.  Components with |skewness|
    below `min_skew` are skipped: a binary attribute present in a share p of the rows has skewness
    near (1 - 2p) / sqrt(p (1 - p)) along its direction (2.7 at p = 0.1), a Gaussian one 0.
    Facets whose members hold less than `min_share` or more than `max_share` of the rows, or
    duplicate another facet's clusters, are dropped; the rest are ranked by the component's |skewness|.

    A facet is therefore **a set of clusters**; its per-image probability is the sum of its
    members' cluster probabilities, ``P_facet = P_cluster @ M`` with `facet_matrix` M (K x F,
    0/1): one MatMul on the grafted classifier's softmax.

    Returns {"members": [sorted cluster lists], "skew": [...], "directions": F x d (unit)}."""
    Z = np.asarray(Z, dtype=np.float64)
    labels = np.asarray(labels)
    k = int(labels.max()) + 1
    n_comp = min(Z.shape[1], max(n_facets * 2, 10))
    ica = FastICA(n_components=n_comp, whiten="unit-variance", random_state=random_state, max_iter=1000, tol=1e-3)
    S = ica.fit_transform(Z)
    S = (S - S.mean(axis=0)) / S.std(axis=0)
    skew = (S**3).mean(axis=0)
    S *= np.sign(skew)
    sizes = np.bincount(labels, minlength=k)
    found, seen = [], set()
    for c in np.argsort(-np.abs(skew)):
        if abs(skew[c]) < min_skew:  # a near-symmetric component is no rare attribute's direction
            break
        high = S[:, c] > _otsu(S[:, c])
        inside = np.bincount(labels, weights=high, minlength=k) / np.maximum(sizes, 1)
        members = tuple(int(j) for j in np.flatnonzero(inside > 0.5))
        share = sizes[list(members)].sum() / len(labels) if members else 0.0
        if not members or not min_share <= share <= max_share or members in seen:
            continue
        seen.add(members)
        direction = ica.components_[c] / np.linalg.norm(ica.components_[c]) * np.sign(skew[c])
        found.append({"members": list(members), "skew": float(abs(skew[c])), "direction": direction})
        if len(found) == n_facets:
            break
    return {
        "members": [f["members"] for f in found],
        "skew": [f["skew"] for f in found],
        "directions": np.array([f["direction"] for f in found]).reshape(len(found), Z.shape[1]),
    }


def facet_matrix(members: list[list[int]], n_clusters: int) -> np.ndarray:
    """K x F 0/1 matrix: column f marks facet f's clusters (the MatMul of the graft)."""
    M = np.zeros((n_clusters, len(members)), dtype=np.float32)
    for f, m in enumerate(members):
        M[m, f] = 1.0
    return M


def facet_proba(cluster_proba: np.ndarray, members: list[list[int]]) -> np.ndarray:
    """Per-image facet probabilities: the sum of the member clusters' probabilities."""
    return np.asarray(cluster_proba) @ facet_matrix(members, np.asarray(cluster_proba).shape[1])


# --------------------------------------------------------------------------- identity


def identity_scores(embeddings: np.ndarray, labels: np.ndarray, n_neighbors: int = 10) -> list[dict]:
    """Per cluster, how much it is "a few people" rather than an attribute, from the embeddings.

    Two measures, both needing no identity labels:

    - ``cohesion``: mean pairwise cosine of the members' (L2-normalised) face embeddings minus
      the mean pairwise cosine over all rows.  A face-recognition embedding is built to put the
      same person close; an attribute cluster of many people stays near the dataset's baseline.
    - ``knn_lift``: the share of each member's `n_neighbors` nearest embeddings (cosine, all rows)
      that lie inside the cluster, divided by the cluster's share of rows (1 = no more than
      chance; same-person neighbours inside the cluster raise it).
    """
    E = np.asarray(embeddings, dtype=np.float64)
    E = E / np.linalg.norm(E, axis=1, keepdims=True)
    labels = np.asarray(labels)
    n = len(E)
    mean_all = E.mean(axis=0)
    base = (n * (mean_all @ mean_all) - 1.0) / (n - 1)  # mean off-diagonal cosine
    nn = np.empty((n, n_neighbors), dtype=np.int64)
    for s in range(0, n, 2048):  # blockwise: n x n cosines never held at once
        C = E[s : s + 2048] @ E.T
        C[np.arange(C.shape[0]), np.arange(s, s + C.shape[0])] = -np.inf
        nn[s : s + 2048] = np.argpartition(-C, n_neighbors, axis=1)[:, :n_neighbors]
    out = []
    for j in range(int(labels.max()) + 1):
        m = labels == j
        size = int(m.sum())
        if size < 2:
            out.append({"cluster": j, "size": size, "cohesion": float("nan"), "knn_lift": float("nan")})
            continue
        mu = E[m].mean(axis=0)
        within = (size * (mu @ mu) - 1.0) / (size - 1)
        inside = (labels[nn[m]] == j).mean()
        out.append(
            {
                "cluster": j,
                "size": size,
                "cohesion": float(within - base),
                "knn_lift": float(inside / (size / n)),
            }
        )
    return out


# --------------------------------------------------------------------------- unknown


def _score(partition: Partition, Z: np.ndarray, by: str) -> np.ndarray:
    """Higher = more familiar: minus the distance to the nearest centroid, or the top probability."""
    if by == "distance":
        Z = np.asarray(Z, dtype=np.float64)
        C = partition.cluster_centers_
        d2 = (Z**2).sum(axis=1)[:, None] - 2 * Z @ C.T + (C**2).sum(axis=1)[None]
        return -np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    if by == "proba":
        return partition.predict_proba(Z).max(axis=1)
    raise ValueError(f"by must be 'distance' or 'proba', got {by!r}")


def unknown_threshold(partition: Partition, Z_heldout: np.ndarray, q: float = 0.01, by: str = "distance") -> float:
    """The q-quantile of the familiarity score on rows the partition was not fitted on.

    `by="distance"`: minus the whitened distance to the nearest centroid (default: in 50
    whitened dimensions the softmax saturates, so an image far from every cluster still gets a
    top probability near 1 and only distance sees it); `"proba"`: the top cluster probability.
    Below the threshold an image is "unknown": by construction a share q of new images like the
    held-out ones fall there, and images unlike every cluster more often."""
    return float(np.quantile(_score(partition, Z_heldout, by), q))


def predict_with_unknown(partition: Partition, Z: np.ndarray, threshold: float, by: str = "distance") -> np.ndarray:
    """Nearest / most probable cluster, or -1 where the familiarity score is below `threshold`."""
    labels = partition.predict(Z) if by == "distance" else partition.predict_proba(Z).argmax(axis=1)
    labels[_score(partition, Z, by) < threshold] = -1
    return labels


# --------------------------------------------------------------------------- how many components


def signal_components(X: np.ndarray, cap: int, sample: int = 20_000, random_state: int = 0) -> int:
    """Components above the noise floor, at most `cap` (at least 2): the space worth whitening.

    Whitening gives every kept component unit variance, so a component that is only noise would
    weigh as much as one that carries an attribute, and a few dozen of them drown real clusters
    (four separated blobs in 64 dimensions, whitened to 50, split into 8 clusters). Keep the
    singular values above Gavish and Donoho's optimal hard threshold (2014): omega(beta) times the
    median singular value, beta the aspect ratio; computed on a sample of at most `sample` rows.
    """
    if len(X) > sample:  # sampled before the float64 copy: a large subset is never copied whole
        X = np.asarray(X)[np.random.default_rng(random_state).choice(len(X), sample, replace=False)]
    X = np.asarray(X, dtype=np.float64)
    X = X - X.mean(axis=0)
    s = np.linalg.svd(X, compute_uv=False)
    n, d = X.shape
    beta = min(n, d) / max(n, d)
    omega = 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43
    rank = int((s > omega * np.median(s)).sum())
    return int(min(cap, max(2, rank)))


# --------------------------------------------------------------------------- a few people, not an attribute


#: A cluster where this share of member pairs look like the same person is about identity.
SAME_PERSON_PAIRS = 0.1


def same_person_pairs(
    embeddings: np.ndarray, labels: np.ndarray, quantile: float = 0.99, sample: int = 2000, random_state: int = 0
) -> tuple[float, list[dict]]:
    """(threshold, per cluster: the share of member pairs whose embeddings look like one person).

    "Looks like one person": cosine above the `quantile` of random pairs of the whole subset
    (random pairs are almost all different people in a dataset of many), so the threshold is
    calibrated on the net at hand, without identity labels. A cluster of many people with one
    attribute has a share near 1 - `quantile`; one made of a few people, far more, since a
    third of its pairs are one person when three people hold it evenly. At most `sample`
    members per cluster are paired. Validated on generated sets (bench/discovery.py, the
    closing note): flagged at `SAME_PERSON_PAIRS` it finds most clusters whose top three
    identities hold half the images, with some false flags on attributes that make faces look
    alike to the net (dark glasses).
    """
    E = np.asarray(embeddings, dtype=np.float64)
    E = E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
    labels = np.asarray(labels)
    rng = np.random.default_rng(random_state)
    i, j = rng.integers(0, len(E), (2, 20_000))
    keep = i != j
    tau = float(np.quantile((E[i[keep]] * E[j[keep]]).sum(axis=1), quantile)) if keep.any() else 1.0
    out = []
    for c in range(int(labels.max()) + 1):
        m = np.flatnonzero(labels == c)
        if len(m) > sample:
            m = rng.choice(m, sample, replace=False)
        share = float(((E[m] @ E[m].T >= tau).sum() - len(m)) / max(len(m) * (len(m) - 1), 1)) if len(m) > 1 else 0.0
        out.append({"cluster": c, "size": int((labels == c).sum()), "same_person_pairs": share})
    return tau, out


def tree_facets(Z: np.ndarray, labels: np.ndarray, most: int = 10, max_share: float = 0.5) -> dict:
    """Facets as the branches of a Ward tree over the clusters' centroids (in the whitened space).

    A flat partition splits one attribute over several clusters (glasses with the head turned,
    glasses blurred...); clusters that share it sit close in the activations, so they join low in
    a tree of centroids. Every branch of the tree of at least two clusters and at most
    `max_share` of the rows is a candidate; the `most` that live longest (the height where the
    branch joins its parent minus the height where it formed: a group that is tight inside and
    far from the rest, as in HDBSCAN's stability) are the facets, nested ones included. A facet is
    a set of clusters, named once; its per-image probability is the sum of its clusters'
    probabilities (`facet_matrix`). Measured on the demo's subset, 10 facets chosen this way reach
    most of what the best of all branches reaches at k = 24 and 40, and nothing at k = 10, where
    the clusters are already whole attributes (ICA directions split at a threshold matched no
    planted attribute: bench/discovery.py).

    Returns {"members": [sorted cluster lists], "lifetime": [...], "tree": scipy linkage rows}.
    """
    labels = np.asarray(labels)
    k = int(labels.max()) + 1
    if k < 3:
        return {"members": [], "lifetime": [], "tree": []}
    C = np.stack([np.asarray(Z)[labels == j].mean(axis=0) for j in range(k)])
    sizes = np.bincount(labels, minlength=k)
    tree = linkage(C, method="ward")
    members: dict[int, list[int]] = {j: [j] for j in range(k)}
    parent: dict[int, int] = {}
    for i, (a, b, _, _) in enumerate(tree):
        members[k + i] = sorted(members[int(a)] + members[int(b)])
        parent[int(a)] = parent[int(b)] = k + i
    candidates = [
        (float(tree[parent[node] - k, 2] - tree[node - k, 2]), members[node])
        for node in range(k, 2 * k - 1)
        if node in parent and sizes[members[node]].sum() <= max_share * sizes.sum()
    ]
    candidates.sort(key=lambda c: -c[0])
    found = [m for _, m in candidates[:most]]
    heights = [life for life, _ in candidates[:most]]
    return {"members": found, "lifetime": heights, "tree": tree.tolist()}
