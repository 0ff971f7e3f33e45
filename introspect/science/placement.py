"""New rows placed on an existing t-SNE map: the mean map position of their nearest subset rows.

The map was made from the subset's PCA rows (`tsne.pca_fit`); a new row goes through the same
projection, its `n_neighbors` nearest subset rows in that space are found with a tree
(`sklearn.neighbors.NearestNeighbors`), and its position is their map positions' mean,
weighted by inverse distance (`weights="distance"`, the default) or not (`"uniform"`).

Inverse distance is the default because a row that is itself in the subset then lands on its
own map position (its distance is 0, so it takes all the weight), and a new row close to one
subset row sits by that row rather than at the centre of a neighbourhood that may straddle two
clusters on the map. openTSNE's `TSNEEmbedding.transform` optimises each new point against the
map instead; `bench/placement.py` measures both (speed, and how far apart they place rows).
"""

from __future__ import annotations

import numpy as np

#: Distances below this count as the same row (inverse-distance weights would divide by 0).
SAME = 1e-6


class MapPlacer:
    """scikit-learn style: `fit(rows, Y)` on the subset's PCA rows and map; `place(Z)` / `transform(X, mean, comps)`."""

    def __init__(self, n_neighbors: int = 10, weights: str = "distance") -> None:
        if weights not in ("distance", "uniform"):
            raise ValueError(f"weights must be 'distance' or 'uniform', not {weights!r}")
        self.n_neighbors = n_neighbors
        self.weights = weights

    def fit(self, rows: np.ndarray, Y: np.ndarray) -> MapPlacer:
        from sklearn.neighbors import NearestNeighbors

        rows, Y = np.asarray(rows, np.float32), np.asarray(Y, np.float64)
        if rows.ndim != 2 or Y.shape != (len(rows), 2):
            raise ValueError(f"expected N x d rows and N x 2 map positions, got {rows.shape} and {Y.shape}")
        self.k_ = min(self.n_neighbors, len(rows))
        self.nn_ = NearestNeighbors(n_neighbors=self.k_).fit(rows)
        self.Y_ = Y
        return self

    def place(self, Z: np.ndarray) -> np.ndarray:
        """N x 2 float32 map positions of already reduced rows (NaN for a row that is not finite)."""
        Z = np.asarray(Z, np.float32)
        out = np.full((len(Z), 2), np.nan, np.float32)
        good = np.isfinite(Z).all(axis=1)
        if not good.any():
            return out
        dist, idx = self.nn_.kneighbors(Z[good])
        pos = self.Y_[idx]  # n x k x 2
        if self.weights == "uniform":
            out[good] = pos.mean(axis=1)
            return out
        w = 1.0 / np.maximum(dist, SAME)
        out[good] = (pos * w[..., None]).sum(axis=1) / w.sum(axis=1, keepdims=True)
        return out

    def transform(self, X: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
        """Raw activations: projected like the subset was (`(X - mean) @ components.T`), then placed."""
        return self.place(reduce(X, mean, components))


def reduce(X: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Rows in the PCA space the map was made from."""
    X = np.asarray(X, np.float32)
    return (X - np.asarray(mean, np.float32)) @ np.asarray(components, np.float32).T


def neighbour_spacing(Y: np.ndarray, k: int = 1) -> float:
    """The median distance on the map from a point to its k-th nearest other point."""
    from sklearn.neighbors import NearestNeighbors

    d, _ = NearestNeighbors(n_neighbors=k + 1).fit(Y).kneighbors(Y)
    return float(np.median(d[:, k]))


def neighbour_agreement(Ya: np.ndarray, Yb: np.ndarray, Y_map: np.ndarray, k: int = 10) -> float:
    """Mean share of the k nearest map points that two placements of the same rows have in common."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k).fit(Y_map)
    a, b = nn.kneighbors(Ya, return_distance=False), nn.kneighbors(Yb, return_distance=False)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist())]))


class PlaceOnMap:
    """A stream transform (picklable): the fetched center pixel `key` becomes the 2-D `map` column."""

    def __init__(self, placer: MapPlacer, mean: np.ndarray, components: np.ndarray, key: str = "prefacen") -> None:
        self.placer, self.mean, self.components, self.key = placer, mean, components, key

    def __call__(self, fetched: dict) -> dict:
        if self.key not in fetched:
            return fetched
        out = {k: v for k, v in fetched.items() if k != self.key}
        out["map"] = self.placer.transform(fetched[self.key], self.mean, self.components)
        return out
