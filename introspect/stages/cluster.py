"""The cluster stage: the map of the subset, clusters, facets, and a validated classifier in ONNX.

Reads `<out>/subset.h5` (`prefacen`, `facen`, `index`). The t-SNE map is always made (it is
what a person looks at); the clusters are found where `cluster.space` says: in the
activations' whitened PCA space (the default, `science.discovery`: method and number of
clusters chosen by a stability rule without labels) or on the map (the reference's
KNN-DBSCAN; with `cluster.settings = "auto"` at the sweep's recommendation). Then: facets
(groups of clusters a person names once), clusters that are mostly one or a few people
(identity), and the classifier with its "unknown" threshold calibrated on held-out rows.

Writes `<out>/clusters.h5` (`tsne`, `index`, `label`, the PCA curve, the PCA projection the
map was made from: `map_pca_mean`, `map_pca_components`, `map_pca_rows`, which place labelled
images on the map; as attributes the
settings, and the net, layer and preprocessing the activations came from, which merge
checks), `<out>/classifier.onnx` and `<out>/metrics.json`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..engine import nets, store
from ..engine.rundir import ARTIFACTS, RunDir, write_bytes
from ..errors import UserError
from ..science import classifier, discovery, identity, tsne, views
from ..science.clustering import PCA_METHODS, ClusterSettings
from .noid import identity_removed
from .settings import ClassifierSettings, check_pca

log = logging.getLogger(__name__)

#: subset.h5 attributes that say which net made the activations; carried into clusters.h5.
PROVENANCE = ("model_sha256", "layer", "embedding", "preprocess", "list_sha256")
#: Fewest usable rows worth mapping.
MIN_ROWS = 10
TSNE_FIELDS = ("perplexity", "n_iter", "learning_rate", "num_neighbors", "seed")


@dataclass(frozen=True)
class Subset:
    X: np.ndarray  # prefacen
    E: np.ndarray | None  # facen, for the identity measure
    index: np.ndarray
    provenance: dict
    M: np.ndarray | None = None  # prefacen_mean (the spatial mean), when extract kept it

    def feature(self, name: str) -> np.ndarray | None:
        return self.X if name == "center" else self.M


def load_subset(run_dir: RunDir) -> Subset:
    """The subset's activations, NaN/inf rows reported and left out."""
    path = run_dir.require("subset", "extract")
    X, index = store.load_activations(path, MIN_ROWS)
    E = store.rows_at(path, index, "facen")
    M = store.rows_at(path, index, views.DATASETS["mean"])
    attrs = store.read_attrs(path)
    return Subset(X, E, index, {k: attrs[k] for k in PROVENANCE if k in attrs}, M)


@dataclass(frozen=True)
class ClusterResult:
    metrics: dict  # what metrics.json holds
    files: list[Path]

    def text(self) -> str:
        """One screen: the map, the clusters, and whether the classifier can be trusted."""
        m = self.metrics
        c = m["classifier"]
        d = m["discovery"]
        auc = c.get("roc_auc", {})
        check = m["onnx_check"]
        how = f"{d['method']} in the {d['space']} space" + (f", k chosen by {d['rule']}" if d.get("rule") else "")
        noise = f"{m['noise']} noise" + (
            f" (DBSCAN left {d['dbscan_noise']:.1%} unclustered before its KNN labelled them)"
            if d.get("dbscan_noise")
            else ""
        )
        lines = [
            f"{m['rows']} points, t-SNE by {m['tsne']['backend']} (perplexity {m['tsne']['perplexity']}, "
            f"{m['tsne']['n_iter']} iterations); PCA: {m['pca']['components_for_80pct']} components for 80 % of the "
            "variance",
            f"{m['clusters']} clusters by {how}; {noise}; shares: "
            + ", ".join(f"{i}:{s:.1%}" for i, s in enumerate(m["shares"])),
        ]
        if d.get("boundary"):
            lines.append(f"WARNING: the rule's pick k = {d['k']} is at the edge of cluster.k_grid; widen the grid")
        flagged = [r["cluster"] for r in m.get("identity", []) if r["flagged"]]
        if flagged:
            lines.append(f"mostly one or a few people (identity, not an attribute): clusters {flagged}")
        if m.get("facets"):
            lines.append("facets: " + "; ".join(f"{f['id']}: clusters {f['clusters']}" for f in m["facets"]))
        if m.get("unknown"):
            u = m["unknown"]
            lines.append(f"unknown: top probability below {u['threshold']:.3f} ({u['quantile']:.1%} of held-out rows)")
        lines += [
            f"classifier held-out accuracy {c['accuracy']:.3f}, "
            f"balanced {c.get('balanced_accuracy', float('nan')):.3f}, "
            + ", ".join(f"AUC {k} {v:.3f}" for k, v in auc.items() if isinstance(v, float)),
            f"ONNX vs scikit-learn: labels agree on {check['n_rows'] - check['label_mismatches']} of "
            f"{check['n_rows']} held-out rows, max score diff {check.get('max_abs_diff', float('nan')):.2e}",
        ]
        lines += [f"WARNING: {w}" for w in c.get("warnings", [])]
        lines += [_view_line(v) for v in m.get("views", [])[1:]]
        lines += [f"  -> {f}" for f in self.files]
        return "\n".join(lines)


def _view_line(v: dict) -> str:
    """One line per further view: what it found and how it is grafted, or why it was skipped."""
    if v.get("skipped"):
        return f"view {v['name']}: skipped: {v['skipped']}"
    d, clf = v["discovery"], v.get("classifier") or {}
    flagged = sum(r["flagged"] for r in v.get("identity") or [])
    head = f"{v['grafted']} head, held-out accuracy {clf['accuracy']:.3f}" if clf else "no head (a single cluster)"
    noise = f", {v['noise']} rows without a label" if v.get("noise") else ""
    return (
        f"view {v['name']} ({v['feature']}): {v['clusters']} clusters by {d.get('method')} "
        f"(k = {d.get('k')}){noise}; {flagged} mostly one or a few people; {head}"
    )


def settle(c: ClusterSettings, params: tsne.TSNEParams, run_dir: RunDir, rows: int):
    """On the map with settings "auto": the sweep's recommendation for this subset (logged), else one line."""
    if c.space != "map" or c.settings != "auto":
        return c, params
    sweep = run_dir.read_json("sweep_json", "sweep")
    rec = (sweep or {}).get("recommended")
    if not sweep or sweep.get("rows_mapped") != rows or not rec:
        raise UserError(
            "cluster.space = 'map' with settings = 'auto' takes the sweep's choice for this subset: run "
            "`introspect sweep` first, or set cluster.settings = 'fixed' with eps and min_samples"
        )
    log.info("cluster: the sweep's choice: perplexity %g, eps %g, min_samples %d", *rec.values())
    return replace(c, eps=rec["eps"], min_samples=rec["min_samples"]), replace(params, perplexity=rec["perplexity"])


def discover(X: np.ndarray, Y: np.ndarray, c: ClusterSettings) -> tuple[np.ndarray, np.ndarray, dict]:
    """(labels, whitened PCA rows, what was done): the center view, in the configured space."""
    if c.space == "map":
        n_comp = discovery.signal_components(X, min(c.components, *X.shape), random_state=c.seed)
        Z = discovery.whitened_pca(n_comp, c.seed).fit_transform(X)
        est = c.estimator()
        labels = est.fit_predict(Y)
        raw = getattr(est, "dbscan_labels_", labels)
        return labels, Z, {"space": "map", "method": c.map_method, "dbscan_noise": float(np.mean(raw < 0))}
    labels, Z, done = views.discover_pca(views.prepare(views.VIEWS["center"], X), c)
    _log_pick("center", done)
    return labels, Z, done


def _log_pick(view: str, done: dict) -> None:
    if "rule" in done:
        log.info(
            "cluster: view %s: %s with k = %d chosen by stability%s",
            view,
            done["method"],
            done["k"],
            " (AT THE GRID'S EDGE)" * done["boundary"],
        )


def run(cfg: dict) -> ClusterResult:
    """Map, cluster and learn the clusters; everything measured goes to metrics.json."""
    run_dir = RunDir(cfg["extract"]["out"])
    t = cfg["tsne"]
    params = tsne.TSNEParams.from_config(t)
    c = ClusterSettings.from_config(cfg["cluster"])
    k = ClassifierSettings.from_config(cfg["classifier"])
    n_pca = check_pca(t)
    net_path = Path(cfg["model"]["path"])
    with run_dir.stage("cluster") as timing:
        t0 = time.perf_counter()
        s = load_subset(run_dir)
        X = s.X
        c.check_rows(len(X))
        c, params = settle(c, params, run_dir, len(X))
        params = tsne.fit_to_rows(params, len(X))
        tsne.check_perplexity(len(X), params.perplexity, params.num_neighbors)
        net = nets.load(net_path, hint="pass --model PATH (the net) or set model.path")
        reduced, curve, pca_mean, pca_components = tsne.pca_fit(X, min(n_pca, *X.shape), seed=params.seed)
        t1 = time.perf_counter()
        Y, backend = tsne.embed(reduced, params, t["backend"])
        t2 = time.perf_counter()
        labels, Z, done = discover(X, Y, c)
        t3 = time.perf_counter()
        head = fit_head(X, labels, k, c.unknown, net)
        t4 = time.perf_counter()
        steps = {"partition": t3 - t2, "head": t4 - t3}
        center = view_summary(views.VIEWS["center"], labels, Z, done, head, s.E, c, t4 - t2, steps)
        others = [fit_view(views.VIEWS[name], s, run_dir, c, k, net) for name in c.views[1:]]
        t5 = time.perf_counter()

        keep = labels >= 0
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
            "cluster": {**cfg["cluster"], "eps": c.eps, "min_samples": c.min_samples, "method": done["method"]},
            "discovery": done,
            "facets": center["facets"],
            "identity": center["identity"],
            "unknown": center["unknown"],
            "classifier": head.metrics,
            "onnx_check": head.agreement,
            "provenance": s.provenance,
            "views": [center] + [v.summary for v in others],
            "seconds": {"pca": t1 - t0, "tsne": t2 - t1, "cluster": t3 - t2, "classifier": t4 - t3, "views": t5 - t4},
        }
        projection = (pca_mean, pca_components, reduced)
        labelled = {"center": labels} | {v.summary["name"]: v.labels for v in others if v.labels is not None}
        write_clusters(run_dir.path("clusters"), Y, s.index, labels, curve, metrics, projection, labelled)
        write_bytes(run_dir.classifier("center"), head.model.SerializeToString())
        headed = {v.summary["name"]: v.head for v in others if v.head is not None}
        for name, h in headed.items():
            write_bytes(run_dir.classifier(name), h.model.SerializeToString())
        for name in set(views.VIEWS) - headed.keys() - {"center"}:  # an earlier run's head would be grafted
            run_dir.classifier(name).unlink(missing_ok=True)
        write_bytes(run_dir.path("metrics"), json.dumps(metrics, indent=1).encode())
        timing.extra = {"steps": {k: round(v, 3) for k, v in metrics["seconds"].items()}} | {
            "views": {v["name"]: v.get("steps") for v in metrics["views"] if not v.get("skipped")}
        }
    files = ["clusters", "classifier", "metrics"]
    extra = [run_dir.classifier(v["name"]) for v in metrics["views"][1:] if v.get("classifier_file")]
    return ClusterResult(metrics, [run_dir.path(n) for n in files] + extra)


@dataclass(frozen=True)
class Head:
    """A view's classifier: activation -> cluster, validated on held-out rows and exported to ONNX."""

    model: object  # onnx.ModelProto
    metrics: dict  # fit_validated's held-out figures (without "unknown")
    unknown: dict | None
    agreement: dict  # ONNX vs scikit-learn on the held-out rows
    estimator: object = None  # the fitted scikit-learn classifier the ONNX graph was exported from


def fit_head(F: np.ndarray, labels: np.ndarray, k: ClassifierSettings, unknown: float, net) -> Head:
    """The classifier of one view on its input feature `F` (noise rows left out), checked in ONNX."""
    clf, metrics = classifier.fit_validated(
        F,
        labels,
        test_size=k.test_size,
        seed=k.seed,
        class_weight=k.class_weight,
        max_iter=k.max_iter,
        cv=k.cv,
        pca=k.pca,
        unknown=unknown,
        cv_rows=k.cv_rows,
    )
    model = classifier.match_net(classifier.to_onnx(clf, F.shape[1]), net)
    _, held_out = classifier.holdout_split(labels, k.test_size, k.seed)
    keep = labels >= 0
    agreement = classifier.check_onnx(model, clf, F[held_out] if len(held_out) else F[keep])
    unknown_info = metrics.pop("unknown", None)
    return Head(model, metrics, unknown_info, agreement, clf)


def view_summary(
    view: views.View,
    labels: np.ndarray,
    Z: np.ndarray,
    done: dict,
    head: Head | None,
    E: np.ndarray | None,
    c: ClusterSettings,
    seconds: float,
    steps: dict[str, float] | None = None,
    fitted: np.ndarray | None = None,
    **extra: object,
) -> dict:
    """What metrics.json says of one view (docs/cluster.md, item 9); `steps`: seconds per step
    (the facets and identity flags, timed here, are added to it and to `seconds`); `fitted`: the rows the
    partition was made on (facets are read from their whitened rows; None: every labelled row)."""
    keep = labels >= 0
    sizes = np.bincount(labels[keep]) if keep.any() else np.zeros(0, np.int64)
    t = time.perf_counter()
    found_facets = _facets(Z, np.where(fitted, labels, -1) if fitted is not None else labels, c.facets)
    t_facets = time.perf_counter()
    flags = _identity(E, labels)
    steps = {**(steps or {}), "facets": t_facets - t, "identity_flags": time.perf_counter() - t_facets}
    return {
        "name": view.name,
        "feature": view.feature,
        "transform": view.transform,
        "grafted": view.grafted if head is not None else None,
        "skipped": None,
        "clusters": int(len(sizes)),
        "sizes": sizes.tolist(),
        "shares": (sizes / len(labels)).round(6).tolist(),
        "noise": int((~keep).sum()),
        "discovery": done,
        "facets": found_facets,
        "identity": flags,
        "unknown": head.unknown if head else None,
        "classifier": head.metrics if head else None,
        "onnx_check": head.agreement if head else None,
        "classifier_file": (ARTIFACTS["classifier"] if view.name == "center" else f"classifier_{view.name}.onnx")
        if head
        else None,
        "seconds": round(seconds + steps["facets"] + steps["identity_flags"], 3),
        "steps": {k: round(v, 3) for k, v in steps.items()},
        **extra,
    }


@dataclass(frozen=True)
class FittedView:
    summary: dict
    labels: np.ndarray | None  # subset order, -1 where the view has no label; None when skipped
    head: Head | None


def skipped(view: views.View, why: str) -> FittedView:
    log.warning("cluster: view %s skipped: %s", view.name, why)
    summary = {
        "name": view.name,
        "feature": view.feature,
        "transform": view.transform,
        "grafted": None,
        "skipped": why,
        "classifier_file": None,
    }
    return FittedView(summary, None, None)


def view_settings(c: ClusterSettings) -> ClusterSettings:
    """A further view's settings: always the PCA space; a fixed k only where the user gave one for it.

    The map's settings (eps, min_samples, a map method) belong to the center view's map; a further
    view has no map, so there the stability rule chooses k (`settings = "fixed"` in the map space
    leaves `cluster.k` at 0)."""
    fixed = c.space == "pca" and c.settings == "fixed"
    return replace(
        c,
        space="pca",
        settings="fixed" if fixed else "auto",
        method=c.method if c.method in PCA_METHODS else "auto",
    )


def fit_view(
    view: views.View, s: Subset, run_dir: RunDir, c: ClusterSettings, k: ClassifierSettings, net
) -> FittedView:
    """One further view of the subset: its partition by the rule, facets, identity flags and head; or why not."""
    t0 = time.perf_counter()
    F = s.feature(view.feature)
    if F is None:
        return skipped(
            view,
            f"subset.h5 has no {views.DATASETS[view.feature]} (extracted with model.pool without "
            f"{view.feature!r}); extract again with the default pool",
        )
    rows = np.isfinite(F).all(axis=1)
    extra: dict = {}
    steps: dict[str, float] = {}
    if view.identity_removed:
        found = identity_removed(s, run_dir, c, F)
        steps["identity_search"] = time.perf_counter() - t0
        if isinstance(found, str):
            return skipped(view, found)
        G, has, searched, extra = found
        has &= rows[searched]
        take, G = searched[has], G[has]
    else:
        take = np.flatnonzero(rows)
        G = F if len(take) == len(F) else F[take]
    if len(take) < max(MIN_ROWS, 5 * min(c.k_grid)):
        return skipped(view, f"{len(take)} usable rows")
    t1 = time.perf_counter()
    part, Z_part, done = views.discover_pca(views.prepare(view, G), view_settings(c))
    del G
    _log_pick(view.name, done)
    t2 = time.perf_counter()
    steps["partition"] = t2 - t1
    labels = np.full(len(F), -1, np.int64)
    labels[take] = part
    Z = np.zeros((len(F), Z_part.shape[1]))
    Z[take] = Z_part
    F_in = F if rows.all() else np.where(rows[:, None], F, 0.0).astype(np.float32)  # no copy when all are finite
    head = fit_head(F_in, labels, k, c.unknown, net) if len(np.unique(part)) >= 2 else None
    if view.identity_removed and head is not None and len(searched) < len(F):
        # rows beyond cluster.noid_rows were not searched: the view's head labels them, as `introspect label` will
        rest = np.setdiff1d(np.flatnonzero(rows), searched)
        labels[rest] = head.estimator.predict(F_in[rest])
        extra["identity_removed"]["rows_labelled_by_the_head"] = int(len(rest))
    steps["head"] = time.perf_counter() - t2
    if view.grafted == "approximate" and head is not None:
        extra["approximation"] = (
            f"a linear head on the raw {views.DATASETS[view.feature]} learns this view's clusters at held-out "
            f"accuracy {head.metrics['accuracy']:.3f}"
        )
    fitted = np.zeros(len(F), bool)
    fitted[take] = True
    summary = view_summary(view, labels, Z, done, head, s.E, c, time.perf_counter() - t0, steps, fitted, **extra)
    return FittedView(summary, labels, head)


def _facets(Z: np.ndarray, labels: np.ndarray, most: int) -> list[dict]:
    """Groups of clusters a person names once (see `discovery.tree_facets`); none when off or too few clusters."""
    keep = labels >= 0
    if most == 0:
        return []
    found = discovery.tree_facets(Z[keep], labels[keep], most=most)
    return [
        {"id": f, "clusters": m, "lifetime": life}
        for f, (m, life) in enumerate(zip(found["members"], found["lifetime"]))
    ]


def _identity(E: np.ndarray | None, labels: np.ndarray) -> list[dict]:
    """Clusters that are mostly one or a few people, by counting people (see `identity.identity_flags`)."""
    keep = labels >= 0
    if E is None or len(np.unique(labels[keep])) < 2:
        return []
    rows = identity.identity_flags(E[keep], labels[keep])
    return [{**r, "size": r["members"]} for r in rows]


def write_clusters(
    path: Path,
    Y: np.ndarray,
    index: np.ndarray,
    labels: np.ndarray,
    curve: np.ndarray,
    metrics: dict,
    projection: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    labelled: dict[str, np.ndarray] | None = None,
) -> None:
    """clusters.h5; with `projection` (PCA mean, components, the subset's reduced rows) what places new rows;
    with `labelled` each view's labels in `views/<name>/label` (the center view's are also `label`)."""
    with store.writing_h5(path) as f:
        for v in (metrics.get("views") or []) if labelled else []:
            if v["name"] in labelled:
                g = f.create_group(f"views/{v['name']}")
                g["label"] = np.asarray(labelled[v["name"]], np.int64)
                g.attrs["feature"] = v["feature"]
                g.attrs["transform"] = v["transform"]
        if projection is not None:
            mean, components, rows = projection
            f["map_pca_mean"] = np.asarray(mean, np.float32)
            f["map_pca_components"] = np.asarray(components, np.float32)
            f["map_pca_rows"] = np.asarray(rows, np.float32)
        f["tsne"] = Y.astype(np.float32)
        f["index"] = index.astype(np.int64)
        f["label"] = labels.astype(np.int64)
        f["pca_curve"] = curve
        f.attrs["tsne"] = json.dumps(metrics["tsne"])
        f.attrs["cluster"] = json.dumps(metrics["cluster"])
        for key, value in metrics["provenance"].items():
            f.attrs[key] = value
