"""`introspect sweep`: choose perplexity, eps and min_samples without ground truth.

The reference tuned t-SNE and DBSCAN by hand, its slowest step. Here every point of a small
grid is clustered on maps from `seeds` t-SNE runs (different seeds), and scored by measures that
need no labels:

- `clusters`: how many clusters (seed 0's map), `noise`: the share DBSCAN left as noise;
- `silhouette`: of the clusters on seed 0's z-scored map (noise left out), how well separated;
- `accuracy`: held-out accuracy of a quick logistic regression from the PCA-reduced
  activations to the clusters (the stage's classifier is slower; this one only ranks settings,
  and reads a few points lower: 0.87 where the stage's measured 0.93 on 5,000 SFace rows):
  can the net's activations tell the clusters apart, as the merged model will have to;
- `ari`: mean adjusted Rand index between the clusterings of the different maps (stability);
- `stable`: clusters found again on every other map (a cluster of another map with Jaccard
  >= 0.5: Hennig's cluster-wise stability, 2007), averaged over the maps. A cluster that
  exists only on one map is an artifact of that map's seed.

The rule (`recommend`): a setting is admissible when it gives 2 to `max_clusters` clusters, at
most `max_noise` noise, and held-out accuracy >= `min_accuracy`; among admissible settings the one
with the most stable clusters wins, then the higher ARI, then the higher silhouette. Why: the
tool exists to show what the net separates reproducibly; a setting that splits more finely but
whose extra clusters move with the seed shows noise, and one the activations cannot predict
cannot be labelled on the full set. More stable clusters is preferred over fewer because every
reproducible, learnable cluster is one more thing a person can name.

Writes `<out>/sweep/sweep.json` (grid, every row, the rule, the choice),
`<out>/sweep/contact.png` (every setting's map on seed 0, the choice framed) for a person to
check the choice by eye, and `<out>/sweep/maps.h5` (`index`, `tsne/perplexity=P/seed=S`, and
`labels/<row>` on seed 0's map) so `introspect evaluate --sweep` can score every row against
planted attributes afterwards -- to judge the rule, never to make the choice.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.preprocessing import StandardScaler

from ..engine import store
from ..engine.rundir import RunDir, write_bytes, writing
from ..errors import UserError
from ..science import classifier, discovery, tsne
from ..science.clustering import ClusterSettings
from .report_colors import NOISE_COLOR, color

log = logging.getLogger(__name__)

#: Jaccard overlap above which a cluster counts as found again on another map (Hennig 2007).
JACCARD_STABLE = 0.5
#: Points the silhouette is computed on (it is quadratic in them).
SILHOUETTE_SAMPLE = 4000

RULE = (
    "admissible: 2 <= clusters <= max_clusters, noise <= max_noise, accuracy >= min_accuracy; "
    "then most stable clusters, then highest ARI across seeds, then highest silhouette"
)


def grid(s: dict) -> list[tuple[float, float, int]]:
    """(perplexity, eps, min_samples) for every grid point, checked."""
    axes = {"perplexity": s["perplexity"], "eps": s["eps"], "min_samples": s["min_samples"]}
    for name, values in axes.items():
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
            raise UserError(f"sweep.{name} = {values!r}: give a list of positive numbers, e.g. [30, 100]")
    if not all(float(m).is_integer() for m in axes["min_samples"]):
        raise UserError(f"sweep.min_samples = {axes['min_samples']!r}: whole numbers, e.g. [5, 10, 20]")
    if int(s["seeds"]) < 2:
        raise UserError(f"sweep.seeds = {s['seeds']}: stability needs at least 2 t-SNE seeds")
    return [(float(p), float(e), int(m)) for p, e, m in itertools.product(*axes.values())]


def noise_share(est) -> float:
    """Share of the points DBSCAN itself called noise (KNN-DBSCAN labels them all afterwards)."""
    raw = getattr(est, "dbscan_labels_", est.labels_)
    return float(np.mean(raw < 0))


def matched_clusters(a: np.ndarray, b: np.ndarray, threshold: float = JACCARD_STABLE) -> int:
    """Clusters of `a` that have a cluster in `b` with Jaccard >= threshold (noise is no cluster)."""
    ka, kb = a.max() + 1, b.max() + 1
    if ka <= 0 or kb <= 0:
        return 0
    both = (a >= 0) & (b >= 0)
    inter = np.zeros((ka, kb), np.int64)
    np.add.at(inter, (a[both], b[both]), 1)
    size_a = np.bincount(a[a >= 0], minlength=ka)[:, None]
    size_b = np.bincount(b[b >= 0], minlength=kb)[None, :]
    jaccard = inter / np.maximum(size_a + size_b - inter, 1)
    return int((jaccard.max(axis=1) >= threshold).sum())


def stability(labelings: list[np.ndarray], threshold: float = JACCARD_STABLE) -> tuple[float, float]:
    """(mean ARI over pairs of maps, mean number of clusters found again on every other map)."""
    aris = [adjusted_rand_score(a, b) for a, b in itertools.combinations(labelings, 2)]
    stable = [
        min(matched_clusters(a, b, threshold) for j, b in enumerate(labelings) if j != i)
        for i, a in enumerate(labelings)
    ]
    return float(np.mean(aris)), float(np.mean(stable))


def quick_accuracy(Z: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Held-out accuracy of a logistic regression from PCA-reduced activations to the clusters."""
    train, test = classifier.holdout_split(labels, 0.2, seed)
    if len(test) == 0 or len(np.unique(labels[train])) < 2:
        return float("nan")
    scaler = StandardScaler().fit(Z[train])
    lr = LogisticRegression(C=1.0, max_iter=300, class_weight="balanced")
    lr.fit(scaler.transform(Z[train]), labels[train])
    return float(np.mean(lr.predict(scaler.transform(Z[test])) == labels[test]))


def silhouette(Y: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    keep = labels >= 0
    if len(np.unique(labels[keep])) < 2:
        return float("nan")
    Z = (Y - Y.mean(axis=0)) / Y.std(axis=0)
    n = int(keep.sum())
    return float(silhouette_score(Z[keep], labels[keep], sample_size=min(n, SILHOUETTE_SAMPLE), random_state=seed))


def score(maps: list[np.ndarray], Z: np.ndarray, c: ClusterSettings, eps: float, min_samples: int) -> dict:
    """Every no-ground-truth measure of one (eps, min_samples) on the maps of one perplexity.

    A setting that fails (no cluster, one cluster, or anything else its clusterer raises) is a
    row that says so: one bad grid point never ends the sweep.
    """
    labelings, first = [], None
    for Y in maps:
        try:
            est = replace(c, eps=eps, min_samples=min_samples).estimator()
            labelings.append(est.fit_predict(Y))
        except Exception as e:  # recorded in the row; the sweep goes on
            log.warning("sweep: eps %g, min_samples %d failed: %s", eps, min_samples, e)
            return {"error": str(e) or type(e).__name__}
        first = est if first is None else first
    labels = labelings[0]
    ari, stable = stability(labelings)
    return {
        "clusters": int(labels.max() + 1),
        "noise": noise_share(first),
        "silhouette": silhouette(maps[0], labels),
        "accuracy": quick_accuracy(Z, labels),
        "ari": ari,
        "stable": stable,
        "stable_strict": stability(labelings, discovery.JACCARD_STABLE)[1],
        "labels": labels,
    }


def admissible(row: dict, s: dict) -> bool:
    return (
        "error" not in row
        and 2 <= row["clusters"] <= int(s["max_clusters"])
        and row["noise"] <= float(s["max_noise"])
        and row["accuracy"] >= float(s["min_accuracy"])
    )


def _key(row: dict) -> tuple:
    nan_low = lambda x: -math.inf if x is None or not math.isfinite(x) else x  # noqa: E731
    return (row["stable"], nan_low(row["ari"]), nan_low(row["silhouette"]))


def recommend(rows: list[dict], s: dict) -> dict | None:
    """The row the documented rule picks (module docstring), or None when no row is admissible."""
    ok = [r for r in rows if admissible(r, s)]
    return max(ok, key=_key) if ok else None


@dataclass(frozen=True)
class SweepResult:
    record: dict  # what sweep.json holds
    files: list[Path]

    def text(self) -> str:
        return summary({**self.record, "files": [str(f) for f in self.files]})


def run(cfg: dict) -> SweepResult:
    """Map the subset for every perplexity and seed, score every grid point, pick one, draw them all."""
    s, t = cfg["sweep"], cfg["tsne"]
    c = ClusterSettings.from_config(cfg["cluster"])
    c = replace(c, space="map", method=c.map_method if c.space == "map" else "knn-dbscan")
    if c.method not in ("knn-dbscan", "dbscan"):
        raise UserError(
            f"the sweep tunes eps and min_samples, which {c.method} does not take; "
            "set cluster.method to knn-dbscan or dbscan"
        )
    points = grid(s)
    base = tsne.TSNEParams.from_config(t)
    run_dir = RunDir(cfg["extract"]["out"])
    with run_dir.stage("sweep"):
        X, index = store.load_activations(run_dir.require("subset", "extract"))
        perplexities = sorted({p for p, _, _ in points})
        for p in perplexities:
            tsne.check_perplexity(len(X), p, base.num_neighbors)
        t0 = time.perf_counter()
        Z, _ = tsne.pca(X, min(int(t["pca"]), *X.shape), seed=base.seed)
        seeds = [base.seed + i for i in range(int(s["seeds"]))]
        maps, backend = {}, None
        for p in perplexities:
            for seed in seeds:
                log.info("sweep: t-SNE perplexity %g, seed %d", p, seed)
                params = replace(base, perplexity=p, seed=seed)
                maps[p, seed], backend = tsne.embed(Z if int(t["pca"]) else X, params, t["backend"])
        t1 = time.perf_counter()
        rows = []
        for p, eps, ms in points:
            row = {
                "perplexity": p,
                "eps": eps,
                "min_samples": ms,
                **score([maps[p, sd] for sd in seeds], Z, c, eps, ms),
            }
            rows.append(row)
            log.info("sweep: %s", format_row(row))
        pick = recommend(rows, s)
        pca = pca_table(X, cfg["cluster"], s)
        result = {
            "rows_mapped": int(len(X)),
            "backend": backend,
            "seeds": seeds,
            "method": c.method,
            "rule": RULE,
            "limits": {k: s[k] for k in ("max_clusters", "max_noise", "min_accuracy")},
            "seconds": {"tsne": t1 - t0, "scoring": time.perf_counter() - t1},
            "rows": [{k: v for k, v in r.items() if k != "labels"} for r in rows],
            "recommended": None if pick is None else {k: pick[k] for k in ("perplexity", "eps", "min_samples")},
            "pca": pca,
            "overall": overall(pick, pca),
        }
        files = [run_dir.path(n) for n in ("sweep_json", "contact", "maps")]
        contact_sheet(run_dir.path("contact"), rows, maps, seeds[0], pick)
        _write_maps(run_dir.path("maps"), index, maps, rows)
        write_bytes(run_dir.path("sweep_json"), json.dumps(result, indent=1).encode())
    return SweepResult(result, files)


def pca_table(X: np.ndarray, cluster: dict, s: dict) -> dict:
    """The whitened-PCA partitions (`science.discovery`) scored by the same kind of rule, for comparison."""
    c = ClusterSettings.from_config({**cluster, "space": "pca"})
    n_comp = discovery.signal_components(X, min(c.components, *X.shape), random_state=c.seed)
    Z = discovery.whitened_pca(n_comp, c.seed).fit_transform(X)
    ks = [k for k in c.k_grid if k <= min(len(X) // 5, int(s["max_clusters"]))]
    if not ks:
        return {"error": f"too few points ({len(X)}) for cluster.k_grid {list(c.k_grid)}"}
    methods = ("kmeans",) if c.method == "auto" else (c.method,)
    choice = discovery.select_k(Z, ks, methods, n_boot=c.refits, random_state=c.seed)
    rows = [{k: v for k, v in r.items() if k not in ("labels", "jaccard")} for r in choice["rows"]]
    return {"method": choice["method"], "k": choice["k"], "boundary": choice["boundary"], "rows": rows}


def overall(pick: dict | None, pca: dict) -> dict | None:
    """The space with more reproducible clusters: Jaccard >= 0.75 across t-SNE seeds (map) or refits (pca).

    The two resamplings differ (a new map of every point vs a refit on 80 % of them), so this is
    a rule of thumb across spaces, not a strict comparison; ties go to the pca space, which
    bench/discovery.py found the better on every dataset it was run on.
    """
    best = max(
        (r for r in pca.get("rows", []) if r["method"] == pca.get("method") and r["k"] == pca.get("k")),
        key=lambda r: r["stable"],
        default=None,
    )
    if best is None and pick is None:
        return None
    if pick is None or (best is not None and best["stable"] >= pick["stable_strict"]):
        return {"space": "pca", "method": best["method"], "k": best["k"], "stable": best["stable"]}
    return {
        "space": "map",
        **{k: pick[k] for k in ("perplexity", "eps", "min_samples")},
        "stable": pick["stable_strict"],
    }


def _write_maps(path: Path, index: np.ndarray, maps: dict, rows: list[dict]) -> None:
    """Every map and every row's labels (seed 0's map), so a setting can be looked at again or evaluated."""

    with store.writing_h5(path) as f:
        f["index"] = index.astype(np.int64)
        for (p, seed), Y in maps.items():
            f[f"tsne/perplexity={p:g}/seed={seed}"] = Y
        for i, r in enumerate(rows):
            if "labels" in r:
                f[f"labels/{i}"] = r["labels"].astype(np.int64)


def format_row(r: dict) -> str:
    head = f"perplexity {r['perplexity']:>6g}  eps {r['eps']:<6g} min_samples {r['min_samples']:>4}"
    if "error" in r:
        return f"{head}  -- {r['error'].split(':')[0]}"
    return (
        f"{head}  clusters {r['clusters']:>3}  stable {r['stable']:>4.1f}  ARI {r['ari']:.2f}  "
        f"noise {r['noise']:.2f}  silhouette {r['silhouette']:.2f}  accuracy {r['accuracy']:.2f}"
    )


def summary(result: dict) -> str:
    """The table, the rule and the choice as pipeline lines to paste."""
    lines = [f"sweep over {result['rows_mapped']} points, t-SNE by {result['backend']}, seeds {result['seeds']}"]
    lines += ["  " + format_row(r) for r in result["rows"]]
    lines.append(f"rule: {result['rule']} ({', '.join(f'{k} {v}' for k, v in result['limits'].items())})")
    rec = result["recommended"]
    if rec is None:
        lines.append(
            "no setting is admissible: widen the grid (smaller eps or min_samples for more clusters) "
            "or relax sweep.min_accuracy / sweep.max_noise"
        )
    else:
        edge = [k for k in ("eps", "min_samples") if rec[k] in _ends(result["rows"], k)]
        lines.append("on the map (cluster.space = 'map'), recommended, for your pipeline file:")
        lines.append(
            f"  [tsne]\n  perplexity = {rec['perplexity']:g}\n  [cluster]\n  eps = {rec['eps']:g}\n"
            f"  min_samples = {rec['min_samples']}"
        )
        if edge:
            lines.append(
                f"  WARNING: {' and '.join(edge)} at the edge of the grid: widen sweep.{edge[0]} and run again"
            )
    pca = result.get("pca") or {}
    if pca.get("rows"):
        lines.append("in the whitened PCA space (cluster.space = 'pca'), most clusters stable under refits:")
        lines += [
            f"  {r['method']:<7} k {r['k']:>3}  stable {r['stable']:>3}  share {r['stable_share']:.2f}  "
            f"ARI {r['ari']:.2f}" + ("  <- pick" if (r["method"], r["k"]) == (pca["method"], pca["k"]) else "")
            for r in pca["rows"]
        ]
        if pca.get("boundary"):
            lines.append("  WARNING: the pick is at the edge of cluster.k_grid: widen it")
    if result.get("overall"):
        o = result["overall"]
        where = (
            f"k = {o['k']} by {o['method']}"
            if o["space"] == "pca"
            else f"eps {o['eps']:g}, min_samples {o['min_samples']}"
        )
        lines.append(
            f"more reproducible clusters (Jaccard >= 0.75): the {o['space']} space, {where} ({o['stable']:g} stable)"
        )
    lines += [f"  -> {f}" for f in result.get("files", [])]
    return "\n".join(lines)


def _ends(rows: list[dict], key: str) -> set:
    values = [r[key] for r in rows]
    return {min(values), max(values)} if len(set(values)) > 1 else set()


def contact_sheet(path: Path, rows: list[dict], maps: dict, seed: int, pick: dict | None) -> None:
    """One panel per grid point (seed `seed`'s map colored by cluster, noise grey), the choice framed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len({r["min_samples"] for r in rows})
    nrows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3 * cols, 3 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, r in zip(axes.flat, rows):
        Y = maps[r["perplexity"], seed]
        title = f"perp {r['perplexity']:g}  eps {r['eps']:g}  ms {r['min_samples']}"
        if "error" in r:
            ax.scatter(Y[:, 0], Y[:, 1], s=0.5, c=NOISE_COLOR, rasterized=True)
            ax.set_title(f"{title}\n{r['error'].split(':')[0]}", fontsize=7)
        else:
            lab = r["labels"]
            noise = lab < 0
            ax.scatter(Y[noise, 0], Y[noise, 1], s=0.5, c=NOISE_COLOR, rasterized=True)
            ax.scatter(Y[~noise, 0], Y[~noise, 1], s=0.5, c=[color(int(k)) for k in lab[~noise]], rasterized=True)
            ax.set_title(
                f"{title}\n{r['clusters']} clusters, {r['stable']:.1f} stable, ARI {r['ari']:.2f}, "
                f"acc {r['accuracy']:.2f}",
                fontsize=7,
            )
        if r is pick:
            ax.set_axis_on()
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_color("red")
                side.set_linewidth(3)
    fig.suptitle("introspect sweep (red: recommended)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3 * nrows)))  # room for the title above the first row
    with writing(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
