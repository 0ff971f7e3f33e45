"""The cluster stage: t-SNE of the subset, clusters on the map, a validated classifier in ONNX.

Reads `<out>/subset.h5` (`prefacen`, `index`); writes `<out>/clusters.h5` (`tsne`, `index`,
`label`, the PCA curve; as attributes the t-SNE and clustering settings, and the net, layer
and preprocessing the activations came from, which merge checks), `<out>/classifier.onnx`
and `<out>/metrics.json`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine import nets, store
from ..engine.rundir import RunDir, write_bytes
from ..science import classifier, tsne
from ..science.clustering import ClusterSettings
from .settings import ClassifierSettings, check_pca

#: subset.h5 attributes that say which net made the activations; carried into clusters.h5.
PROVENANCE = ("model_sha256", "layer", "embedding", "preprocess", "list_sha256")
#: Fewest usable rows worth mapping.
MIN_ROWS = 10


def load_subset(run_dir: RunDir) -> tuple[np.ndarray, np.ndarray, dict]:
    """(prefacen, index, provenance) of the subset, NaN/inf rows reported and left out."""
    path = run_dir.require("subset", "extract")
    X, index = store.load_activations(path, MIN_ROWS)
    attrs = store.read_attrs(path)
    return X, index, {k: attrs[k] for k in PROVENANCE if k in attrs}


@dataclass(frozen=True)
class ClusterResult:
    metrics: dict  # what metrics.json holds
    files: list[Path]

    def text(self) -> str:
        """One screen: the map, the clusters, and whether the classifier can be trusted."""
        m = self.metrics
        c = m["classifier"]
        auc = c.get("roc_auc", {})
        check = m["onnx_check"]
        lines = [
            f"{m['rows']} points, t-SNE by {m['tsne']['backend']} (perplexity {m['tsne']['perplexity']}, "
            f"{m['tsne']['n_iter']} iterations); PCA: {m['pca']['components_for_80pct']} components for 80 % of the "
            "variance",
            f"{m['clusters']} clusters by {m['cluster']['method']}, {m['noise']} noise; shares: "
            + ", ".join(f"{i}:{s:.1%}" for i, s in enumerate(m["shares"])),
            f"classifier held-out accuracy {c['accuracy']:.3f}, "
            f"balanced {c.get('balanced_accuracy', float('nan')):.3f}, "
            + ", ".join(f"AUC {k} {v:.3f}" for k, v in auc.items() if isinstance(v, float)),
            f"ONNX vs scikit-learn: labels agree on {check['n_rows'] - check['label_mismatches']} of "
            f"{check['n_rows']} held-out rows, max score diff {check.get('max_abs_diff', float('nan')):.2e}",
        ]
        lines += [f"WARNING: {w}" for w in c.get("warnings", [])]
        lines += [f"  -> {f}" for f in self.files]
        return "\n".join(lines)


def run(cfg: dict) -> ClusterResult:
    """Map, cluster and learn the clusters; everything measured goes to metrics.json."""
    run_dir = RunDir(cfg["extract"]["out"])
    t = cfg["tsne"]
    params = tsne.TSNEParams.from_config(t)
    clustering = ClusterSettings.from_config(cfg["cluster"])
    k = ClassifierSettings.from_config(cfg["classifier"])
    n_pca = check_pca(t)
    net_path = Path(cfg["model"]["path"])
    with run_dir.stage("cluster"):
        t0 = time.perf_counter()
        X, index, provenance = load_subset(run_dir)
        tsne.check_perplexity(len(X), params.perplexity, params.num_neighbors)
        net = nets.load(net_path, hint="run `make model` or set model.path")
        reduced, curve = tsne.pca(X, min(n_pca, *X.shape), seed=params.seed)
        t1 = time.perf_counter()
        Y, backend = tsne.embed(reduced, params, t["backend"])
        t2 = time.perf_counter()
        labels = clustering.estimator().fit_predict(Y)
        t3 = time.perf_counter()
        keep = labels >= 0
        clf, metrics = classifier.fit_validated(
            X,
            labels,
            test_size=k.test_size,
            seed=k.seed,
            class_weight=k.class_weight,
            max_iter=k.max_iter,
            cv=k.cv,
            pca=k.pca,
        )
        t4 = time.perf_counter()
        model = classifier.match_net(classifier.to_onnx(clf, X.shape[1]), net)
        _, held_out = classifier.holdout_split(labels, k.test_size, k.seed)
        agreement = classifier.check_onnx(model, clf, X[held_out] if len(held_out) else X[keep])

        sizes = np.bincount(labels[keep])
        curve_info = {"curve": curve.round(6).tolist(), "components_for_80pct": tsne.components_for(curve, 0.8)}
        metrics = {
            "rows": int(len(X)),
            "clusters": int(len(sizes)),
            "noise": int((~keep).sum()),
            "sizes": sizes.tolist(),
            "shares": (sizes / len(X)).round(6).tolist(),
            "pca": {**curve_info, "used": n_pca},
            "tsne": {"backend": backend, **{f: getattr(params, f) for f in TSNE_FIELDS}},
            "cluster": dict(cfg["cluster"]),
            "classifier": metrics,
            "onnx_check": agreement,
            "provenance": provenance,
            "seconds": {"pca": t1 - t0, "tsne": t2 - t1, "cluster": t3 - t2, "classifier": t4 - t3},
        }
        write_clusters(run_dir.path("clusters"), Y, index, labels, curve, metrics)
        write_bytes(run_dir.path("classifier"), model.SerializeToString())
        write_bytes(run_dir.path("metrics"), json.dumps(metrics, indent=1).encode())
    return ClusterResult(metrics, [run_dir.path(n) for n in ("clusters", "classifier", "metrics")])


TSNE_FIELDS = ("perplexity", "n_iter", "learning_rate", "num_neighbors", "seed")


def write_clusters(
    path: Path, Y: np.ndarray, index: np.ndarray, labels: np.ndarray, curve: np.ndarray, metrics: dict
) -> None:
    with store.writing_h5(path) as f:
        f["tsne"] = Y.astype(np.float32)
        f["index"] = index.astype(np.int64)
        f["label"] = labels.astype(np.int64)
        f["pca_curve"] = curve
        f.attrs["tsne"] = json.dumps(metrics["tsne"])
        f.attrs["cluster"] = json.dumps(metrics["cluster"])
        for key, value in metrics["provenance"].items():
            f.attrs[key] = value
