"""The classifier stage: activation -> cluster id, validated on rows it never saw, exported to ONNX.

The reference scored its `LogisticRegressionCV` on its own training rows only and weighted every
row alike, so rare clusters were under-predicted on the full set (0.56 % of the subset, 0.16 % of
the full set). Here the classes are weighted ("balanced" by default), the figures come from a
stratified held-out split, the shares of every cluster on that split are reported side by side
(true vs predicted), and the model that is shipped is refitted on every row afterwards.

The features are whitened PCA components of the standardized activations (`pca`, 64 by
default; 0 fits on the 1,024 standardized activations themselves, as before): a logistic
regression on them is still a linear map of the raw activations, so the scaler, the PCA and the
whitening fold into its coefficients (`fold_linear`) and the exported graph is the same single
`LinearClassifier` on `prefacen`. The fit works on 64 columns instead of 1,024 (16x less work
per iteration, and whitened inputs converge in fewer iterations).

Noise rows (label < 0, e.g. DBSCAN's -1) are left out of training and validation; the metrics
count them. The classifier still puts every image into some cluster (there is no "unknown").

ONNX graph (`to_onnx`), made for grafting onto the net with `onnx.compose.merge_models`:

- input  `float_input`   float32 [N, C]  the layer's center pixel (`prefacen`)
- output `label`         int64   [N]     the cluster id (a value of `classes_`, not a column index)
- output `probabilities` float32 [N, K]  RAW SCORES despite skl2onnx's name: the logits
  `decision_function` gives, column j for cluster `classes_[j]`; softmax them for probabilities.
  With two clusters the columns are `[-s, s]`.

The graph holds only `ai.onnx.ml` ops (`LinearClassifier`, plus a `Scaler` when `pca=0`), whose schemas have not
changed since ml opset 1, so it can declare whatever ai.onnx opset and IR version the net has:
`match_net` (or `to_onnx(..., target_opset=, ir_version=)`) makes them equal, which
`merge_models` requires. Checked with onnx.checker, onnxruntime and merge_models for net opsets
11, 13, 17, 21 (and 23 above skl2onnx's own maximum) at IR 6 to 10. SFace as shipped declares
IR 6 with opset 21 (opset 21 came with IR 10; neither onnx.checker nor onnxruntime objects):
the classifier exported with `target_opset=21, ir_version=6` (ml opset 1) merges and runs.
The export is byte-reproducible: the graph name and doc string are fixed (skl2onnx's default
graph name is random).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from typing import Any

import numpy as np
import onnx
from onnx import defs
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from ..engine import runtime
from ..errors import UserError

log = logging.getLogger(__name__)

INPUT = "float_input"
LABEL = "label"
SCORES = "probabilities"  # skl2onnx's name; with raw_scores the values are logits, not probabilities
ML = "ai.onnx.ml"

#: The reference's rule of thumb: below this held-out accuracy the clusters are not learnable.
MIN_ACCURACY = 0.7
#: A cluster predicted at less than this fraction of its true held-out share is flagged.
UNDER_PREDICTED = 0.5

CLASS_WEIGHTS = {"balanced": "balanced", "none": None}
#: Whitened PCA components the classifier is fitted on by default (0: the standardized activations).
PCA_COMPONENTS = 64
#: BLAS / OpenMP threads of the classifier's fits (None: the libraries' defaults); see fit_validated.
FIT_THREADS = 1
#: The exported graph's name (skl2onnx's own is random, which would make every export differ).
GRAPH_NAME = "introspect_classifier"


# --------------------------------------------------------------------------- whitened PCA


#: Components with less variance than this share of the first are left out before whitening.
VARIANCE_FLOOR = 1e-5


class WhitenedPCA(TransformerMixin, BaseEstimator):
    """`PCA(whiten=True)` whose `n_components` fits any data: an int is clipped to min(rows - 1, features).

    Centered, n rows span at most n - 1 directions: a component beyond them has no variance and
    whitening would scale rounding noise by 1 / eps.

    `n_components` is a count (>= 1) or a share of the variance in (0, 1). The fitted `PCA` is
    `pca_`; `n_components_` is how many components were kept. With at least as many rows as
    features the covariance's eigenvectors (exact, one pass), else scikit-learn's choice
    (randomized SVD, seeded), so fits are deterministic.
    """

    def __init__(self, n_components: int | float = PCA_COMPONENTS, random_state: int | None = 0):
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: Any = None) -> WhitenedPCA:
        X = np.asarray(X)
        k = self.n_components
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            k = int(max(1, min(k, X.shape[0] - 1, X.shape[1])))
        # as tsne.pca: one pass and a d x d eigenproblem when rows >= features, else scikit-learn's pick
        solver = "covariance_eigh" if X.shape[0] >= X.shape[1] else "auto"
        self.pca_ = PCA(n_components=k, whiten=True, svd_solver=solver, random_state=self.random_state).fit(X)
        ev = self.pca_.explained_variance_
        real = int((ev > ev[0] * VARIANCE_FLOOR).sum()) if len(ev) and ev[0] > 0 else 1
        if real < self.pca_.n_components_:  # a direction with (almost) no variance: whitening would blow it up
            self.pca_ = PCA(n_components=max(real, 1), whiten=True, svd_solver=solver, random_state=self.random_state)
            self.pca_.fit(X)
        self.n_components_ = int(self.pca_.n_components_)
        self.n_samples_seen_, self.n_features_in_ = (int(v) for v in X.shape)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "pca_")
        return self.pca_.transform(X)


def _check_pca(pca: int | float) -> int | float:
    if isinstance(pca, bool) or not isinstance(pca, (int, float, np.integer, np.floating)):
        raise UserError(f"pca={pca!r}: give a number of components (e.g. 64), a share of variance (e.g. 0.95) or 0")
    if isinstance(pca, (float, np.floating)) and not float(pca).is_integer():
        if not 0.0 < pca < 1.0:
            raise UserError(f"pca={pca!r}: a share of the variance is between 0 and 1, e.g. 0.95")
        return float(pca)
    if pca < 0:
        raise UserError(f"pca={pca!r}: the number of components is >= 1 (0: no PCA)")
    return int(pca)


def fold_linear(estimator: BaseEstimator) -> tuple[np.ndarray, np.ndarray]:
    """(coef K' x C, intercept K') in float64 with `X @ coef.T + intercept == decision_function(X)`.

    Folds every linear step before the logistic regression (StandardScaler, WhitenedPCA, PCA)
    into its coefficients, last step first: for a step z = (x - m) @ M, the scores W z + b are
    (W M^T) x + (b - W M^T m). The scaler is M = diag(1 / scale); the whitened PCA is
    M = components^T / sqrt(explained variance), the variance clipped at float eps as scikit-learn
    does. K' is 1 for two clusters (scikit-learn's single column), else the number of clusters.
    """
    lr = final_step(estimator)
    W = np.asarray(lr.coef_, dtype=np.float64)
    b = np.asarray(lr.intercept_, dtype=np.float64).ravel().copy()
    steps = [s for _, s in estimator.steps[:-1]] if isinstance(estimator, Pipeline) else []
    for step in reversed(steps):
        if isinstance(step, WhitenedPCA):
            step = step.pca_
        if isinstance(step, PCA):
            M = np.asarray(step.components_, dtype=np.float64)  # k x d
            if step.whiten:
                scale = np.sqrt(np.asarray(step.explained_variance_, dtype=np.float64))
                scale = np.maximum(scale, np.finfo(step.explained_variance_.dtype).eps)
                M = M / scale[:, None]
            W = W @ M
            b = b - W @ np.asarray(step.mean_, dtype=np.float64)
        elif isinstance(step, StandardScaler):
            if step.scale_ is not None:
                W = W / np.asarray(step.scale_, dtype=np.float64)
            if step.mean_ is not None:
                b = b - W @ np.asarray(step.mean_, dtype=np.float64)
        else:
            raise UserError(f"cannot fold a {type(step).__name__} into the classifier; only scalers and PCA")
    return W, b


def _has_pca(estimator: BaseEstimator) -> bool:
    return isinstance(estimator, Pipeline) and any(isinstance(s, (PCA, WhitenedPCA)) for _, s in estimator.steps)


def _folded(estimator: BaseEstimator) -> LogisticRegression:
    """A fitted-looking `LogisticRegression` on the raw activations with the folded coefficients."""
    lr = final_step(estimator)
    W, b = fold_linear(estimator)
    out = LogisticRegression(max_iter=lr.max_iter, class_weight=lr.class_weight, random_state=lr.random_state)
    out.classes_ = lr.classes_
    out.coef_, out.intercept_ = W, b
    out.n_features_in_ = int(estimator.n_features_in_)
    out.n_iter_ = np.asarray(getattr(lr, "n_iter_", [0])).ravel()[:1]
    return out


# --------------------------------------------------------------------------- estimator


def make_classifier(
    class_weight: str | None = "balanced",
    max_iter: int = 1000,
    cv: int = 5,
    seed: int = 0,
    n_jobs: int | None = None,
    scale: bool | None = None,
    Cs: int | list[float] = 10,
    scoring: str = "neg_log_loss",
    pca: int | float = PCA_COMPONENTS,
) -> BaseEstimator:
    """The reference's `LogisticRegressionCV`, with class weights, on whitened PCA components of the
    (by default) standardized inputs.

    `pca`: components kept (clipped to the rows and features seen), or a share of the variance in
    (0, 1), or 0 for no PCA (the classifier on the 1,024 standardized activations, as before). The
    PCA is fitted on the rows given to `fit`, before the inner folds split them (it sees no labels).
    `scale`: standardize first; None (default) standardizes only without PCA. The whitened PCA
    already evens the scales out, and on the raw activations its leading components are the
    t-SNE's own (the cluster stage maps PCA-50 of the raw rows), the ones the clusters were found in.

    Raw activations have very unequal scales, which slows lbfgs down; the scaler becomes one ONNX
    `Scaler` node. The inner CV folds are shuffled: lists are often sorted by identity or
    directory, and unshuffled folds would then pick C on correlated rows. C is chosen by log loss
    (scikit-learn's coming default), not the reference's accuracy: on well separated clusters
    every C ties on accuracy, the smallest (1e-4) wins, and the scores come out nearly flat
    (mean top probability 0.30 over 5 clusters at accuracy 1.0), useless as a confidence.
    `scoring="accuracy"` gives the reference's choice back.
    """
    if class_weight is not None and class_weight not in CLASS_WEIGHTS:
        raise UserError(f"class_weight {class_weight!r} is not one of: balanced, none")
    if not isinstance(cv, (int, np.integer)) or cv < 2:
        raise UserError(f"cv={cv!r}: the classifier's inner cross-validation needs an integer number of folds >= 2")
    params: dict[str, Any] = dict(
        Cs=Cs,
        cv=StratifiedKFold(n_splits=int(cv), shuffle=True, random_state=seed),
        max_iter=max_iter,
        class_weight=CLASS_WEIGHTS.get(class_weight),
        n_jobs=n_jobs,
        random_state=seed,
        scoring=scoring,
    )
    # Spelled out where this scikit-learn has them (1.8+), so it neither warns nor changes under us.
    known = inspect.signature(LogisticRegressionCV).parameters
    if "l1_ratios" in known:
        params["l1_ratios"] = (0.0,)
    if "use_legacy_attributes" in known:
        params["use_legacy_attributes"] = False
    lr = LogisticRegressionCV(**params)
    pca = _check_pca(pca)
    steps = [("scale", StandardScaler())] if (not pca if scale is None else scale) else []
    if pca:
        steps.append(("pca", WhitenedPCA(pca, random_state=seed)))
    return Pipeline([*steps, ("logreg", lr)]) if steps else lr


def refit_with_chosen_C(cv_estimator: BaseEstimator) -> BaseEstimator:
    """An unfitted `LogisticRegression` at the C the cross-validation chose, same scaling and weights.

    The final model on every row reuses the C chosen on the training split instead of running the
    whole C search again: it costs one fit instead of folds x Cs (about half the stage's time),
    and C chosen on 80 % of the rows is as good a choice for 100 %.
    """
    lr = final_step(cv_estimator)
    single = LogisticRegression(
        C=_chosen_C(cv_estimator), max_iter=lr.max_iter, class_weight=lr.class_weight, random_state=lr.random_state
    )
    if not isinstance(cv_estimator, Pipeline):
        return single
    return Pipeline([*((name, clone(step)) for name, step in cv_estimator.steps[:-1]), ("logreg", single)])


def final_step(estimator: BaseEstimator) -> BaseEstimator:
    """The classifier itself, inside a Pipeline or not."""
    return estimator[-1] if isinstance(estimator, Pipeline) else estimator


# --------------------------------------------------------------------------- validation


def holdout_split(y: np.ndarray, test_size: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, held-out), stratified, with at least one held-out row per cluster that has two.

    `train_test_split(stratify=)` can leave a small cluster out of the held-out rows altogether,
    and refuses clusters of one; here a cluster of n >= 2 rows gives max(1, round(test_size * n))
    rows (at most n - 1) to the held-out side, and a cluster of one stays in training. Noise
    (label < 0) is in neither. Deterministic for (y, test_size, seed): the stage can recompute it.
    """
    if not 0.0 < test_size < 1.0:
        raise UserError(f"test_size={test_size!r}: the held-out fraction must be between 0 and 1, e.g. 0.2")
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y[y >= 0]):
        rows = rng.permutation(np.flatnonzero(y == c))
        n_test = 0 if len(rows) < 2 else min(len(rows) - 1, max(1, int(round(test_size * len(rows)))))
        test.append(rows[:n_test])
        train.append(rows[n_test:])
    if not train:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(test)).astype(np.int64)


def top_probability(scores: np.ndarray) -> np.ndarray:
    """The top softmax probability of raw scores as the ONNX head gives them (binary: [-s, s])."""
    s = np.asarray(scores, np.float64)
    if s.ndim == 1:
        s = np.stack([-s, s], axis=1)
    s = s - s.max(axis=1, keepdims=True)
    p = np.exp(s)
    return (p / p.sum(axis=1, keepdims=True)).max(axis=1)


#: Above this the held-out probabilities are saturated: a threshold there cannot tell anything apart.
SATURATED = 0.999


def _unknown(est: BaseEstimator, X_test: np.ndarray, quantile: float) -> dict | None:
    top = top_probability(est.decision_function(X_test))
    threshold = float(np.quantile(top, quantile))
    if threshold >= SATURATED:
        log.info(
            "classifier: held-out top probabilities are saturated (%.4f at %g); no unknown threshold",
            threshold,
            quantile,
        )
        return None
    return {"quantile": float(quantile), "threshold": threshold, "rows": int(len(top))}


def fit_validated(
    X: np.ndarray,
    y: np.ndarray,
    *,
    test_size: float = 0.2,
    seed: int = 0,
    threads: int | None = FIT_THREADS,
    unknown: float = 0.0,
    cv_rows: int = 0,
    **make_kwargs: Any,
) -> tuple[BaseEstimator, dict]:
    """Fit on a stratified split, measure on the held-out rows, then refit on every (non-noise) row.

    `threads` caps the BLAS / OpenMP threads of the fits (None: the libraries' defaults, as
    before). The default 1: on 2 shared cores a threaded BLAS on these small per-iteration
    products spends its time waiting (measured: one lbfgs fit on 2,400 x 64, 20 clusters, 0.05 s
    single-threaded vs 2-4 s with the default threads at load 10). The results are the same.

    Returns the refitted estimator and a JSON-ready dict: held-out `accuracy`, `balanced_accuracy`,
    `roc_auc` ({ovr,ovo}_{weighted,macro}), `confusion_matrix` (rows true, columns predicted, in
    `classes` order), `per_cluster` (precision, recall, f1, support, true vs predicted share), the
    row counts (`n_rows`, `n_noise`, `n_train`, `n_test`, `n_fit_final`), `train_only_clusters`,
    the settings, the chosen C, `notes`, and `warnings`: everything worth a look, each also logged
    at WARNING level. The held-out rows are `holdout_split(y, test_size, seed)[1]`.

    `unknown` (a share, e.g. 0.01): also calibrate an "unknown" threshold on the held-out rows,
    the `unknown` quantile of their top softmax probability under the validation fit (the rows it
    never saw), in `metrics["unknown"]` = {quantile, threshold}; 0 leaves it out (None).

    `cv_rows` (0: no cap): C is searched (folds x Cs fits) on a stratified seeded sample of at most
    this many training rows; the validation model is then one fit at that C on every training row
    (`search_rows` in the metrics). Why: the search is folds x Cs times one fit, and one
    hyperparameter is as well chosen on 50,000 rows as on 300,000; the figures stay the held-out ones.
    """
    X, y = _check_data(X, y)
    noise = y < 0
    classes = np.unique(y[~noise])
    if len(classes) < 2:
        raise UserError(
            f"{len(classes)} cluster(s) besides noise: a classifier needs at least 2; "
            "cluster again with a finer setting (e.g. smaller eps or min_samples)"
        )
    train, test = holdout_split(y, test_size, seed)
    counts = {int(c): int((y == c).sum()) for c in classes}
    problems: list[str] = []
    notes: list[str] = []
    if noise.any():
        notes.append(
            f"{int(noise.sum())} noise rows (label < 0) were left out of training and validation; "
            "the classifier still assigns every image to one of the clusters"
        )
    train_only = [c for c, n in counts.items() if n < 2]
    if train_only:
        problems.append(
            f"clusters {train_only} have a single row: kept in training only, not validated "
            "(they can hardly be learned; consider merging them or clustering again)"
        )

    make_kwargs.setdefault("seed", seed)
    est = make_classifier(**make_kwargs)
    search = search_rows(y, train, cv_rows, seed)
    with _threads(threads):
        problems += _fit(est, X[search], y[search], "validation fit")
        model = est
        if len(search) < len(train):  # C from the sample; the validation model at that C on every training row
            model = refit_with_chosen_C(est)
            problems += _fit(model, X[train], y[train], "validation fit at the chosen C")
        pred = model.predict(X[test])
        metrics = _held_out_metrics(model, X[test], y[test], pred, classes, notes)
        metrics["unknown"] = _unknown(model, X[test], unknown) if unknown > 0 and len(test) else None
    metrics["per_cluster"] = _per_cluster(y[test], pred, classes, counts, y[train], problems)
    metrics.update(
        n_rows=int(len(y)),
        n_noise=int(noise.sum()),
        n_train=int(len(train)),
        n_test=int(len(test)),
        n_features=int(X.shape[1]),
        classes=[int(c) for c in classes],
        train_only_clusters=train_only,
        test_size=float(test_size),
        seed=int(seed),
        threads=threads,
        params={k: v for k, v in sorted(_describe(est).items())},
        C_validation=_chosen_C(est),
        pca_components=_components(model),
        search_rows=int(len(search)),
    )
    if metrics["accuracy"] < MIN_ACCURACY:
        problems.insert(
            0,
            f"HELD-OUT ACCURACY {metrics['accuracy']:.3f} IS BELOW {MIN_ACCURACY}: the clusters are not "
            "learnable from this layer's activations (the reference judged this a problem); check the "
            "layer, the preprocessing and the clustering before labeling the full set",
        )

    final = refit_with_chosen_C(est)
    fitted = ~noise
    with _threads(threads):
        problems += _fit(final, X[fitted], y[fitted], "final fit")
    metrics["n_fit_final"] = int(fitted.sum())
    metrics["C_final"] = _chosen_C(final)
    metrics["notes"] = notes
    metrics["warnings"] = problems
    for p in problems:
        log.warning("classifier: %s", p)
    for n in notes:
        log.info("classifier: %s", n)
    return final, metrics


def search_rows(y: np.ndarray, train: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """`train`, or a stratified seeded sample of `cap` of its rows (every cluster keeps its share, and at least
    as many rows as it has up to 10, so the folds still see it)."""
    if cap <= 0 or len(train) <= cap:
        return train
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(y[train]):
        rows = train[y[train] == c]
        n = max(min(len(rows), 10), int(round(cap * len(rows) / len(train))))
        picked.append(rng.choice(rows, min(n, len(rows)), replace=False))
    return np.sort(np.concatenate(picked))


def _threads(threads: int | None) -> contextlib.AbstractContextManager:
    """BLAS / OpenMP capped at `threads` inside the block (None or 0: left as they are)."""
    return threadpool_limits(int(threads)) if threads else contextlib.nullcontext()


def _check_data(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float32)  # what the ONNX graph will see
    y = np.asarray(y)
    if X.ndim != 2:
        raise UserError(f"activations have shape {X.shape}; expected N x C (one row per image)")
    if y.ndim != 1 or len(y) != len(X):
        raise UserError(f"{len(X)} activation rows but labels of shape {y.shape}: they must be one label per row")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise UserError("cluster labels must be integers (cluster ids, -1 for noise)")
    elif y.dtype.kind not in "iub":
        raise UserError(f"cluster labels have dtype {y.dtype}; expected integer cluster ids (-1 for noise)")
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise UserError(
            f"{int(bad.sum())} activation rows hold NaN or inf (first: row {int(np.argmax(bad))}); re-extract them"
        )
    return X, y.astype(np.int64)


def _fit(est: BaseEstimator, X: np.ndarray, y: np.ndarray, what: str) -> list[str]:
    """Fit, turning scikit-learn's warnings (convergence, tiny folds) into lines for the metrics."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.fit(X, y)
    seen: list[str] = []
    for w in caught:
        text = f"{what}: {w.category.__name__}: {str(w.message).splitlines()[0]}"
        if text not in seen:
            seen.append(text)
    return seen


def _held_out_metrics(
    est: BaseEstimator, X: np.ndarray, y: np.ndarray, pred: np.ndarray, classes: np.ndarray, notes: list[str]
) -> dict:
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "roc_auc": _roc_auc(y, est.predict_proba(X), classes, notes),
        "confusion_matrix": confusion_matrix(y, pred, labels=classes).astype(int).tolist(),
    }


def _roc_auc(y: np.ndarray, proba: np.ndarray, classes: np.ndarray, notes: list[str]) -> dict:
    """ROC AUC ovr/ovo x weighted/macro over the clusters present in the held-out rows."""
    keys = [f"{m}_{a}" for m in ("ovr", "ovo") for a in ("weighted", "macro")]
    present = np.unique(y)
    if len(present) < 2:
        notes.append("ROC AUC undefined: fewer than 2 clusters in the held-out rows")
        return {k: None for k in keys}
    if len(present) < len(classes):
        # Clusters absent from the held-out rows have no AUC; the rest are scored among themselves.
        cols = np.searchsorted(classes, present)
        proba = proba[:, cols] / proba[:, cols].sum(axis=1, keepdims=True)
        notes.append(
            f"ROC AUC over the {len(present)} clusters present in the held-out rows, probabilities renormalized"
        )
    if len(present) == 2:
        auc = float(roc_auc_score(y == present[1], proba[:, 1]))  # binary: all four averages coincide
        return {k: auc for k in keys}
    return {
        f"{m}_{a}": float(roc_auc_score(y, proba, multi_class=m, average=a, labels=present))
        for m in ("ovr", "ovo")
        for a in ("weighted", "macro")
    }


def _per_cluster(
    y: np.ndarray,
    pred: np.ndarray,
    classes: np.ndarray,
    counts: dict[int, int],
    y_train: np.ndarray,
    problems: list[str],
) -> list[dict]:
    """Precision, recall and true vs predicted share per cluster: the reference's blind spot."""
    p, r, f, support = precision_recall_fscore_support(y, pred, labels=classes, zero_division=0)
    rows = []
    for i, c in enumerate(classes):
        true_share = float(np.mean(y == c)) if len(y) else 0.0
        pred_share = float(np.mean(pred == c)) if len(y) else 0.0
        ratio = pred_share / true_share if true_share > 0 else None
        rows.append(
            {
                "cluster": int(c),
                "size": counts[int(c)],
                "train_support": int((y_train == c).sum()),
                "support": int(support[i]),
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "true_share": true_share,
                "predicted_share": pred_share,
                "share_ratio": ratio,
            }
        )
        if ratio is not None and ratio < UNDER_PREDICTED and support[i] >= 10:
            problems.append(
                f"cluster {int(c)} is under-predicted on held-out rows: {pred_share:.2%} predicted "
                f"vs {true_share:.2%} true (recall {r[i]:.2f})"
            )
    return rows


def _chosen_C(est: BaseEstimator) -> float:
    lr = final_step(est)
    return float(np.ravel(lr.C_ if hasattr(lr, "C_") else lr.C)[0])


def _components(est: BaseEstimator) -> int | None:
    """Whitened PCA components the fitted classifier uses; None without PCA."""
    if not _has_pca(est):
        return None
    step = next(s for _, s in est.steps if isinstance(s, (PCA, WhitenedPCA)))
    return int(step.n_components_)


def _describe(est: BaseEstimator) -> dict:
    """The settings that matter, as plain values (the CV splitter is summarized)."""
    lr = final_step(est)
    pca = est.named_steps["pca"].n_components if isinstance(est, Pipeline) and "pca" in est.named_steps else 0
    return {
        "scale": isinstance(est, Pipeline) and "scale" in est.named_steps,
        "pca": pca,
        "class_weight": lr.class_weight or "none",
        "max_iter": int(lr.max_iter),
        "cv": int(lr.cv.get_n_splits()) if hasattr(lr.cv, "get_n_splits") else lr.cv,
        "Cs": lr.Cs if isinstance(lr.Cs, int) else [float(c) for c in lr.Cs],
        "scoring": lr.scoring,
    }


# --------------------------------------------------------------------------- ONNX


def opsets_of(model: onnx.ModelProto) -> dict[str, int]:
    """Declared opset per domain ('' is ai.onnx); duplicates (skl2onnx writes '' twice) collapse."""
    out: dict[str, int] = {}
    for o in model.opset_import:
        domain = "" if o.domain in ("", "ai.onnx") else o.domain
        if domain in out and out[domain] != o.version:
            raise UserError(
                f"the model declares opset {domain or 'ai.onnx'} twice ({out[domain]} and {o.version}); "
                "fix its opset_import"
            )
        out[domain] = int(o.version)
    return out


def ml_opset_for(opset: int) -> int:
    """The ai.onnx.ml opset released with an ai.onnx opset (onnx's own version table)."""
    ml = 1
    for row in onnx.helper.VERSION_TABLE:
        if row[2] <= opset:
            ml = row[3]
    return ml


def to_onnx(
    estimator: BaseEstimator,
    n_features: int,
    *,
    target_opset: int | dict[str, int] | None = None,
    ir_version: int | None = None,
) -> onnx.ModelProto:
    """One graph `float_input -> (label, probabilities=raw scores)`, without ZipMap, checked.

    With PCA the scaler, PCA and whitening are folded into the logistic regression first
    (`fold_linear`): the graph is one `LinearClassifier` on the raw activations. Byte-reproducible:
    the same estimator and arguments give the same serialized bytes.

    `target_opset` and `ir_version` are the net's, so `merge_models` accepts the pair. An int is
    the ai.onnx opset (ai.onnx.ml stays as low as skl2onnx needs); a dict sets each domain given
    exactly. Opsets above what skl2onnx knows are reached by `retarget` (the ops are unchanged).
    """
    from skl2onnx import __max_supported_opset__, convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    seen = getattr(estimator, "n_features_in_", None)
    if seen is None:
        raise UserError("the classifier is not fitted; fit it (fit_validated) before exporting")
    if int(n_features) != int(seen):
        raise UserError(
            f"n_features={n_features} but the classifier was fitted on {seen} features; pass the activation width"
        )
    if isinstance(target_opset, dict):
        wanted = {("" if k == "ai.onnx" else k): int(v) for k, v in target_opset.items()}
    elif target_opset is not None:
        wanted = {"": int(target_opset)}
    else:
        wanted = {}
    convert_opset = None
    if wanted:
        main = wanted.get("", __max_supported_opset__)
        convert_opset = {"": min(main, __max_supported_opset__), ML: wanted.get(ML, ml_opset_for(main))}
    exported = _folded(estimator) if _has_pca(estimator) else estimator
    try:
        model = convert_sklearn(
            exported,
            initial_types=[(INPUT, FloatTensorType([None, int(n_features)]))],
            options={type(final_step(exported)): {"zipmap": False, "raw_scores": True}},
            target_opset=convert_opset,
            name=GRAPH_NAME,
            doc_string="",
        )
    except (RuntimeError, ValueError, NotImplementedError) as e:
        raise UserError(f"skl2onnx cannot export the classifier at opset {convert_opset}: {e}") from e
    model = _dedupe_opsets(model)
    model.graph.name = GRAPH_NAME
    outputs = [o.name for o in model.graph.output]
    if outputs != [LABEL, SCORES]:
        raise UserError(f"skl2onnx produced outputs {outputs}, expected {[LABEL, SCORES]}; check the skl2onnx version")
    return retarget(model, wanted, ir_version)


def retarget(model: onnx.ModelProto, opsets: dict[str, int], ir_version: int | None = None) -> onnx.ModelProto:
    """Declare other opsets / IR version without changing what any node computes.

    A domain's version is rewritten only when every node of it resolves to the same schema at
    both versions; otherwise the ai.onnx domain goes through onnx's version converter and any
    other domain is refused. The result passes `onnx.checker` (full check) or raises.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    current = opsets_of(out)
    for domain, version in opsets.items():
        old = current.get(domain)
        if old is None or old == version:
            continue
        if _same_schemas(out, domain, old, version):
            current[domain] = version
        elif domain == "":
            try:
                out = onnx.version_converter.convert_version(out, version)
            except Exception as e:  # the converter raises bare RuntimeErrors
                raise UserError(f"cannot convert the classifier from opset {old} to {version}: {e}") from e
            current = opsets_of(out)
        else:
            raise UserError(
                f"the classifier's {domain} ops differ between opset {old} and {version}; export it at {domain} {old}"
            )
    del out.opset_import[:]
    out.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in current.items())
    if ir_version is not None:
        out.ir_version = int(ir_version)
    try:
        onnx.checker.check_model(out, full_check=True)
    except onnx.checker.ValidationError as e:
        raise UserError(
            f"the classifier is not valid at IR {out.ir_version}, opsets {current}: {str(e).splitlines()[0]}"
        ) from e
    return out


def match_net(classifier_model: onnx.ModelProto, net_model: onnx.ModelProto) -> onnx.ModelProto:
    """The classifier declaring the net's IR version and the net's opset for every domain both use."""
    net = opsets_of(net_model)
    mine = opsets_of(classifier_model)
    return retarget(classifier_model, {d: v for d, v in net.items() if d in mine}, net_model.ir_version)


def _same_schemas(model: onnx.ModelProto, domain: str, old: int, new: int) -> bool:
    for node in model.graph.node:
        if (node.domain if node.domain != "ai.onnx" else "") != domain:
            continue
        try:
            a = defs.get_schema(node.op_type, old, domain).since_version
            b = defs.get_schema(node.op_type, new, domain).since_version
        except defs.SchemaError:
            return False
        if a != b:
            return False
    return True


def _dedupe_opsets(model: onnx.ModelProto) -> onnx.ModelProto:
    opsets = opsets_of(model)
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets.items())
    return model


def check_onnx(onnx_model: onnx.ModelProto, estimator: BaseEstimator, X: np.ndarray, tie_tol: float = 1e-4) -> dict:
    """Run the graph with onnxruntime on X and compare with scikit-learn; raise if the labels differ.

    Labels must agree on every row whose two best scikit-learn scores are more than `tie_tol`
    apart; on a near-tie float32 rounding may pick either side, and such rows are only counted.
    Scores (raw, as `decision_function`) are compared by max abs difference (expected < 1e-4).
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or len(X) == 0:
        raise UserError(f"check_onnx needs some N x C rows (got shape {X.shape}); pass the held-out activations")
    sess = runtime.session(onnx_model, "cpu")
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: X})))
    label, scores = got[LABEL].ravel(), got[SCORES]
    ref_label = estimator.predict(X)
    ref = np.asarray(estimator.decision_function(X), dtype=np.float64)
    if ref.ndim == 1:
        ref = np.stack([-ref, ref], axis=1)  # skl2onnx's two-class layout
    if scores.shape != ref.shape:
        raise RuntimeError(f"ONNX scores have shape {scores.shape}, scikit-learn's {ref.shape}")
    diff = np.abs(scores.astype(np.float64) - ref)
    top2 = np.sort(ref, axis=1)[:, -2:]
    ties = (top2[:, 1] - top2[:, 0]) <= tie_tol
    mismatch = label != ref_label
    figures = {
        "n_rows": int(len(X)),
        "label_agreement": float(1.0 - mismatch.mean()),
        "label_mismatches": int(mismatch.sum()),
        "near_ties": int(ties.sum()),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_abs_score": float(np.abs(ref).max()),
        "outputs": names,
        "ir_version": int(onnx_model.ir_version),
        "opsets": opsets_of(onnx_model),
    }
    hard = mismatch & ~ties
    if hard.any():
        rows = np.flatnonzero(hard)[:5].tolist()
        raise RuntimeError(
            f"the ONNX classifier disagrees with scikit-learn on {int(hard.sum())} of {len(X)} rows "
            f"(e.g. rows {rows}); max score difference {figures['max_abs_diff']:.3g}"
        )
    if figures["max_abs_diff"] >= 1e-4:
        log.warning(
            "classifier: ONNX scores differ from scikit-learn's by up to %.3g (largest |score| %.3g)",
            figures["max_abs_diff"],
            figures["max_abs_score"],
        )
    return figures
