"""Identity: a person's other photos among all extracted rows, and what a row is without them.

Why: people are the main structure of real face activations (issue 17), so clusters of the raw
activations are mostly people.  Subtracting from a row's feature the mean feature of the *same
person's other photos* (found by the face embedding among ALL rows of ``full.h5``, so a 2 % subset
still finds them) leaves what differs between this photo and the person's others: light, glasses,
a mask.  Copies of the same photo (re-encoded, cropped, overlaid) are not other photos: subtracting
them would leave exactly the overlay and flatter the method, so they are found and left out.

Pieces, numpy in and out, each usable alone:

- `fit_impostors` / `Impostors.line`: the embedding's cosine between different people, fitted
  without labels on random pairs; the same-person line at a stated false-match rate.
- `duplicate_line`: above it two rows are the same photo, not two photos of one person.
- `same_person_neighbours`: per query row, its top-k other-photo neighbours among all rows: exact
  blockwise search, or an Annoy index (shipped inside openTSNE, a dependency) above
  `EXACT_MAX_PAIRS` query x row pairs.
- `remove_identity`: a row's feature minus the mean of its neighbours' features; rows without a
  usable neighbour are masked, and too few such rows skip the view.
- `people` / `identity_flags`: how many people a cluster holds (components of the same-person
  graph among its members), flagged when a few people hold most of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.stats import norm

__all__ = [
    "EXACT_MAX_PAIRS",
    "FALSE_MATCHES",
    "MIN_SHARE",
    "Impostors",
    "Neighbours",
    "Removed",
    "drop_copies",
    "duplicate_line",
    "fit_impostors",
    "identity_flags",
    "people",
    "remove_identity",
    "same_person_neighbours",
    "similarity_weights",
]

#: Expected different-person rows above the same-person line per searched row (see `Impostors.line`).
FALSE_MATCHES = 0.1
#: Exact search up to this many query x row cosines, Annoy above.  Measured (d = 128, 2 cores at load
#: 17): exact 71 s per 1e9 cosines; Annoy about 0.1 ms a row to index and 2 ms a query.
EXACT_MAX_PAIRS = 1e9
#: The identity-removed view needs at least this share of rows with another photo of their person.
MIN_SHARE = 0.5
_BLOCK = 32_768  # rows of all read at once
_BUDGET = 1 << 24  # cosines held at once (64 MB of float32)
_PAIRS = 8192  # (row, neighbour) pairs whose distance is taken at once
#: Rows of `drop_copies`' `F_sample` its channel spread and median distance are measured on.
SAMPLE = 20_000


def _unit(E: np.ndarray) -> np.ndarray:
    E = np.asarray(E, dtype=np.float32)
    return E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)


def _rows(data, idx: np.ndarray) -> np.ndarray:
    """Rows `idx` of an array or h5py dataset (read in increasing order, as h5py needs), in `idx`'s order."""
    idx = np.asarray(idx, dtype=np.int64)
    uniq, inv = np.unique(idx, return_inverse=True)
    got = np.asarray(data[uniq]) if len(uniq) else np.asarray(data[:0])
    return got[inv.reshape(-1)]


def _pairs(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each neighbour of a table (-1: none): its query, its slot, the distinct rows, its row's column there."""
    q, slot = np.nonzero(idx >= 0)
    uniq, col = np.unique(idx[q, slot], return_inverse=True)
    return q, slot, uniq, col.reshape(-1)


def _chunks(features_of, uniq: np.ndarray, chunk: int, dtype) -> Iterator[tuple[int, np.ndarray]]:
    """(start, features of ``uniq[start : start + chunk]``): each distinct row read once, in increasing order
    (as h5py needs), a chunk at a time so memory stays bounded at millions of neighbours."""
    fetch = features_of if callable(features_of) else (lambda rows: np.asarray(features_of[rows]))
    for a in range(0, len(uniq), chunk):
        yield a, np.asarray(fetch(uniq[a : a + chunk]), dtype=dtype)


# --------------------------------------------------------------------------- the lines


@dataclass(frozen=True)
class Impostors:
    """The cosine between two different people's embeddings, as a Gaussian fitted robustly.

    ``median`` and ``scale`` (interquartile range / 1.349, the normal's) of random pairs' cosines.
    Random pairs are almost all different people; the few same-person pairs among them (a share near
    1 / people) sit in the upper tail and move the median and quartiles little, where they would
    move a high quantile a lot.  The tail beyond the quartiles is extrapolated as Gaussian."""

    median: float
    scale: float
    n_pairs: int

    def line(self, n_rows: int, false_matches: float = FALSE_MATCHES) -> float:
        """Same-person cosine line when searching `n_rows` rows: a row expects `false_matches`
        different-person rows above it, i.e. the false-match rate is ``false_matches / n_rows``.

        The rate shrinks with the rows searched, as a face search's threshold does with its gallery
        size: a fixed rate would give a row of 17 M rows thousands of false "same person" rows."""
        rate = min(0.5, false_matches / max(int(n_rows), 1))
        return float(self.median + norm.isf(rate) * self.scale)

    def as_dict(self) -> dict:
        return {"median": self.median, "scale": self.scale, "n_pairs": self.n_pairs}


def fit_impostors(E, sample: int = 3000, random_state: int = 0) -> Impostors:
    """`Impostors` from all pairs of `sample` random rows of `E` (an array or an h5py dataset)."""
    n = len(E)
    if n < 3:
        raise ValueError(f"need at least 3 embeddings to fit the impostor cosines, got {n}")
    rng = np.random.default_rng(random_state)
    pick = np.sort(rng.choice(n, min(sample, n), replace=False))
    U = _unit(_rows(E, pick))
    c = (U @ U.T)[np.triu_indices(len(U), 1)]
    q25, q50, q75 = np.quantile(c, [0.25, 0.5, 0.75])
    return Impostors(float(q50), float(max(q75 - q25, 1e-6) / 1.349), int(c.size))


def duplicate_line(same: float) -> float:
    """Cosine above which two rows are the same photo (re-encoded, cropped, lightly overlaid).

    Rule: closer than half the same-person line's distance.  On unit vectors the distance is
    ``sqrt(2 - 2 cos)``, so the line is ``1 - (1 - same) / 4``: with SFace's published same-person
    cosine 0.363 it is 0.84, where re-encodings and crops (0.95+) fall above and a person's other
    photos (mostly 0.4-0.75) below.  An overlay that moves the embedding as far as another photo
    does (a medical mask) cannot be told from another photo by the embedding: such sets need the
    photo's identity from elsewhere (a hash of the source before overlays)."""
    return float(1.0 - (1.0 - same) / 4.0)


# --------------------------------------------------------------------------- the search


@dataclass
class Neighbours:
    """Per query row, its other-photo same-person neighbours among all rows.

    ``index`` (n x k int64 rows of all, -1 = none) and ``cosine`` (n x k float32, NaN = none),
    each row's by decreasing cosine; kept when ``same <= cosine < duplicate``.  ``duplicates`` (n):
    rows at or above the duplicate line (the same photo), left out.  ``method``: "exact" | "annoy"."""

    index: np.ndarray
    cosine: np.ndarray
    duplicates: np.ndarray
    same: float
    duplicate: float
    method: str
    n_all: int

    @property
    def count(self) -> np.ndarray:
        return (self.index >= 0).sum(axis=1)

    @property
    def share(self) -> float:
        """Share of query rows with at least one other photo of their person."""
        return float((self.count > 0).mean()) if len(self.index) else 0.0


def same_person_neighbours(
    E_q: np.ndarray,
    query_rows: np.ndarray,
    E_all,
    k: int = 15,
    impostors: Impostors | None = None,
    method: str = "auto",
    false_matches: float = FALSE_MATCHES,
    max_pairs: float = EXACT_MAX_PAIRS,
    n_trees: int = 20,
    search_k: int = 5000,
    photo: np.ndarray | None = None,
    random_state: int = 0,
    duplicate: float | None = None,
) -> Neighbours:
    """Top-`k` other photos of each query row's person among all rows (`E_all`: array or h5py dataset).

    `query_rows`: the query rows' own rows in `E_all` (a row is never its own neighbour).  A row of
    all is the same person when its cosine is at least ``impostors.line(len(E_all))`` and another
    photo when below `duplicate_line` of it.  `impostors`: fitted on `E_all` when not given; the
    subset's embeddings (a random sample of all rows) give the same fit without random reads of a
    large h5py dataset.  `method`: "exact"
    (normalised matmul over blocks of `E_all`, memory bounded), "annoy" (approximate: Annoy's
    angular index with `n_trees` trees, examining `search_k` candidates a query: on a planted set of
    6,000 rows it found 99.95 % of the exact search's same-person rows, at 2 ms a query, where
    Annoy's default found 87 %; from openTSNE), or "auto": exact up to `max_pairs` query x row
    cosines.  `photo`: when known, the source photo of every row of all (e.g. a hash of the image
    before overlays): rows of the query's own photo are its duplicates whatever their cosine (an
    overlay as strong as a mask moves the embedding below the duplicate line).  `duplicate`: the
    embedding line above which a row is a copy (default `duplicate_line` of the same-person line;
    ``np.inf`` keeps every row, for `drop_copies` to judge by the activations instead)."""
    Q = _unit(E_q)
    query_rows = np.asarray(query_rows, dtype=np.int64).reshape(-1)
    if len(query_rows) != len(Q):
        raise ValueError(f"{len(Q)} query embeddings but {len(query_rows)} query rows")
    n_all = len(E_all)
    if impostors is None:
        impostors = fit_impostors(E_all, random_state=random_state)
    lo = impostors.line(n_all, false_matches)
    hi = duplicate_line(lo) if duplicate is None else float(duplicate)  # np.inf: keep copies (see drop_copies)
    if photo is not None:
        photo = np.asarray(photo).reshape(-1)
        if len(photo) != n_all:
            raise ValueError(f"{len(photo)} photo ids for {n_all} rows")
    if method == "auto":
        method = "exact" if len(Q) * n_all <= max_pairs else "annoy"
    if method == "exact":
        idx, cos, dups = _exact(Q, query_rows, E_all, k, lo, hi, photo)
    elif method == "annoy":
        idx, cos, dups = _annoy(Q, query_rows, E_all, k, lo, hi, n_trees, search_k, random_state, photo)
    else:
        raise ValueError(f"method must be 'auto', 'exact' or 'annoy', got {method!r}")
    cos = np.where(idx >= 0, cos, np.nan).astype(np.float32)
    return Neighbours(idx, cos, dups, lo, hi, method, n_all)


def _exact(Q: np.ndarray, query_rows: np.ndarray, E_all, k: int, lo: float, hi: float, photo: np.ndarray | None):
    n = len(Q)
    best_i = np.full((n, k), -1, dtype=np.int64)
    best_c = np.full((n, k), -np.inf, dtype=np.float32)
    dups = np.zeros(n, dtype=np.int64)
    qb = max(1, _BUDGET // _BLOCK)
    for s in range(0, len(E_all), _BLOCK):
        B = _unit(E_all[s : s + _BLOCK])
        own = np.flatnonzero((query_rows >= s) & (query_rows < s + len(B)))
        for q0 in range(0, n, qb):
            C = Q[q0 : q0 + qb] @ B.T
            mine = own[(own >= q0) & (own < q0 + len(C))]
            C[mine - q0, query_rows[mine] - s] = -np.inf  # never its own neighbour
            r, c = np.nonzero(C >= lo)  # sparse: cheaper than a top-k over the whole block
            if not len(r):
                continue
            v = C[r, c]
            d = v >= hi
            if photo is not None:
                d |= photo[s + c] == photo[query_rows[q0 + r]]
            dups += np.bincount(q0 + r[d], minlength=n)
            _merge(best_i, best_c, q0 + r[~d], s + c[~d], v[~d], k)
    return best_i, best_c, dups


def _merge(best_i: np.ndarray, best_c: np.ndarray, r: np.ndarray, idx: np.ndarray, v: np.ndarray, k: int) -> None:
    """Fold candidates (query r, row idx, cosine v) into each query's top k, in place."""
    if not len(r):
        return
    rows = np.unique(r)
    R = np.concatenate([np.repeat(np.arange(len(rows)), k), np.searchsorted(rows, r)])
    J = np.concatenate([best_i[rows].ravel(), idx])
    V = np.concatenate([best_c[rows].ravel(), v.astype(np.float32)])
    order = np.lexsort((J, -V, R))
    R, J, V = R[order], J[order], V[order]
    rank = np.arange(len(R)) - np.searchsorted(R, R)
    keep = rank < k
    best_i[rows[R[keep]], rank[keep]] = J[keep]
    best_c[rows[R[keep]], rank[keep]] = V[keep]


def _annoy(
    Q: np.ndarray,
    query_rows: np.ndarray,
    E_all,
    k: int,
    lo: float,
    hi: float,
    n_trees: int,
    search_k: int,
    seed: int,
    photo: np.ndarray | None,
):
    from openTSNE.dependencies.annoy import AnnoyIndex  # the index openTSNE's own kNN uses

    index = AnnoyIndex(Q.shape[1], "angular")
    index.set_seed(int(seed))
    for s in range(0, len(E_all), _BLOCK):
        for i, row in enumerate(_unit(E_all[s : s + _BLOCK])):
            index.add_item(s + i, row)
    index.build(int(n_trees), n_jobs=-1)
    n = len(Q)
    best_i = np.full((n, k), -1, dtype=np.int64)
    best_c = np.full((n, k), -np.inf, dtype=np.float32)
    dups = np.zeros(n, dtype=np.int64)
    for q in range(n):
        want = 2 * k + 1
        while True:  # ask for more while copies of this photo crowd out its person's other photos
            ids, dist = index.get_nns_by_vector(Q[q], want, max(search_k, n_trees * want), include_distances=True)
            ids, cos = np.asarray(ids, dtype=np.int64), 1.0 - np.asarray(dist) ** 2 / 2  # angular = sqrt(2 - 2 cos)
            keep = ids != query_rows[q]
            ids, cos = ids[keep], cos[keep]
            dup = cos >= hi
            if photo is not None:
                dup |= photo[ids] == photo[query_rows[q]]
            other = (cos >= lo) & ~dup
            if other.sum() >= k or len(ids) < want - 1 or cos.min(initial=1.0) < lo or want >= 64 * k:
                break
            want *= 4
        dups[q] = int((dup & (cos >= lo)).sum())
        take = np.flatnonzero(other)[:k]
        best_i[q, : len(take)] = ids[take]
        best_c[q, : len(take)] = cos[take]
    return best_i, best_c, dups


#: A neighbour whose activations are closer than this share of the median distance between random
#: rows is a copy of the photo (see `drop_copies`).
COPY_SHARE = 0.25


def drop_copies(
    neighbours: Neighbours,
    F_q: np.ndarray,
    features_of,
    F_sample: np.ndarray,
    k: int | None = None,
    share: float = COPY_SHARE,
    random_state: int = 0,
    chunk: int = 65_536,
) -> Neighbours:
    """Neighbours whose activations are nearly the query photo's own are copies, not other photos.

    Why the activations and not the embedding: a recognition embedding is trained to make a
    person's photos alike, so another photo of the same session can score as high as a re-encoded
    copy (measured: the embedding-only line set aside 474 real other-photo pairs on ORL and every
    same-person render on the generated sets). The layer before it keeps the photo: pose, light and
    background move it, re-encoding and cropping barely do. Distances are taken after z-scoring each
    channel (on `F_sample`, a random sample of rows such as the subset), and a neighbour closer than
    `share` of the median distance between random rows of `F_sample` is a copy. An overlay (a mask
    drawn on the same photo) moves the activations more than that: only photo ids (`photo` of
    `same_person_neighbours`) catch such copies. Keeps each row's first `k` (default all) others."""
    rng = np.random.default_rng(random_state)
    if len(F_sample) > SAMPLE:  # the channels' spread and the median distance are well measured on a sample
        F_sample = np.asarray(F_sample)[np.sort(rng.choice(len(F_sample), SAMPLE, replace=False))]
    F_sample = np.asarray(F_sample, dtype=np.float64)
    mu, sd = F_sample.mean(axis=0), F_sample.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    i, j = rng.integers(0, len(F_sample), (2, 4000))
    i, j = i[i != j], j[i != j]
    Zs = (F_sample - mu) / sd
    line = share * float(np.median(np.linalg.norm(Zs[i] - Zs[j], axis=1))) if len(i) else 0.0
    idx = neighbours.index.copy()
    q, slot, uniq, col = _pairs(idx)
    dist = np.empty(len(q))
    for a, got in _chunks(features_of, uniq, chunk, np.float32):
        at = np.flatnonzero((col >= a) & (col < a + len(got)))
        for b in range(0, len(at), _PAIRS):  # pairs a block at a time: a row has k neighbours, memory stays bounded
            p = at[b : b + _PAIRS]
            diff = np.asarray(F_q[q[p]], dtype=np.float64) - got[col[p] - a]  # the mean cancels
            dist[p] = np.linalg.norm(diff / sd, axis=1)
    copy = dist < line
    idx[q[copy], slot[copy]] = -1
    cos = np.where(idx >= 0, neighbours.cosine, np.nan).astype(np.float32)
    order = np.argsort(idx < 0, axis=1, kind="stable")  # the others first, in their order
    idx, cos = np.take_along_axis(idx, order, 1), np.take_along_axis(cos, order, 1)
    k = idx.shape[1] if k is None else int(k)
    dups = neighbours.duplicates + np.bincount(q[copy], minlength=len(idx))
    return Neighbours(
        idx[:, :k], cos[:, :k], dups, neighbours.same, neighbours.duplicate, neighbours.method, neighbours.n_all
    )


# --------------------------------------------------------------------------- identity removed


@dataclass
class Removed:
    """The identity-removed feature of each query row.

    ``features`` (n x C float32): the row's feature minus the mean of its neighbours' features;
    NaN where ``mask`` is False (no other photo of the person: the view labels such rows -1).
    ``used`` (n): neighbours averaged; ``share``: ``mask.mean()``; ``skipped``: None, or why the
    view should not be fitted (fewer than `MIN_SHARE` of the rows with a neighbour)."""

    features: np.ndarray
    mask: np.ndarray
    used: np.ndarray
    share: float
    skipped: str | None


def remove_identity(
    F_q: np.ndarray,
    neighbours: Neighbours,
    features_of: Callable[[np.ndarray], np.ndarray] | np.ndarray,
    min_share: float = MIN_SHARE,
    chunk: int = 65_536,
    weights: np.ndarray | None = None,
) -> Removed:
    """Each query row's feature minus the mean feature of its same-person other photos.

    `F_q`: the query rows' features (n x C, e.g. the spatial mean of the layer); `features_of`:
    the features of all rows, as an array / h5py dataset, or a function given sorted row indices
    (read in chunks of `chunk` rows, so memory stays bounded at millions of neighbours).  The
    person's mean holds what is the same in all their photos (who they are); what is left is what
    this photo has and the others do not.  Near-duplicates are already out of `neighbours`.
    `weights` (n x k, >= 0, same layout as ``neighbours.index``): a weighted mean instead (see
    `similarity_weights`)."""
    F_q = np.asarray(F_q, dtype=np.float32)
    idx = neighbours.index
    if len(F_q) != len(idx):
        raise ValueError(f"{len(F_q)} feature rows but {len(idx)} neighbour rows")
    used = neighbours.count
    mask = used > 0
    q, slot, uniq, col = _pairs(idx)
    if weights is None:
        w = 1.0 / used[q].astype(np.float32)
    else:
        weights = np.where(idx >= 0, np.asarray(weights, dtype=np.float64), 0.0)
        w = (weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-30))[q, slot].astype(np.float32)
    W = sparse.csc_matrix((w, (q, col)), shape=(len(F_q), len(uniq)))
    mean = np.zeros(F_q.shape, dtype=np.float32)
    for a, got in _chunks(features_of, uniq, chunk, np.float32):
        mean += W[:, a : a + len(got)] @ got
    out = np.full(F_q.shape, np.nan, dtype=np.float32)
    out[mask] = F_q[mask] - mean[mask]
    share = float(mask.mean()) if len(mask) else 0.0
    skipped = None
    if share < min_share:
        skipped = (
            f"too few rows with same-person neighbours: {100 * share:.1f} % (other photos of the person; "
            f"near-duplicates of the same photo do not count; at least {100 * min_share:.0f} % needed); view skipped"
        )
    return Removed(out, mask, used, share, skipped)


def similarity_weights(neighbours: Neighbours, scale: float) -> np.ndarray:
    """Per neighbour, ``exp((cosine - the row's best cosine) / scale)``: the closest count most.

    Why: a row's nearest rows are its person's other photos where the data has them, and else its
    closest look-alikes; a loose line lets both in, and weighting by how far each falls below the
    best one (in units of `scale`, the spread of strangers' cosines) keeps a stranger that merely
    passed the line from pulling a person's mean away, while look-alikes as close as each other
    count alike."""
    cos = np.where(neighbours.index >= 0, neighbours.cosine, np.nan).astype(np.float64)
    best = np.nanmax(np.where(np.isnan(cos), -np.inf, cos), axis=1, keepdims=True)
    w = np.exp((cos - best) / max(float(scale), 1e-6))
    return np.where(np.isnan(w), 0.0, w)


# --------------------------------------------------------------------------- how many people


def people(
    E_members: np.ndarray, impostors: Impostors, false_matches: float = FALSE_MATCHES, shared_share: float = 0.5
) -> dict:
    """How many people a set of rows holds: components of its same-person graph.

    Two members are joined when (1) their embedding cosine is at least ``impostors.line(m)`` (m
    members: a member expects `false_matches` chance matches) and (2) at least `shared_share` of
    their above-line neighbours (themselves included) are shared, Jaccard (Jarvis and Patrick's
    shared neighbours).  (2) stops chains: an attribute that makes faces look alike to the net
    lifts every member pair a little, chance matches then pile up and would join dozens of people
    into one component; a person's photos see the same photos, two people matched by chance do
    not.  A component is one person (a person's photos join through each other even where not all
    pairs pass).  Returns members, people, largest_share (the largest component's share), sizes
    (components by decreasing size), threshold."""
    U = _unit(E_members)
    m = len(U)
    tau = impostors.line(m, false_matches) if m > 1 else 1.0
    if m < 2:
        return {
            "members": m,
            "people": m,
            "largest_share": 1.0 if m else 0.0,
            "sizes": [m] if m else [],
            "threshold": tau,
        }
    A = sparse.csr_matrix(U @ U.T >= tau, dtype=np.float32)  # closed neighbourhoods: the diagonal is in
    deg = np.asarray(A.sum(axis=1)).ravel()
    shared = (A @ A).multiply(A).tocoo()  # per edge: neighbours in common
    jac = shared.data / (deg[shared.row] + deg[shared.col] - shared.data)
    keep = (jac >= shared_share) & (shared.row != shared.col)
    G = sparse.csr_matrix((np.ones(int(keep.sum())), (shared.row[keep], shared.col[keep])), shape=(m, m))
    n_comp, comp = connected_components(G, directed=False)
    sizes = np.sort(np.bincount(comp))[::-1]
    return {
        "members": m,
        "people": int(n_comp),
        "largest_share": float(sizes[0] / m),
        "sizes": sizes.tolist(),
        "threshold": float(tau),
    }


def identity_flags(
    embeddings: np.ndarray,
    labels: np.ndarray,
    impostors: Impostors | None = None,
    few: int = 3,
    most: float = 0.5,
    sample: int = 3000,
    random_state: int = 0,
) -> list[dict]:
    """Per cluster: is it mostly one or a few people?  Flagged when its `few` largest people
    (`people`), each seen in at least 2 members, hold at least `most` of its members.

    Why "at least 2": a person with one photo in the cluster dominates nothing, and counting them
    flagged every cluster of 4 to 6 different people (3 of 6 is half) and, through one chance
    match (a size-2 "person" among singletons: 4 of 8), 30-52 % of 8-photo clusters of 8
    different people on real faces (ORL, SFace).

    Counting people, not pairs: an attribute that makes faces look alike to the net raises every
    member pair's cosine a little, which a share of similar pairs reads as "a few people", while
    the people it spans stay many components.  Clusters of more than `sample` members are judged
    on a random sample of that many (``sampled``; people, shares on it).  Rows labelled < 0 are
    ignored; a cluster of at most `few` members is never flagged (it is trivially a few people).
    Each entry: cluster, members, sampled, people, largest_share, top_share (the `few` largest
    people's), threshold, flagged."""
    E = np.asarray(embeddings)
    labels = np.asarray(labels)
    if impostors is None:
        impostors = fit_impostors(E, random_state=random_state)
    rng = np.random.default_rng(random_state)
    out = []
    for c in range(int(labels.max()) + 1 if len(labels) else 0):
        rows = np.flatnonzero(labels == c)
        if len(rows) > sample:
            rows = np.sort(rng.choice(rows, sample, replace=False))
        p = people(E[rows], impostors)
        repeated = [s for s in p["sizes"][:few] if s >= 2]  # a person seen once dominates nothing
        top = float(sum(repeated) / p["members"]) if p["members"] else 0.0
        out.append(
            {
                "cluster": c,
                "members": int((labels == c).sum()),
                "sampled": int(len(rows)),
                "people": p["people"],
                "largest_share": p["largest_share"],
                "top_share": top,
                "threshold": p["threshold"],
                "flagged": bool(p["members"] > few and top >= most),
            }
        )
    return out
