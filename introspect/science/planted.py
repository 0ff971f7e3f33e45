"""Does the clustering find the planted attributes?  Scores against the synthetic ground truth.

The pipeline never reads the ground truth: it has to work on real images that have none.  This
module (and the report) are its only readers, to tell whether the clusters of the t-SNE map
line up with what `introspect synth` planted (`synth.RATES`: glasses, mask, pose, dark, gray,
blur, occluder).

Every planted attribute and every variant of it is a boolean target (`binary_targets`), and
each target gets four numbers, each F1 printed beside its chance value:

- **F1, one cluster**: the best F1 of a single cluster taken as "the target" -- did the map
  give this attribute its own cluster?
- **F1, union**: the best F1 of a union of clusters, for a user who names several clusters
  "glasses".  Rule: clusters are sorted by precision (share of their members that have the
  target; ties: more positives first) and added in that order while F1 rises.  With
  ``F1 = 2 TP / (selected + positives)``, adding a cluster raises F1 exactly when its precision
  exceeds ``F1 / 2``; so the greedy prefix is the best F1 over *all* unions, an upper bound on
  what naming clusters by hand can reach.  It is optimistic when there are many small clusters,
  hence its chance value.
- **chance**: both F1s again with the target shuffled over the rows (same number of
  positives), the mean over `shuffles` permutations drawn from `seed`.
- **probe AUC**: does the net encode the target at all, cluster or not?  A logistic regression
  (``max_iter=1000, class_weight="balanced"``) from the activations, with 5 folds grouped by
  identity (`sklearn.model_selection.GroupKFold`, shuffled by `seed`) so a person is never in
  both training and test -- otherwise a probe that recognises people scores on attributes that
  happen to follow identity.  The AUC is that of the pooled out-of-fold scores: one number over
  every probe row, defined even for rare targets whose positives miss some test fold.
- **probe F1** ("F1 sup"): the F1 of that probe's out-of-fold decisions.  A supervised linear
  model that was *told* the attribute: clusters found without labels rarely beat it, so it
  says how much of a low cluster F1 is the method's fault and how much the net's.
  Speed: the probe uses at most `probe_rows`
  (20 k) random rows (seeded), standardized and projected on their top `probe_dims` (128)
  principal components, whitened, once for all targets and folds; the fits run on one
  thread.  lbfgs on 1024 raw, correlated channels costs seconds per fit at 50 k rows, and
  there are ~75 fits; this way the whole evaluation of 50 k x 1024 takes ~6 s on one core
  (~12 s with ``probe_rows=None``).  Scaling and PCA never see a target, so fitting them on
  all probe rows leaks no label; what they can lose is an attribute that lives only in
  low-variance directions -- raise `probe_dims` (``None``: no reduction) to check.

Noise (label -1; any negative label) is never a cluster: its rows count as predicted negative.
NMI and ARI compare the labels (noise as one more label) with the attribute combination (every
attribute's value per row, joined) and with identity.
"""

from __future__ import annotations

import csv
import math
import textwrap
import zlib
from collections import deque
from itertools import islice
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits  # a scikit-learn dependency

from ..errors import UserError
from ..synth import COLUMNS, RATES

__all__ = [
    "best_cluster",
    "best_union",
    "binary_targets",
    "chance_f1",
    "evaluate",
    "format_table",
    "group_folds",
    "probe_auc",
    "probe_f1",
    "probe_features",
    "probe_scores",
    "read_attrs",
]

ATTRIBUTES = COLUMNS[2:]  # every column but path and identity


# --------------------------------------------------------------------------- ground truth


def read_attrs(csv_path: Path | str, index: np.ndarray) -> dict[str, np.ndarray]:
    """The ground-truth rows for `index` (0-based list lines), streamed: a 10 M-row CSV costs only the kept rows."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise UserError(
            f"no ground truth at {csv_path}: it exists only for synthetic data made by "
            f"`introspect synth` (lists/x.txt -> lists/x.attrs.csv); evaluate on such a list"
        )
    index = _as_index(index)
    wanted, inverse = np.unique(index, return_inverse=True)  # any order and repeats are fine
    with open(csv_path, newline="", encoding="utf-8") as f:
        header = next(csv.reader([f.readline()]), [])
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise UserError(
                f"{csv_path} is not a ground-truth CSV (no column {', '.join(missing)}): "
                f"pass the .attrs.csv written by `introspect synth`"
            )
        rows: list[list[str]] = []
        line = -1  # the last list line read
        for want in wanted.tolist():
            deque(islice(f, want - line - 1), maxlen=0)  # skip at C speed, nothing kept
            text = next(f, None)
            if text is None:
                raise UserError(
                    f"{csv_path} has fewer rows than list line {want} asks for: the "
                    f"activations come from another list; use the CSV beside that list"
                )
            line = want
            row = next(csv.reader([text]), [])
            if len(row) != len(header):
                raise UserError(
                    f"{csv_path} line {want + 2} has {len(row)} fields, the header {len(header)}: "
                    f"the file is damaged; run `introspect synth` again"
                )
            rows.append(row)
    columns = {name: [r[j] for r in rows] for j, name in enumerate(header)}
    out: dict[str, np.ndarray] = {}
    for name, values in columns.items():
        if name == "identity":
            try:
                arr = np.array([int(v) for v in values], dtype=np.int64)
            except ValueError:
                raise UserError(
                    f"{csv_path}: column identity holds a non-integer: "
                    f"pass the .attrs.csv written by `introspect synth`"
                ) from None
        else:
            arr = np.array(values, dtype=str)
        out[name] = arr[inverse]
    return out


def _as_index(index: np.ndarray) -> np.ndarray:
    index = np.asarray(index)
    if index.ndim != 1 or not (np.issubdtype(index.dtype, np.integer) or index.size == 0):
        raise UserError(
            f"index must be a 1-D array of integer list lines, got {index.dtype} with shape "
            f"{index.shape}: pass the `index` dataset of full.h5 / subset.h5"
        )
    index = index.astype(np.int64)
    if index.size and index.min() < 0:
        raise UserError("index holds a negative list line: pass the `index` dataset of full.h5 / subset.h5")
    return index


def _target_values(column: str) -> tuple[str, list[str]]:
    """The attribute's absent value and its planted variants, from the generator's own table."""
    values = [v for v, _ in RATES[column]]
    return values[0], values[1:]


def binary_targets(attrs: dict[str, np.ndarray], min_positives: int = 0) -> dict[str, np.ndarray]:
    """One boolean target per planted variant and per attribute, in a fixed order.

    ``attr=variant`` per variant in `synth.RATES` (``dark``, not ``dark=1``, for 0/1 columns),
    and ``attr`` (anything but the absent value) when there are several variants; so ``pose``
    is "turned, left or right".  Every variant is listed even when absent from these rows, so
    the report can say it was skipped.  Targets with fewer than `min_positives` positives or
    negatives are dropped: their F1 and AUC would be noise.
    """
    missing = [c for c in ATTRIBUTES if c not in attrs]
    if missing:
        raise UserError(f"attrs lack column {', '.join(missing)}: pass what read_attrs returns")
    targets: dict[str, np.ndarray] = {}
    for column in ATTRIBUTES:
        values = np.asarray(attrs[column]).astype(str)
        absent, variants = _target_values(column)
        if len(variants) > 1:
            targets[column] = values != absent
        for v in variants:
            targets[column if v == "1" else f"{column}={v}"] = values == v
    n = next(iter(targets.values())).size if targets else 0
    return {k: y for k, y in targets.items() if min(int(y.sum()), n - int(y.sum())) >= min_positives}


# --------------------------------------------------------------------------- cluster F1


def _codes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes 0..K-1 for clusters and -1 for noise, plus the cluster ids they stand for."""
    labels = np.asarray(labels)
    ids, codes = np.unique(np.where(labels < 0, -1, labels), return_inverse=True)
    if ids.size and ids[0] < 0:
        return codes.astype(np.int64) - 1, ids[1:]
    return codes.astype(np.int64), ids


def _contingency(codes: np.ndarray, k: int, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Members and positives per cluster; noise (-1) is left out."""
    keep = codes >= 0
    size = np.bincount(codes[keep], minlength=k)
    tp = np.bincount(codes[keep], weights=y[keep], minlength=k).astype(np.int64)
    return size, tp


def _best_cluster(size: np.ndarray, tp: np.ndarray, positives: int) -> tuple[float, int | None]:
    if positives == 0 or size.size == 0:
        return 0.0, None
    f1 = 2.0 * tp / (size + positives)
    j = int(np.argmax(f1))
    return float(f1[j]), j


def _best_union(size: np.ndarray, tp: np.ndarray, positives: int) -> tuple[float, list[int]]:
    """Greedy by precision while F1 rises: the exact best union (see the module docstring)."""
    if positives == 0 or size.size == 0:
        return 0.0, []
    precision = tp / np.maximum(size, 1)
    order = np.lexsort((-tp, -precision))
    f1, got, chosen, picked = 0.0, 0, 0, []
    for j in order.tolist():
        new = 2.0 * (got + tp[j]) / (chosen + size[j] + positives)
        if new <= f1:
            break
        f1, got, chosen = new, got + int(tp[j]), chosen + int(size[j])
        picked.append(j)
    return float(f1), picked


def best_cluster(labels: np.ndarray, y: np.ndarray) -> tuple[float, int | None]:
    """Best F1 of one cluster as the target, and that cluster's id (None: no cluster or no positive)."""
    codes, ids = _codes(labels)
    y = np.asarray(y, dtype=bool)
    f1, j = _best_cluster(*_contingency(codes, ids.size, y), int(y.sum()))
    return f1, None if j is None else int(ids[j])


def best_union(labels: np.ndarray, y: np.ndarray) -> tuple[float, list[int]]:
    """Best F1 of a union of clusters (greedy by precision, exact) and its cluster ids, most precise first."""
    codes, ids = _codes(labels)
    y = np.asarray(y, dtype=bool)
    f1, picked = _best_union(*_contingency(codes, ids.size, y), int(y.sum()))
    return f1, [int(ids[j]) for j in picked]


def chance_f1(labels: np.ndarray, y: np.ndarray, seed: int = 0, shuffles: int = 5) -> tuple[float, float]:
    """(one cluster, union) F1 of the same clusters against shuffled targets: what sizes alone give."""
    codes, ids = _codes(labels)
    y = np.asarray(y, dtype=bool)
    positives = int(y.sum())
    rng = np.random.default_rng(seed)
    one, union = [], []
    for _ in range(max(1, shuffles)):
        counts = _contingency(codes, ids.size, rng.permutation(y))
        one.append(_best_cluster(*counts, positives)[0])
        union.append(_best_union(*counts, positives)[0])
    return float(np.mean(one)), float(np.mean(union))


def facet_f1(
    labels: np.ndarray, facets: list[list[int]], y: np.ndarray, seed: int = 0, shuffles: int = 5
) -> tuple[float, int | None, float]:
    """(best F1 of one facet, which facet, the same against shuffled targets): a facet is the union of its clusters."""
    y = np.asarray(y, dtype=bool)
    if not facets or not y.any():
        return 0.0, None, 0.0
    member = np.stack([np.isin(labels, m) for m in facets])  # F x N
    rng = np.random.default_rng(seed)

    def best(target: np.ndarray) -> tuple[float, int]:
        tp = (member & target).sum(axis=1)
        f1 = 2 * tp / np.maximum(member.sum(axis=1) + target.sum(), 1)
        return float(f1.max()), int(f1.argmax())

    f1, which = best(y)
    chance = float(np.mean([best(rng.permutation(y))[0] for _ in range(max(1, shuffles))]))
    return f1, which, chance


# --------------------------------------------------------------------------- linear probe


def probe_features(X: np.ndarray, dims: int | None = 128) -> np.ndarray:
    """Standardized X, whitened onto its top `dims` principal components when wider.

    Whitened so lbfgs sees a well-conditioned problem.  By the covariance's eigenvectors (exact,
    deterministic; one C x C product and eigh) rather than randomized PCA, which costs several
    passes over X.  Components of (near) zero variance are dropped, not blown up by whitening.
    """
    X = np.asarray(X, dtype=np.float32)
    sd = X.std(axis=0)
    Z = (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0).astype(np.float32)
    if dims is None or dims >= Z.shape[1]:
        return np.ascontiguousarray(Z)
    cov = (Z.T @ Z).astype(np.float64) / max(1, Z.shape[0] - 1)
    with threadpool_limits(1):  # threads buy nothing on a 1024 x 1024 eigh, and cost 10x on busy cores
        var, vec = np.linalg.eigh(cov)  # ascending
    var, vec = var[::-1][:dims], vec[:, ::-1][:, :dims]
    keep = var > 1e-6 * max(float(var[0]), 1e-30)
    return np.ascontiguousarray((Z @ vec[:, keep].astype(np.float32)) / np.sqrt(var[keep]).astype(np.float32))


def group_folds(groups: np.ndarray, n_splits: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) row indices with no group on both sides; fewer folds when there are fewer groups, none below 2."""
    from sklearn.model_selection import GroupKFold

    groups = np.asarray(groups)
    n = min(n_splits, np.unique(groups).size)
    if n < 2:
        return []
    split = GroupKFold(n_splits=n, shuffle=True, random_state=seed).split(np.zeros(groups.size), groups=groups)
    return list(split)


def probe_scores(Z: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray | None:
    """Pooled out-of-fold logistic scores (> 0: predicted positive); None when undefined (one class, or no folds)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y, dtype=bool)
    if not folds or y.all() or not y.any():
        return None
    scores = np.zeros(y.size)
    # One thread (BLAS and OpenMP): lbfgs on ~128 columns does small products that threads
    # only slow down (10x seen on 2 busy cores).
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        for train, test in folds:
            yt = y[train]
            if yt.all() or not yt.any():
                continue  # nothing to learn from: the neutral score 0, the balanced boundary
            model = LogisticRegression(max_iter=1000, class_weight="balanced").fit(Z[train], yt)
            scores[test] = model.decision_function(Z[test])
    return scores


def probe_auc(Z: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]) -> float | None:
    """ROC AUC of pooled out-of-fold logistic scores; None when undefined (one class, or no folds)."""
    from sklearn.metrics import roc_auc_score

    scores = probe_scores(Z, y, folds)
    return None if scores is None else float(roc_auc_score(np.asarray(y, dtype=bool), scores))


def probe_f1(y: np.ndarray, scores: np.ndarray | None) -> float | None:
    """F1 of the probe's out-of-fold decisions: what a *supervised* linear model reaches, a ceiling for clusters."""
    if scores is None:
        return None
    y = np.asarray(y, dtype=bool)
    pred = scores > 0
    return float(2 * np.sum(pred & y) / max(1, pred.sum() + y.sum()))


# --------------------------------------------------------------------------- all of it


def _probe(Z: np.ndarray | None, y: np.ndarray, folds: list) -> dict:
    from sklearn.metrics import roc_auc_score

    scores = None if Z is None else probe_scores(Z, y, folds)
    auc = None if scores is None else _finite(roc_auc_score(np.asarray(y, dtype=bool), scores))
    return {"probe_auc": auc, "probe_f1": _finite(probe_f1(y, scores))}


def _agreement(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {"nmi": float(normalized_mutual_info_score(truth, labels)), "ari": float(adjusted_rand_score(truth, labels))}


def _combination(attrs: dict[str, np.ndarray]) -> np.ndarray:
    """Every attribute's value per row, joined: the finest partition the planted attributes define."""
    return np.array(["|".join(v) for v in zip(*(attrs[c].tolist() for c in ATTRIBUTES))], dtype=str)


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def evaluate(
    index: np.ndarray,
    labels: np.ndarray,
    X: np.ndarray | None,
    csv_path: Path | str,
    seed: int = 0,
    *,
    shuffles: int = 5,
    min_positives: int = 5,
    probe_dims: int | None = 128,
    probe_rows: int | None = 20_000,
    n_splits: int = 5,
    facets: list[list[int]] | None = None,
) -> dict:
    """Score a clustering against the planted attributes; a JSON-ready dict (X None: no probe)."""
    index = _as_index(index)
    labels = np.asarray(labels)
    if labels.shape != index.shape or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise UserError(
            f"labels must be {index.size} integer cluster ids, one per index row, got "
            f"{labels.dtype} with shape {labels.shape}: pass the clustering of these rows"
        )
    labels = labels.astype(np.int64)
    if X is not None:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[0] != index.size:
            raise UserError(
                f"X must be {index.size} rows of activations, one per index row, got shape "
                f"{X.shape}: pass the `prefacen` rows that were clustered"
            )
    if index.size == 0:
        raise UserError("no rows to evaluate: index is empty")
    attrs = read_attrs(csv_path, index)
    targets = binary_targets(attrs)
    n = index.size

    Z, folds, probe_rows_used = None, [], np.arange(n)
    if X is not None:
        if probe_rows is not None and n > probe_rows:
            probe_rows_used = np.sort(np.random.default_rng(seed).choice(n, probe_rows, replace=False))
        Z = probe_features(X[probe_rows_used], probe_dims)
        folds = group_folds(attrs["identity"][probe_rows_used], n_splits, seed)

    rows, skipped = [], []
    for name, y in targets.items():
        positives = int(y.sum())
        if min(positives, n - positives) < min_positives:
            skipped.append({"target": name, "positives": positives})
            continue
        f1_one, cluster = best_cluster(labels, y)
        f1_union, union = best_union(labels, y)
        shuffle_seed = zlib.crc32(f"{seed}:{name}".encode())
        chance_one, chance_union = chance_f1(labels, y, seed=shuffle_seed, shuffles=shuffles)
        f1_facet, facet, chance_facet = facet_f1(labels, facets or [], y, shuffle_seed, shuffles)
        rows.append(
            {
                "target": name,
                "positives": positives,
                "f1_cluster": f1_one,
                "f1_cluster_chance": chance_one,
                "cluster": cluster,
                "f1_union": f1_union,
                "f1_union_chance": chance_union,
                "union": union,
                **({"f1_facet": f1_facet, "f1_facet_chance": chance_facet, "facet": facet} if facets else {}),
                **_probe(Z, y[probe_rows_used], folds),
            }
        )

    clusters = np.unique(labels[labels >= 0])
    return {
        "rows": n,
        "clusters": int(clusters.size),
        "noise": int((labels < 0).sum()),
        "seed": int(seed),
        "shuffles": int(shuffles),
        "min_positives": int(min_positives),
        "probe": None
        if Z is None
        else {
            "rows": int(probe_rows_used.size),
            "dims": int(Z.shape[1]),
            "folds": len(folds),
            "grouped_by": "identity",
        },
        "targets": rows,
        "skipped": skipped,
        "agreement": {
            "combination": _agreement(labels, _combination(attrs)),
            "identity": _agreement(labels, attrs["identity"]),
        },
    }


def _clusters_text(ids: list[int], width: int = 16) -> str:
    """Cluster ids, cut to fit the column with a count of the rest."""
    text = ",".join(map(str, ids))
    if len(text) <= width:
        return text or "-"
    shown: list[str] = []
    for c in map(str, ids):
        if len(",".join(shown + [c])) + len(f",+{len(ids) - len(shown) - 1}") > width:
            break
        shown.append(c)
    return ",".join(shown) + f",+{len(ids) - len(shown)}"


def format_table(result: dict) -> str:
    """One screen: per target both F1s beside chance, the probe AUC and the clusters; then NMI / ARI."""

    def f1(value: float, chance: float) -> str:
        return f"{value:4.2f} ({chance:4.2f})"

    lines = [
        f"{result['rows']} rows, {result['clusters']} clusters, {result['noise']} noise; "
        f"chance = mean of {result['shuffles']} shuffles of the target",
        f"{'target':<16} {'pos':>6}  {'F1 one (chance)':<15} {'cluster':>7}  "
        f"{'F1 union (chance)':<17} {'clusters':<16} {'AUC':>5} {'F1 sup':>6}",
    ]
    for r in result["targets"]:
        auc = "-" if r["probe_auc"] is None else f"{r['probe_auc']:.3f}"
        sup = "-" if r.get("probe_f1") is None else f"{r['probe_f1']:.2f}"
        cluster = "-" if r["cluster"] is None else str(r["cluster"])
        lines.append(
            f"{r['target']:<16} {r['positives']:>6}  {f1(r['f1_cluster'], r['f1_cluster_chance']):<15} "
            f"{cluster:>7}  {f1(r['f1_union'], r['f1_union_chance']):<17} "
            f"{_clusters_text(r['union']):<16} {auc:>5} {sup:>6}"
        )
    with_facets = [r for r in result["targets"] if "f1_facet" in r]
    if with_facets:
        lines.append("best single facet (a facet is a group of clusters named once): F1 (chance), facet")
        for r in with_facets:
            lines.append(f"  {r['target']:<16} {f1(r['f1_facet'], r['f1_facet_chance'])}  facet {r['facet']}")
    if result["skipped"]:
        lines += textwrap.wrap(
            f"skipped (< {result['min_positives']} positives or negatives): "
            + ", ".join(f"{s['target']} ({s['positives']})" for s in result["skipped"]),
            width=len(lines[1]),
            subsequent_indent="  ",
            break_on_hyphens=False,
        )
    probe = result.get("probe")
    if probe:
        lines.append(f"AUC, F1 sup: a supervised logistic probe (a ceiling for clusters), {probe['rows']} rows,")
        lines.append(f"  {probe['dims']} whitened components, {probe['folds']} folds grouped by identity")
    for what, title in (("combination", "attribute combination"), ("identity", "identity")):
        a = result["agreement"][what]
        lines.append(f"NMI {a['nmi']:.3f}  ARI {a['ari']:.3f}  vs {title}")
    return "\n".join(lines)
