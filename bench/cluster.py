"""The cluster stage's measured claims, in one run on the same data.

1. t-SNE of 20,000 x 1024 activations, openTSNE vs scikit-learn, same parameters (perplexity
   30, the same iterations, each backend's automatic learning rate, PCA initialisation, all
   cores) on the same PCA-50 input: seconds, speed ratio sklearn / openTSNE, and
   trustworthiness (10 neighbours) of each map against the 1024-d points, on one fixed random
   sample of 2,000 of them. Target: openTSNE >= 1.5x faster at equal or better trustworthiness.
2. KNN-DBSCAN (eps 0.05, min_samples 120 on a random half, 5-NN) vs plain DBSCAN (eps 0.05,
   min_samples 240 on all points: the same density threshold) on 200,000 2-D map points.
   Each runs in its own child process; peak memory is the child's peak resident set during
   the fit: its high-water mark (VmHWM in /proc/self/status) is reset to its current RSS just
   before the fit (after imports and loading the map; `echo 5 > /proc/self/clear_refs`) and
   read after it, minus that RSS. Not ru_maxrss: Linux carries it across fork + exec, so a
   child would report the parent's size (seen: 547 MiB before its fit, the t-SNE parent's).
   Printed: seconds, peak memory, the ratios, the ARI between the two labelings, and the total
   eps-neighbourhood size each DBSCAN sees. Targets: KNN-DBSCAN >= 3x faster, <= 1/3 the peak
   memory, ARI >= 0.95.
3. The classifier (`classifier.fit_validated`, the stage's defaults: 5 folds x 10 Cs, balanced
   weights, 20 % held out, refit on all rows), before and after issue 13: on the 1,024
   standardized activations (`pca=0`) with the libraries' default threads (today), the same
   with one BLAS thread (`threads=1`, the new default), and on 64 whitened PCA components with
   one thread (the new fit, folded into the exported LinearClassifier): same rows, same labels.
   Printed: fit seconds (validation + C search + final refit), held-out accuracy and balanced
   accuracy, the speed ratios, and the ONNX export's max score difference from scikit-learn on
   the held-out rows.

Data. `--activations PATH` takes the `prefacen` rows of an HDF5 file (e.g. runs/demo/subset.h5),
a random 20,000 of them when there are more. Without it, a stand-in (`standin_activations`):
12 clusters in 1024-d, one holding 80 % of the points like the reference's map, the others
unequal (1/i sizes); each cluster is a random center plus its own rank-16 Gaussian structure,
plus a rank-64 structure shared by all (pose, lighting...), plus isotropic noise. The map
for part 2 (`standin_map`) is what a t-SNE of such data looks like: a big soft disk (80 %),
10 smaller ones of unequal size and density on a ring around it, and 1 % scattered points.

    .venv/bin/python bench/cluster.py [--quick] [--activations runs/demo/subset.h5]

Part 3 with `--project 4000,8000,16000`: the new fit alone on the stand-in at those sizes, its
time fitted as c + a N (as bench/scale.py) and projected to the reference's 342 k-row subset.

--quick: 2,000 points and 300 iterations for t-SNE, 20,000 map points (min_samples scaled
with N to keep the density threshold), 1,000 classifier rows, for a smoke run.

Part 3's labels: with `--activations`, the `label` of a `clusters.h5` beside the file when its
`index` matches, otherwise k-means (`--clusters`) on the PCA-50 rows (easier for any linear
classifier than t-SNE clusters: say which in the report); without, the stand-in's own clusters
(`classifier_standin`: `--clusters` of them in a rank-48 subspace of 1024-d, plus noise).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from introspect.science import tsne
from introspect.science.clustering import KNNDBSCAN, make_clusterer

FULL_MAP = 200_000
REFERENCE = dict(eps=0.05, min_samples=120, subsample=0.5)  # the reference's KNN-DBSCAN, for FULL_MAP points


# --------------------------------------------------------------------------- data


def standin_activations(
    n: int, d: int = 1024, k: int = 12, seed: int = 0, spread: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """(n x d float32 activations, cluster of each): see the module docstring; `spread` is the centers' sd."""
    rng = np.random.RandomState(seed)
    w = 1.0 / np.arange(1, k)
    props = np.concatenate([[0.8], 0.2 * w / w.sum()])
    y = rng.choice(k, size=n, p=props)
    centers = rng.randn(k, d) * spread
    shared = rng.randn(64, d) / np.sqrt(d) * np.sqrt(np.linspace(40, 2, 64))[:, None] * np.sqrt(d / 64)
    X = centers[y] + (rng.randn(n, 64) @ shared).astype(np.float32)
    for c in range(k):
        rows = np.flatnonzero(y == c)
        basis = rng.randn(16, d) * np.sqrt(np.linspace(30, 3, 16) / d)[:, None] * np.sqrt(d / 16)
        X[rows] += rng.randn(len(rows), 16) @ basis
    X += rng.randn(n, d)
    return X.astype(np.float32), y


def classifier_standin(
    n: int, k: int = 20, d: int = 1024, rank: int = 48, spread: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(n x d float32 activations, cluster of each) for part 3: clusters in a low-rank subspace, plus noise.

    A rank-`rank` latent space holds the k cluster centers (sd `spread` per latent axis) and a unit
    Gaussian spread around each; it reaches the d channels through a random map with decaying
    singular values (20 down to 1), plus isotropic noise (sd 1), unequal channel scales
    (log-normal, sd 0.5) and offsets. Cluster 0 holds half the rows, the others 1 / i^0.7 of the
    rest (the smallest about 1 % of 20), like a t-SNE map's one big and many small islands.
    """
    rng = np.random.RandomState(seed)
    w = 1.0 / np.arange(1, k) ** 0.7
    y = rng.choice(k, size=n, p=np.concatenate([[0.5], 0.5 * w / w.sum()]))
    Z = rng.randn(k, rank)[y] * spread + rng.randn(n, rank)
    q, _ = np.linalg.qr(rng.randn(d, rank))
    A = (q * np.geomspace(20, 1, rank)).T  # rank x d
    X = Z @ A + rng.randn(n, d)
    X = X * np.exp(rng.randn(d) * 0.5) + rng.randn(d)
    return X.astype(np.float32), y


def standin_map(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n x 2 z-scored map, true cluster of each point; -1 for the 1 % scattered ones).

    Densities are set in z-units, as multiples of the benchmark's DBSCAN density threshold
    (240 points within 0.05 for 200,000 points, scaled with n): the ring's radius is chosen so
    that the map's standard deviation is about 1 before the final z-scoring.
    """
    rng = np.random.RandomState(seed)
    threshold = 240 / (np.pi * 0.05**2) * n / FULL_MAP  # points per z-unit²
    small = np.array([12000, 8000, 5000, 3500, 2500, 2000, 1500, 1400, 1100, 1000]) / FULL_MAP
    frac = np.concatenate([[0.8], small])
    density = np.concatenate([[3.0], [3, 6, 2.5, 8, 4, 12, 3, 6, 10, 5]]) * threshold  # x the threshold
    sizes = np.round(frac * n).astype(int)
    radii = np.sqrt(sizes / (np.pi * density))
    angles = np.linspace(0, 2 * np.pi, len(small), endpoint=False)
    unit = np.c_[np.cos(angles), np.sin(angles)]
    # per-axis variance ~ (ring² (sum p_ring - |sum p_ring u|²) + sum p r² / 2) / 2 = 1
    drift = (small[:, None] * unit).sum(0) @ (small[:, None] * unit).sum(0)
    ring = np.sqrt((2 - (frac * radii**2).sum() / 2) / (small.sum() - drift))
    centers = np.concatenate([[[0.0, 0.0]], ring * unit])
    parts, labels = [], []
    for c, (m, radius, mu) in enumerate(zip(sizes, radii, centers)):
        r, t = radius * np.sqrt(rng.random(m)), 2 * np.pi * rng.random(m)
        parts.append(mu + np.c_[r * np.cos(t), r * np.sin(t)] + rng.randn(m, 2) * 0.1 * radius)
        labels.append(np.full(m, c))
    m = n - sizes.sum()
    parts.append(rng.uniform(-1.2 * ring, 1.2 * ring, (m, 2)))
    labels.append(np.full(m, -1))
    order = rng.permutation(n)
    P = np.concatenate(parts)[order]
    return (P - P.mean(0)) / P.std(0), np.concatenate(labels)[order]


def load_activations(path: Path, n: int, seed: int, with_index: bool = False):
    """A random n of the file's finite `prefacen` rows (and their `index` when asked)."""
    import h5py

    with h5py.File(path, "r") as f:
        if "prefacen" not in f:
            sys.exit(f"{path} has no 'prefacen' dataset; give a file written by `introspect extract`")
        ds = f["prefacen"]
        rows = np.sort(np.random.RandomState(seed).choice(len(ds), n, replace=False)) if len(ds) > n else slice(None)
        X = np.asarray(ds[rows], dtype=np.float32)
        index = np.asarray(f["index"][rows]) if with_index and "index" in f else None
    keep = tsne.finite_rows(X)
    if not keep.all():
        print(f"dropped {int((~keep).sum())} rows with NaN or inf")
    if with_index:
        return X[keep], None if index is None else index[keep]
    return X[keep]


# --------------------------------------------------------------------------- part 1: t-SNE


def knn_recall(X: np.ndarray, Y: np.ndarray, idx: np.ndarray, k: int = 10) -> float:
    """Mean share of each sampled point's k nearest neighbours among all points that the map keeps."""
    from sklearn.neighbors import NearestNeighbors

    hx = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X[idx], return_distance=False)[:, 1:]
    hy = NearestNeighbors(n_neighbors=k + 1).fit(Y).kneighbors(Y[idx], return_distance=False)[:, 1:]
    return float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(hx, hy)]))


def bench_tsne(X: np.ndarray, n_iter: int, n_pca: int, sample: int, seed: int) -> None:
    from sklearn.manifold import trustworthiness

    n, d = X.shape
    t = time.perf_counter()
    Z, curve = tsne.pca(X, n_pca, seed=seed)
    t_pca = time.perf_counter() - t
    print(
        f"t-SNE input: {n} x {d}; PCA to {Z.shape[1]} in {t_pca:.1f} s (shared by both, not in their times); "
        f"80 % of the variance takes {tsne.components_for(curve)} of {len(curve)} components"
    )
    params = tsne.TSNEParams(perplexity=30, n_iter=n_iter, learning_rate="auto", n_jobs=-1, seed=seed)
    lr = tsne.backend_kwargs(params, "opentsne", n)["estimator"]["learning_rate"]
    print(
        f"  perplexity 30, {n_iter} iterations (250 exaggerated), learning_rate auto = {lr:.1f} "
        f"(scikit-learn: {lr / 4:.1f} in its unit), PCA init, n_jobs -1"
    )
    idx = np.random.RandomState(seed + 1).choice(n, min(sample, n), replace=False)
    results = {}
    for backend in ("opentsne", "sklearn"):
        t = time.perf_counter()
        Y, _ = tsne.embed(Z, params, backend=backend)
        secs = time.perf_counter() - t
        tw = trustworthiness(X[idx], Y[idx], n_neighbors=10)
        results[backend] = (secs, tw)
        print(
            f"  {backend:9s} {secs:7.1f} s  trustworthiness {tw:.4f}  "
            f"(10-NN recall over all {n} points: {knn_recall(X, Y, idx):.4f})"
        )
    (so, to), (ss, ts) = results["opentsne"], results["sklearn"]
    print(
        f"  speed sklearn/openTSNE: {ss / so:.2f}x (target >= 1.5x); trustworthiness openTSNE - sklearn: "
        f"{to - ts:+.4f} (target >= 0)"
    )


# --------------------------------------------------------------------------- part 2: clustering


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> int:
    """Reset the peak RSS to the current RSS; returns it (kB)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kb("VmHWM")


def child(method: str, map_path: str, labels_path: str, params: str) -> None:
    """Runs in its own process: fit one clusterer, report seconds and peak memory above the baseline."""
    P = np.load(map_path)
    kw = json.loads(params)
    est = KNNDBSCAN(**kw) if method == "knn-dbscan" else make_clusterer(method, **kw)
    base = _reset_peak()
    t = time.perf_counter()
    labels = est.fit_predict(P)
    secs = time.perf_counter() - t
    peak = _status_kb("VmHWM")
    np.save(labels_path, labels)
    print(
        json.dumps(
            dict(
                seconds=secs,
                base_kb=base,
                peak_kb=peak,
                ru_maxrss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            )
        )
    )


def run_child(method: str, map_path: Path, tmp: Path, params: dict) -> tuple[dict, np.ndarray]:
    labels_path = tmp / f"{method}.npy"
    out = subprocess.run(
        [sys.executable, __file__, "--child", method, str(map_path), str(labels_path), json.dumps(params)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        sys.exit(f"{method} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1]), np.load(labels_path)


def neighbourhood_entries(P: np.ndarray, eps: float) -> int:
    """Sum over points of |points within eps| (self included): the size of DBSCAN's neighbour lists."""
    from sklearn.neighbors import KDTree

    return int(KDTree(P).two_point_correlation(P, np.array([eps]))[0])


def bench_cluster(n: int, seed: int) -> None:
    from sklearn.metrics import adjusted_rand_score

    P, truth = standin_map(n, seed)
    eps, half = REFERENCE["eps"], max(2, round(REFERENCE["min_samples"] * n / FULL_MAP))
    knn_params = dict(eps=eps, min_samples=half, subsample=REFERENCE["subsample"], n_neighbors=5, random_state=42)
    db_params = dict(eps=eps, min_samples=2 * half)
    print(
        f"map: {n} points, {len(np.unique(truth[truth >= 0]))} clusters (largest {np.mean(truth == 0):.0%}), "
        f"{np.mean(truth < 0):.0%} scattered; KNN-DBSCAN eps {eps} min_samples {half} on a half, "
        f"DBSCAN eps {eps} min_samples {2 * half} on all"
    )
    with tempfile.TemporaryDirectory(prefix="bench_cluster_") as tmp:
        tmp = Path(tmp)
        np.save(tmp / "map.npy", P)
        (rk, lk), (rd, ld) = (
            run_child("knn-dbscan", tmp / "map.npy", tmp, knn_params),
            run_child("dbscan", tmp / "map.npy", tmp, db_params),
        )
    mem = {m: (r["peak_kb"] - r["base_kb"]) / 1024 for m, r in (("knn", rk), ("db", rd))}
    for name, r, labels, mb in (("KNN-DBSCAN", rk, lk, mem["knn"]), ("DBSCAN", rd, ld, mem["db"])):
        k = len(np.unique(labels[labels >= 0]))
        scattered = truth >= 0
        print(
            f"  {name:10s} {r['seconds']:7.2f} s  peak +{mb:7.1f} MiB (VmHWM {r['peak_kb'] / 1024:.0f} MiB, "
            f"{r['base_kb'] / 1024:.0f} before the fit)  {k} clusters, noise {np.mean(labels < 0):.1%}, "
            f"ARI vs truth {adjusted_rand_score(truth[scattered], labels[scattered]):.4f}"
        )
    both = ld >= 0
    print(
        f"  DBSCAN/KNN-DBSCAN: {rd['seconds'] / rk['seconds']:.2f}x the time (target >= 3), "
        f"{mem['db'] / max(mem['knn'], 1e-9):.2f}x the peak memory (target >= 3)"
    )
    print(
        f"  ARI KNN-DBSCAN vs DBSCAN: {adjusted_rand_score(ld[both], lk[both]):.4f} on the {both.mean():.1%} points "
        f"DBSCAN clusters (target >= 0.95), {adjusted_rand_score(ld, lk):.4f} on all (DBSCAN's noise as one label)"
    )
    sub = np.random.RandomState(42).permutation(n)[: int(n * REFERENCE["subsample"])]
    e_full, e_half = neighbourhood_entries(P, eps), neighbourhood_entries(P[sub], eps)
    print(
        f"  eps-neighbourhood entries: {e_full:,} on all points, {e_half:,} on the half "
        f"({e_full / e_half:.2f}x: density x points, so ~(1/0.5)² = 4x)"
    )


# --------------------------------------------------------------------------- part 3: classifier


def classifier_rows(path: Path | None, n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(activations, cluster labels, where the labels come from) for part 3."""
    if path is None:
        X, y = classifier_standin(n, k=k, seed=seed)
        return X, y, f"the generated stand-in's {k} clusters (low rank + noise, half the rows in one)"
    import h5py

    X, index = load_activations(path, n, seed, with_index=True)
    clusters = path.with_name("clusters.h5")
    if index is not None and clusters.is_file():
        with h5py.File(clusters, "r") as f:
            where = {int(i): int(c) for i, c in zip(f["index"][:], f["label"][:])}
        if all(int(i) in where for i in index):
            return X, np.array([where[int(i)] for i in index]), f"the cluster stage's labels in {clusters}"
    from sklearn.cluster import KMeans

    y = KMeans(k, n_init=2, random_state=seed).fit_predict(tsne.pca(X, 50)[0])
    return X, y, f"k-means ({k}) on PCA-50 (no matching clusters.h5; easier than t-SNE clusters)"


def bench_classifier(X: np.ndarray, y: np.ndarray, pca: int | float, seed: int, skip_today: bool = False) -> None:
    from introspect.science import classifier

    print(
        f"rows: {len(X)} x {X.shape[1]}, {len(np.unique(y[y >= 0]))} clusters; fit_validated with the stage's "
        "defaults (5 folds x 10 Cs, balanced, 20 % held out, refit on all rows); seconds include the refit"
    )
    figures = {}
    runs = [
        ("today: raw 1024-d, default threads", 0, None),
        ("raw 1024-d, 1 BLAS thread", 0, 1),
        (f"whitened PCA {pca}, 1 thread (new)", pca, 1),
    ]
    if skip_today:
        runs = runs[1:]
    for name, k, threads in runs:
        t = time.perf_counter()
        est, m = classifier.fit_validated(X, y, seed=seed, pca=k, threads=threads)
        secs = time.perf_counter() - t
        held_out = classifier.holdout_split(y, m["test_size"], seed)[1]
        check = classifier.check_onnx(classifier.to_onnx(est, X.shape[1]), est, X[held_out])
        figures[name] = (secs, m["accuracy"])
        print(
            f"  {name:36s} {secs:8.1f} s  held-out accuracy {m['accuracy']:.4f}, balanced "
            f"{m['balanced_accuracy']:.4f}  C {m['C_final']:.3g}  components {m['pca_components'] or X.shape[1]}  "
            f"ONNX max |score diff| {check['max_abs_diff']:.1e}, {check['label_mismatches']} label mismatches"
        )
    (s1, a1) = figures[runs[-1][0]]
    for name, _, _ in runs[:-1]:
        s0, a0 = figures[name]
        print(f"  new vs {name}: {s0 / s1:.1f}x faster, held-out accuracy {a1 - a0:+.4f}")


def project_classifier(sizes: list[int], k: int, pca: int | float, seed: int, target: int = 342_000) -> None:
    """The new fit alone at several sizes, t = c + a N fitted as bench/scale.py does, projected to `target` rows."""
    from introspect.science import classifier

    print(f"  new fit (pca={pca}, 1 thread) on the stand-in with {k} clusters, projected to {target:,} rows:")
    secs = []
    for n in sizes:
        X, y = classifier_standin(n, k=k, seed=seed)
        t = time.perf_counter()
        _, m = classifier.fit_validated(X, y, seed=seed, pca=pca)
        secs.append(time.perf_counter() - t)
        print(f"    {n:>7,} rows  {secs[-1]:7.1f} s  held-out accuracy {m['accuracy']:.4f}", flush=True)
    a, c = np.polyfit(sizes, secs, 1)
    c, a = max(c, 0.0), max(a, 0.0)
    total = c + a * target
    print(f"    t = {c:.1f} s + {a * 1000:.3f} ms/row -> {total:.0f} s ({total / 60:.1f} min) at {target:,}")


# --------------------------------------------------------------------------- main


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--activations", type=Path, default=None, help="HDF5 file with a 'prefacen' dataset")
    ap.add_argument("--tsne-points", type=int, default=None, help="default 20,000 (2,000 with --quick)")
    ap.add_argument(
        "--iters", type=int, default=None, help="t-SNE iterations, 250 exaggerated (default 750, 300 quick)"
    )
    ap.add_argument("--pca", type=int, default=50, help="PCA components before t-SNE (0: off)")
    ap.add_argument("--map-points", type=int, default=None, help="default 200,000 (20,000 with --quick)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-tsne", action="store_true")
    ap.add_argument("--skip-cluster", action="store_true")
    ap.add_argument("--skip-classifier", action="store_true")
    ap.add_argument("--classifier-points", type=int, default=None, help="default 3,000 (1,000 with --quick)")
    ap.add_argument("--skip-today", action="store_true", help="part 3 without today's threaded raw fit (slow)")
    ap.add_argument(
        "--project", default="", help="part 3: also time the new fit alone at these sizes (e.g. 4000,8000,16000)"
    )
    ap.add_argument("--skip-compare", action="store_true", help="part 3: only --project")
    ap.add_argument("--clusters", type=int, default=20, help="clusters for part 3 (stand-in or k-means)")
    ap.add_argument(
        "--classifier-pca", type=float, default=64, help="the new fit's components, or a share of variance < 1"
    )
    args = ap.parse_args()
    n_tsne = args.tsne_points or (2_000 if args.quick else 20_000)
    n_iter = args.iters or (300 if args.quick else 750)
    n_map = args.map_points or (20_000 if args.quick else FULL_MAP)
    if not args.skip_tsne:
        if args.activations:
            X = load_activations(args.activations, n_tsne, args.seed)
            print(f"1. t-SNE, openTSNE vs scikit-learn, on {args.activations}")
        else:
            X, _ = standin_activations(n_tsne, seed=args.seed)
            print("1. t-SNE, openTSNE vs scikit-learn, on the generated stand-in (12 clusters, 80 % in one, 1024-d)")
        bench_tsne(X, n_iter, args.pca, sample=2000 if not args.quick else 500, seed=args.seed)
    if not args.skip_cluster:
        print("2. KNN-DBSCAN vs DBSCAN on a generated map (each in its own process)")
        bench_cluster(n_map, args.seed)
    if not args.skip_classifier:
        n_clf = args.classifier_points or (1_000 if args.quick else 3_000)
        pca = int(args.classifier_pca) if args.classifier_pca >= 1 else args.classifier_pca
        if not args.skip_compare:
            X, y, source = classifier_rows(args.activations, n_clf, args.clusters, args.seed)
            print(f"3. the classifier, on the 1,024 activations vs whitened PCA; labels: {source}")
            bench_classifier(X, y, pca, args.seed, skip_today=args.skip_today)
        if args.project:
            project_classifier([int(v) for v in args.project.split(",")], args.clusters, pca, args.seed)


if __name__ == "__main__":
    main()
