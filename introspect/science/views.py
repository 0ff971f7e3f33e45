"""Views: several clusterings of one subset, each seeing the activations another way.

A view is (feature, transform, method, k). Why several: on real faces the strongest structure of
a recognition net's activations is the person, and what one clustering finds depends on what it
is shown. The centre pixel of the last feature map (the reference's feature) sees local detail;
the spatial mean of the same map (global average pooling) sees properties of the whole face
(lighting, a mask, grey scale) that the centre misses (measured outside: a linear probe decodes a
mask at ROC AUC 0.99 from the mean vs 0.66 from the centre); and the spatial mean with each
person's own mean removed no longer clusters by who is in the image. Each view is fitted with the
same stability rule (`discovery.select_k`) and kept side by side: no view is best on every data
set, and a person reads each one's galleries.

- `VIEWS`: the three views by name; `View.feature` is the activation the view (and its grafted
  head) reads: "center" (`prefacen`) or "mean" (`prefacen_mean`).
- `prepare`: the view's rows (z-scored where the view says so), ready for `discover_pca`.
- `discover_pca`: the whitened-PCA space and the stability rule (or a fixed k), as one function
  shared by every view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine.store import DATASETS  # noqa: F401  (a feature's dataset: views.DATASETS[view.feature])
from . import discovery
from .clustering import ClusterSettings

__all__ = ["VIEWS", "View", "discover_pca", "prepare", "zscore"]


@dataclass(frozen=True)
class View:
    """One way of looking at the subset; see the module doc."""

    name: str
    feature: str  # "center" (prefacen) or "mean" (prefacen_mean): what the view and its head read
    transform: str  # said in metrics and the report
    grafted: str  # "exact": the partition is linear in `feature`, a linear head learns it; "approximate": not

    @property
    def zscored(self) -> bool:
        return self.name != "center"

    @property
    def identity_removed(self) -> bool:
        return self.name == "noid"


VIEWS: dict[str, View] = {
    "center": View("center", "center", "whitened PCA above the noise floor", "exact"),
    "mean": View("mean", "mean", "z-score per channel, whitened PCA above the noise floor", "exact"),
    "noid": View(
        "noid",
        "mean",
        "minus the mean of the same person's other photos (found among all extracted rows by the "
        "embedding), z-score per channel, whitened PCA above the noise floor",
        "approximate",
    ),
}


def zscore(F: np.ndarray) -> np.ndarray:
    """Each channel to mean 0 and variance 1 (constant channels to 0).

    Why for the spatial mean: averaging 49 positions leaves a few channels with most of the
    variance; PCA would spend its components on them and whitening cannot give back the
    directions it never kept. The moments in float64, the rows in float32 and in place (a 342 k-row
    subset's float64 copy alone would be 2.8 GB)."""
    out = np.array(F, dtype=np.float32)
    mu = out.mean(axis=0, dtype=np.float64)
    ss = np.zeros(out.shape[1:])
    for a in range(0, len(out), 65_536):  # two passes, a block of rows at a time in float64
        ss += ((out[a : a + 65_536] - mu) ** 2).sum(axis=0)
    sd = np.sqrt(ss / max(len(out), 1))
    out -= mu.astype(np.float32)
    out /= np.where(sd > 0, sd, 1.0).astype(np.float32)
    return out


def prepare(view: View, F: np.ndarray) -> np.ndarray:
    """The rows the view partitions (after any identity removal, which the caller does)."""
    return zscore(F) if view.zscored else F  # the center view's rows as they are: today's results unchanged


def discover_pca(F: np.ndarray, c: ClusterSettings) -> tuple[np.ndarray, np.ndarray, dict]:
    """(labels 0..K-1, whitened rows, what was done): whitened PCA above the noise floor, then the rule or fixed k.

    Above `c.rule_rows` rows the rule's refits run on a seeded sample of that many rows and the
    partition at the chosen k is then fitted on every row (see `ClusterSettings.rule_rows`)."""
    n_comp = discovery.signal_components(F, min(c.components, *F.shape), random_state=c.seed)
    Z = discovery.whitened_pca(n_comp, c.seed).fit_transform(F)
    methods = ("kmeans",) if c.method == "auto" else (c.method,)  # Ward's nested cuts look stable for free
    if c.settings == "fixed":
        labels = discovery.Partition(c.k, c.method, random_state=c.seed).fit(Z).labels_
        return labels, Z, {"space": "pca", "method": c.method, "k": c.k, "components": Z.shape[1]}
    sample = rule_sample(len(Z), c.rule_rows, c.seed)
    Z_rule = Z if sample is None else Z[sample]
    ks = [k for k in c.k_grid if k <= len(Z_rule) // 5]
    choice = discovery.select_k(Z_rule, ks, methods, n_boot=c.refits, random_state=c.seed)
    labels = choice["pick"]["labels"]
    if sample is not None:  # the chosen (method, k) on every row, fitted as the rule fitted it
        part = discovery.Partition(choice["k"], choice["method"], n_init=2, random_state=c.seed)
        # Ward's tree is quadratic in the rows: cut on the sample, every row to its nearest centroid
        labels = part.fit(Z).labels_ if choice["method"] == "kmeans" else part.fit(Z_rule).predict(Z)
    table = [{k: v for k, v in r.items() if k != "labels"} for r in choice["rows"]]
    done = {
        "space": "pca",
        "method": choice["method"],
        "k": choice["k"],
        "components": Z.shape[1],
        "rule": "the most clusters stable under subsample refits (Jaccard >= 0.75), then ARI, then fewer",
        "boundary": choice["boundary"],
        "ks": choice["ks"],
        "table": table,
        "rule_rows": len(Z_rule),
    }
    return labels, Z, done


def rule_sample(n: int, cap: int, seed: int) -> np.ndarray | None:
    """Sorted rows of a seeded sample of `cap` of `n` rows; None when every row is used (cap 0 or >= n)."""
    if cap <= 0 or n <= cap:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))
