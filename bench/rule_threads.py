"""The stability rule's k-means, threads pinned to one vs left to the BLAS / OpenMP default.

One dataset: 3,000 rows of 30 whitened components (12 planted blobs of unequal size in 64
dimensions plus noise, whitened PCA as the cluster stage does), the default `cluster.k_grid`,
3 refits.  Runs `discovery.select_k` once with ``threads=None`` (as before issue 17) and once with
``threads=1`` (now the default), prints both times, the ratio and both picks (they must agree).
The box's load is printed too: the ratio depends on it (threads oversubscribe on busy cores).

    .venv/bin/python bench/rule_threads.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from introspect.config import DEFAULTS  # noqa: E402
from introspect.science import discovery  # noqa: E402


def data(n: int = 3000, d: int = 64, blobs: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sizes = rng.dirichlet(np.full(blobs, 2.0)) * n
    labels = np.repeat(np.arange(blobs), np.diff(np.round(np.concatenate([[0], np.cumsum(sizes)])).astype(int)))
    X = rng.normal(0, 3, (blobs, d))[labels] + rng.normal(size=(len(labels), d))
    return discovery.whitened_pca(30, 0).fit_transform(X)


def main() -> None:
    Z = data()
    ks = [k for k in DEFAULTS["cluster"]["k_grid"] if k <= len(Z) // 5]
    print(f"{len(Z)} x {Z.shape[1]} whitened rows, k grid {ks}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}")
    out = {}
    for threads in (None, 1):
        t = time.perf_counter()
        sel = discovery.select_k(Z, ks, ("kmeans",), n_boot=3, random_state=42, threads=threads)
        out[threads] = (time.perf_counter() - t, sel["method"], sel["k"])
        print(f"threads={threads!s:>4}: {out[threads][0]:6.2f} s, pick {sel['method']} k={sel['k']}")
    free, pinned = out[None], out[1]
    print(f"ratio (default / pinned): {free[0] / pinned[0]:.2f}x; same pick: {free[1:] == pinned[1:]}")


if __name__ == "__main__":
    main()
