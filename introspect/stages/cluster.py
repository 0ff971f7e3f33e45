"""The cluster stage: t-SNE of the subset, clusters on the map, a validated classifier in ONNX.

Reads `<out>/subset.h5` (`prefacen`, `index`); writes `<out>/clusters.h5` (`tsne`, `index`,
`label`, the PCA curve), `<out>/classifier.onnx` and `<out>/metrics.json`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np
import onnx

from ..engine import store
from ..errors import UserError
from ..science import classifier, clustering, tsne

log = logging.getLogger(__name__)


def tsne_params(t: dict) -> tsne.TSNEParams:
    return tsne.TSNEParams(
        perplexity=float(t["perplexity"]),
        n_iter=int(t["n_iter"]),
        learning_rate=t["learning_rate"],
        num_neighbors=int(t["num_neighbors"]),
        seed=int(t["seed"]),
    )


def clusterer(c: dict):
    """The configured clusterer; keys a method does not take are not passed to it."""
    if c["method"] == "knn-dbscan":
        params = dict(
            eps=c["eps"],
            min_samples=c["min_samples"],
            subsample=c["subsample"],
            n_neighbors=c["n_neighbors"],
            random_state=c["seed"],
        )
    elif c["method"] == "dbscan":
        params = dict(eps=c["eps"], min_samples=c["min_samples"])
    elif c["method"] == "hdbscan":
        params = dict(min_cluster_size=c["min_cluster_size"], min_samples=c["min_samples"])
    else:
        params = dict(min_samples=c["min_samples"], min_cluster_size=c["min_cluster_size"])
    return clustering.make_clusterer(c["method"], **params)


def load_subset(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(prefacen, index) of the subset, NaN/inf rows reported and left out."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; run `make extract` (or `introspect extract`) first")
    with h5py.File(path, "r") as f:
        X, index = f["prefacen"][:], f["index"][:]
    ok = tsne.finite_rows(X)
    if not ok.all():
        log.warning(
            "left out %d rows with NaN or inf activations (lines %s...)", int((~ok).sum()), index[~ok][:5].tolist()
        )
    return X[ok], index[ok]


def run(cfg: dict) -> dict:
    """Map, cluster and learn the clusters; everything measured goes to metrics.json."""
    out = Path(cfg["extract"]["out"])
    t0 = time.perf_counter()
    X, index = load_subset(out / "subset.h5")
    if len(X) < 10:
        raise UserError(f"the subset holds {len(X)} usable rows; extract more images or raise extract.fraction")
    t, c, k = cfg["tsne"], cfg["cluster"], cfg["classifier"]
    params = tsne_params(t)
    tsne.check_perplexity(len(X), params.perplexity, params.num_neighbors)
    reduced, curve = tsne.pca(X, min(int(t["pca"]), *X.shape), seed=int(t["seed"]))
    t1 = time.perf_counter()
    Y, backend = tsne.embed(reduced, params, t["backend"])
    t2 = time.perf_counter()
    labels = clusterer(c).fit_predict(Y)
    t3 = time.perf_counter()
    keep = labels >= 0
    clf, metrics = classifier.fit_validated(
        X,
        labels,
        test_size=float(k["test_size"]),
        seed=int(k["seed"]),
        class_weight=k["class_weight"],
        max_iter=int(k["max_iter"]),
        cv=int(k["cv"]),
    )
    t4 = time.perf_counter()
    net = onnx.load(cfg["model"]["path"], load_external_data=False)
    model = classifier.match_net(classifier.to_onnx(clf, X.shape[1]), net)
    _, held_out = classifier.holdout_split(labels, float(k["test_size"]), int(k["seed"]))
    agreement = classifier.check_onnx(model, clf, X[held_out] if len(held_out) else X[keep])

    sizes = np.bincount(labels[keep])
    metrics = {
        "rows": int(len(X)),
        "clusters": int(len(sizes)),
        "noise": int((~keep).sum()),
        "sizes": sizes.tolist(),
        "shares": (sizes / len(X)).round(6).tolist(),
        "pca": {
            "curve": curve.round(6).tolist(),
            "components_for_80pct": tsne.components_for(curve, 0.8),
            "used": int(t["pca"]),
        },
        "tsne": {
            "backend": backend,
            **{f: getattr(params, f) for f in ("perplexity", "n_iter", "learning_rate", "num_neighbors", "seed")},
        },
        "cluster": dict(c),
        "classifier": metrics,
        "onnx_check": agreement,
        "seconds": {"pca": t1 - t0, "tsne": t2 - t1, "cluster": t3 - t2, "classifier": t4 - t3},
    }
    _write_clusters(out / "clusters.h5", Y, index, labels, curve, metrics)
    store.atomic_write(out / "classifier.onnx", model.SerializeToString())
    store.atomic_write(out / "metrics.json", json.dumps(metrics, indent=1).encode())
    return metrics


def _write_clusters(
    path: Path, Y: np.ndarray, index: np.ndarray, labels: np.ndarray, curve: np.ndarray, metrics: dict
) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f["tsne"] = Y.astype(np.float32)
        f["index"] = index.astype(np.int64)
        f["label"] = labels.astype(np.int64)
        f["pca_curve"] = curve
        f.attrs["tsne"] = json.dumps(metrics["tsne"])
        f.attrs["cluster"] = json.dumps(metrics["cluster"])
    os.replace(tmp, path)


def summary(m: dict) -> str:
    """One screen: the map, the clusters, and whether the classifier can be trusted."""
    c = m["classifier"]
    auc = c.get("roc_auc", {})
    lines = [
        f"{m['rows']} points, t-SNE by {m['tsne']['backend']} (perplexity {m['tsne']['perplexity']}, {m['tsne']['n_iter']} iterations); "
        f"PCA: {m['pca']['components_for_80pct']} components for 80 % of the variance",
        f"{m['clusters']} clusters by {m['cluster']['method']}, {m['noise']} noise; shares: "
        + ", ".join(f"{i}:{s:.1%}" for i, s in enumerate(m["shares"])),
        f"classifier held-out accuracy {c['accuracy']:.3f}, balanced {c.get('balanced_accuracy', float('nan')):.3f}, "
        + ", ".join(f"AUC {k} {v:.3f}" for k, v in auc.items() if isinstance(v, float)),
        f"ONNX vs scikit-learn: labels agree on {m['onnx_check']['n_rows'] - m['onnx_check']['label_mismatches']} of {m['onnx_check']['n_rows']} held-out rows, max score diff {m['onnx_check'].get('max_abs_diff', float('nan')):.2e}",
    ]
    lines += [f"WARNING: {w}" for w in c.get("warnings", [])]
    return "\n".join(lines)
