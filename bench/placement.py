"""Placing new rows on an existing map: openTSNE's `TSNEEmbedding.transform` vs nearest subset neighbours.

The map is made like the cluster stage makes it (PCA to `--pca` components, openTSNE with the
stage's parameters) from the subset's rows; new rows are rows of full.h5 outside the subset.
Both methods place the new rows; printed: speed (rows/s, the kNN placer's tree fit included),
agreement (median distance between the two placements, in map z-units: distance over the
map's pooled standard deviation; and the mean share of the 10 nearest subset points on the map
the two placements have in common), and the kNN placer on subset rows (how far a row lands
from its own map position, against the map's median nearest-neighbour spacing).

    .venv/bin/python bench/placement.py --subset runs/demo/subset.h5 --full runs/demo/full.h5
"""

from __future__ import annotations

import argparse
import time

import h5py
import numpy as np

from introspect.science import placement, tsne


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subset", default="/work/main/runs/demo/subset.h5")
    ap.add_argument("--full", default="/work/main/runs/demo/full.h5")
    ap.add_argument("--new", type=int, default=2000, help="new rows to place")
    ap.add_argument("--pca", type=int, default=50)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--n-iter", type=int, default=750)
    args = ap.parse_args()

    with h5py.File(args.subset) as f:
        Xs, idx = f["prefacen"][:], f["index"][:]
    with h5py.File(args.full) as f:
        full_index = f["index"][:]
        outside = np.flatnonzero(~np.isin(full_index, idx))
        pick = np.sort(np.random.default_rng(0).choice(outside, min(args.new, len(outside)), replace=False))
        Xn = f["prefacen"][pick]
    keep = np.isfinite(Xs).all(1)
    Xs = Xs[keep]
    Zs, _, mean, comps = tsne.pca_fit(Xs, args.pca, seed=0)
    Zn = placement.reduce(Xn, mean, comps)
    print(f"subset {len(Xs)} rows, new {len(Xn)} rows, {Xs.shape[1]} channels -> PCA {args.pca}")

    from openTSNE import TSNE
    from openTSNE.affinity import PerplexityBasedNN

    params = tsne.TSNEParams(n_iter=args.n_iter)
    kw = tsne.backend_kwargs(params, "opentsne", n_samples=len(Zs))
    t0 = time.perf_counter()
    aff = PerplexityBasedNN(Zs, **kw["affinities"])
    emb = TSNE(**kw["estimator"]).fit(Zs, affinities=aff, initialization="pca")
    print(f"map: {time.perf_counter() - t0:.1f} s (openTSNE, {args.n_iter} iterations)")
    Y = np.asarray(emb)
    scale = float(np.sqrt(Y.var(axis=0).sum() / 2))
    spacing = placement.neighbour_spacing(Y)

    t0 = time.perf_counter()
    Yo = np.asarray(emb.transform(Zn))
    t_open = time.perf_counter() - t0

    results = {}
    for weights in ("distance", "uniform"):
        t0 = time.perf_counter()
        placer = placement.MapPlacer(args.k, weights).fit(Zs, Y)
        Yk = placer.place(Zn)
        t_knn = time.perf_counter() - t0
        big = np.repeat(Zn, 50, axis=0)  # throughput on 100,000 rows
        t0 = time.perf_counter()
        placer.place(big)
        t_big = time.perf_counter() - t0
        own = np.linalg.norm(placer.place(Zs) - Y, axis=1)
        results[weights] = (Yk, t_knn, len(big) / t_big, own)

    print(f"map scale (pooled std) {scale:.3f}; median nearest-neighbour spacing {spacing / scale:.4f} z")
    print(f"openTSNE transform: {t_open:.2f} s, {len(Zn) / t_open:,.0f} rows/s")
    for weights, (Yk, t_knn, rate, own) in results.items():
        d = np.linalg.norm(Yk - Yo, axis=1) / scale
        agree = placement.neighbour_agreement(Yk, Yo, Y, 10)
        print(
            f"kNN ({weights}, k={args.k}): {t_knn:.3f} s with the tree's fit ({len(Zn) / t_knn:,.0f} rows/s), "
            f"{rate:,.0f} rows/s on {len(Zn) * 50:,} rows; vs openTSNE: median distance {np.median(d):.4f} z "
            f"(90th pct {np.quantile(d, 0.9):.4f}), 10-NN agreement {agree:.1%}; "
            f"subset rows from their own position: median {np.median(own) / scale:.4f} z, max {own.max() / scale:.4f} z"
        )


if __name__ == "__main__":
    main()
