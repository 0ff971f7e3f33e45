"""The classifier stage: held-out figures, class weighting, refit, ONNX export matched to a net."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import REPO
from onnx import TensorProto, compose, helper
from sklearn.base import clone
from threadpoolctl import threadpool_limits

from introspect.errors import UserError
from introspect.science import classifier as clf

KEYS = {
    "accuracy",
    "balanced_accuracy",
    "roc_auc",
    "confusion_matrix",
    "per_cluster",
    "n_rows",
    "n_noise",
    "n_train",
    "n_test",
    "n_features",
    "classes",
    "train_only_clusters",
    "test_size",
    "seed",
    "params",
    "C_validation",
    "pca_components",
    "threads",
    "unknown",
    "n_fit_final",
    "C_final",
    "search_rows",
    "notes",
    "warnings",
}
AUC_KEYS = {"ovr_weighted", "ovr_macro", "ovo_weighted", "ovo_macro"}
CLUSTER_KEYS = {
    "cluster",
    "size",
    "train_support",
    "support",
    "precision",
    "recall",
    "f1",
    "true_share",
    "predicted_share",
    "share_ratio",
}
FAST = dict(cv=3, Cs=4)
ONE_THREAD = ort.SessionOptions()
ONE_THREAD.intra_op_num_threads = 1


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Threaded BLAS on small matrices and 2 shared cores is 50x slower, not faster."""
    with threadpool_limits(1):
        yield


def mixture(
    n: int, d: int = 64, k: int = 5, rare: float = 0.02, sep: float = 6.0, near: float | None = None, seed: int = 0
):
    """k unit Gaussians, means `sep` from a common (uncentered) origin; the last cluster is rare.

    With `near`, the rare cluster sits that far from cluster 0 and overlaps it, like a "glasses"
    cluster beside the big mixed one.
    """
    rng = np.random.default_rng(seed)
    p = np.r_[np.full(k - 1, (1 - rare) / (k - 1)), rare]
    y = rng.choice(k, n, p=p)
    means = rng.normal(size=(k, d))
    means *= sep / np.linalg.norm(means, axis=1, keepdims=True)
    if near is not None:
        step = rng.normal(size=d)
        means[-1] = means[0] + near * step / np.linalg.norm(step)
    X = (means[y] + rng.normal(size=(n, d)) + rng.normal(0, 5, d)).astype(np.float32)
    return X, y


@pytest.fixture(scope="module")
def separable():
    with threadpool_limits(1):
        X, y = mixture(1500)
        est, metrics = clf.fit_validated(X, y, **FAST)
    return X, y, est, metrics


# --------------------------------------------------------------------------- fit_validated


def test_metrics_on_separable_data(separable):
    X, y, est, m = separable
    assert set(m) == KEYS
    assert set(m["roc_auc"]) == AUC_KEYS
    json.dumps(m)  # plain values only
    assert m["accuracy"] > 0.98 and m["balanced_accuracy"] > 0.95
    assert all(v > 0.98 for v in m["roc_auc"].values())
    assert m["classes"] == [0, 1, 2, 3, 4]
    assert len(m["per_cluster"]) == 5 and all(set(r) == CLUSTER_KEYS for r in m["per_cluster"])
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (5, 5) and cm.sum() == m["n_test"]
    assert m["n_train"] + m["n_test"] == len(y) and m["n_noise"] == 0
    assert m["n_test"] == pytest.approx(0.2 * len(y), abs=5)
    assert m["warnings"] == [] and m["params"]["class_weight"] == "balanced"
    assert m["params"]["pca"] == clf.PCA_COMPONENTS and not m["params"]["scale"]  # the PCA whitens
    # every cluster, the rare one included (~2 %), is validated
    assert all(r["support"] >= 1 for r in m["per_cluster"])


def test_scores_are_confident_on_separable_data(separable):
    """Log-loss picks a C that keeps the scores meaningful; accuracy would tie and pick C = 1e-4."""
    X, y, est, m = separable
    assert m["params"]["scoring"] == "neg_log_loss" and m["C_final"] > 1e-3
    assert est.predict_proba(X).max(axis=1).mean() > 0.9


def test_final_model_is_refit_on_every_row(separable):
    """One fit at the C validation chose, not a second C search."""
    X, y, est, m = separable
    assert m["C_final"] == m["C_validation"] and type(est[-1]).__name__ == "LogisticRegression"
    assert est[0].n_samples_seen_ == len(y) == m["n_fit_final"]
    assert est.n_features_in_ == 64
    assert list(est.classes_) == [0, 1, 2, 3, 4]


def test_balanced_weights_keep_the_rare_cluster_share():
    """The reference's failure: unweighted, a rare overlapping cluster almost vanishes from predictions."""
    X, y = mixture(3000, near=2.25, seed=0)
    shares = {}
    for weight in ("balanced", "none"):
        # half held out: ~30 rare rows, so a share is not decided by one or two rows
        _, m = clf.fit_validated(X, y, class_weight=weight, test_size=0.5, cv=2, Cs=[0.05])
        rare = m["per_cluster"][4]
        assert rare["true_share"] == pytest.approx(0.02, abs=0.005)
        shares[weight] = rare["predicted_share"] / rare["true_share"]
        if weight == "none":
            assert any("cluster 4 is under-predicted" in w for w in m["warnings"])
    assert 0.5 <= shares["balanced"] <= 3.0
    assert shares["none"] < 0.5
    assert shares["none"] < shares["balanced"] / 3


def test_noise_rows_are_left_out_and_counted():
    X, y = mixture(800, k=3, rare=0.1)
    y = y.copy()
    y[::10] = -1
    est, m = clf.fit_validated(X, y, **FAST)
    noise = int((y == -1).sum())
    assert m["n_noise"] == noise and m["classes"] == [0, 1, 2]
    assert m["n_train"] + m["n_test"] == m["n_fit_final"] == len(y) - noise
    assert est[0].n_samples_seen_ == len(y) - noise and -1 not in est.classes_
    assert any("noise" in n for n in m["notes"])


def test_single_row_cluster_is_trained_not_validated(caplog):
    X, y = mixture(600, k=3, rare=0.1)
    X = np.vstack([X, X[:1] + 50])
    y = np.r_[y, 7]
    with caplog.at_level(logging.WARNING, logger="introspect.science.classifier"):
        est, m = clf.fit_validated(X, y, **FAST)
    assert m["train_only_clusters"] == [7] and 7 in est.classes_
    lone = m["per_cluster"][-1]
    assert lone["cluster"] == 7 and lone["support"] == 0 and lone["share_ratio"] is None
    assert any("single row" in w for w in m["warnings"])
    assert any("single row" in r.getMessage() for r in caplog.records)
    assert all(0.9 < v <= 1 for v in m["roc_auc"].values())  # over the 3 validated clusters
    json.dumps(m)


def test_holdout_split_validates_every_cluster_of_two_or_more():
    y = np.r_[np.zeros(100), np.ones(2), np.full(3, 2), [3], [-1, -1]].astype(int)
    train, test = clf.holdout_split(y, 0.2, seed=1)
    assert set(y[test]) == {0, 1, 2} and 3 in y[train]
    assert not set(train) & set(test) and -1 not in y[np.r_[train, test]]
    assert len(train) + len(test) == len(y) - 2
    assert (y[test] == 0).sum() == 20
    again = clf.holdout_split(y, 0.2, seed=1)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)


def test_low_accuracy_is_a_loud_warning(caplog):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 16)).astype(np.float32)
    y = rng.integers(0, 4, 400)  # labels unrelated to the activations
    with caplog.at_level(logging.WARNING, logger="introspect.science.classifier"):
        _, m = clf.fit_validated(X, y, **FAST)
    assert m["accuracy"] < 0.7
    assert "BELOW 0.7" in m["warnings"][0]
    assert any("BELOW 0.7" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_two_clusters():
    X, y = mixture(400, k=2, rare=0.2)
    est, m = clf.fit_validated(X, y, scale=False, **FAST)
    assert m["accuracy"] > 0.95 and len(set(m["roc_auc"].values())) == 1
    onnx_model = clf.to_onnx(est, 64)
    fig = clf.check_onnx(onnx_model, est, X)
    assert fig["label_mismatches"] == 0 and fig["max_abs_diff"] < 1e-4


@pytest.mark.parametrize(
    "call",
    [
        lambda X, y: clf.fit_validated(X, np.zeros_like(y)),  # one cluster
        lambda X, y: clf.fit_validated(X, np.where(y >= 0, -1, y)),  # all noise
        lambda X, y: clf.fit_validated(X[:-1], y),
        lambda X, y: clf.fit_validated(X[:, 0], y),
        lambda X, y: clf.fit_validated(np.where(np.arange(len(X))[:, None] == 3, np.nan, X), y),
        lambda X, y: clf.fit_validated(X, y + 0.5),
        lambda X, y: clf.fit_validated(X, y, test_size=1.5),
        lambda X, y: clf.make_classifier(class_weight="rare"),
        lambda X, y: clf.make_classifier(cv=1),
        lambda X, y: clf.make_classifier(pca=-1),
        lambda X, y: clf.make_classifier(pca=1.5),
        lambda X, y: clf.make_classifier(pca="all"),
    ],
)
def test_mistakes_are_user_errors(call):
    X, y = mixture(100, k=3, rare=0.3)
    with pytest.raises(UserError):
        call(X, y)


@pytest.mark.parametrize("scale", [True, False])
def test_clone_and_params(scale):
    est = clf.make_classifier(class_weight="none", scale=scale, seed=3, **FAST)
    twin = clone(est)
    assert type(twin) is type(est)
    lr = clf.final_step(twin)
    assert lr.class_weight is None and lr.max_iter == 1000 and lr.cv.n_splits == 3 and lr.cv.shuffle
    X, y = mixture(300, k=3, rare=0.3)
    assert np.mean(twin.fit(X, y).predict(X) == y) > 0.95  # .score() would be the CV scoring (log loss)


# --------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize(
    "pca, scale, nodes",
    [
        (clf.PCA_COMPONENTS, None, {"LinearClassifier"}),  # the default: PCA folded into one node
        (clf.PCA_COMPONENTS, True, {"LinearClassifier"}),  # scaler folded too
        (0, None, {"Scaler", "LinearClassifier"}),  # before issue 13
        (0, False, {"LinearClassifier"}),
    ],
)
def test_onnx_agrees_with_scikit_learn(separable, pca, scale, nodes):
    X, y, est, _ = separable
    if (pca, scale) != (clf.PCA_COMPONENTS, None):
        est, _ = clf.fit_validated(X, y, pca=pca, scale=scale, **FAST)
    model = clf.to_onnx(est, 64)
    assert [o.name for o in model.graph.output] == [clf.LABEL, clf.SCORES]
    assert [i.name for i in model.graph.input] == [clf.INPUT]
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.INT64
    assert model.graph.output[1].type.tensor_type.elem_type == TensorProto.FLOAT
    assert {n.op_type for n in model.graph.node} == nodes
    assert len(model.opset_import) == len(clf.opsets_of(model))  # skl2onnx's duplicate '' is gone
    fig = clf.check_onnx(model, est, X)
    assert fig["label_mismatches"] == 0 and fig["label_agreement"] == 1.0
    assert fig["max_abs_diff"] < 1e-4 and fig["n_rows"] == len(X)
    json.dumps(fig)


def test_check_onnx_raises_when_labels_disagree(separable):
    X, y, est, _ = separable
    other, _ = clf.fit_validated(X, (y + 1) % 5, **FAST)  # same clusters, other ids
    with pytest.raises(RuntimeError, match="disagrees"):
        clf.check_onnx(clf.to_onnx(other, 64), est, X[:100])


def test_to_onnx_mistakes(separable):
    X, y, est, _ = separable
    with pytest.raises(UserError, match="64 features"):
        clf.to_onnx(est, 512)
    with pytest.raises(UserError, match="not fitted"):
        clf.to_onnx(clf.make_classifier(), 64)


def dummy_net(opset: int, ir: int, c: int = 64, ml: int | None = None) -> onnx.ModelProto:
    """x -> Relu -> act (the activation the classifier reads) -> Identity -> emb."""
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["act"]), helper.make_node("Identity", ["act"], ["emb"])],
        "net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c])],
        [
            helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", c]),
            helper.make_tensor_value_info("act", TensorProto.FLOAT, ["N", c]),
        ],
    )
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(clf.ML, ml)] if ml else [])
    model = helper.make_model(g, opset_imports=opsets)
    model.ir_version = ir
    return model


def merged_labels(net: onnx.ModelProto, classifier_model: onnx.ModelProto, X: np.ndarray) -> np.ndarray:
    merged = compose.merge_models(net, classifier_model, io_map=[("act", clf.INPUT)])
    onnx.checker.check_model(merged, full_check=True)
    sess = ort.InferenceSession(merged.SerializeToString(), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": X})))
    assert set(out) == {"emb", clf.LABEL, clf.SCORES}
    return out[clf.LABEL]


@pytest.mark.parametrize("opset", [13, 17, 21])
@pytest.mark.parametrize("ir", [7, 8, 9, 10])
def test_matched_to_net_opset_and_ir(separable, opset, ir):
    X, y, est, _ = separable
    Xp = np.maximum(X[:200], 0)  # what the classifier sees after the dummy net's Relu
    net = dummy_net(opset, ir)
    for model in (clf.match_net(clf.to_onnx(est, 64), net), clf.to_onnx(est, 64, target_opset=opset, ir_version=ir)):
        assert model.ir_version == ir and clf.opsets_of(model)[""] == opset
        assert np.array_equal(merged_labels(net, model, X[:200]), est.predict(Xp))


@pytest.mark.parametrize("opset, ir, ml", [(21, 6, None), (11, 6, None), (23, 11, None), (17, 8, 3)])
def test_unusual_net_combinations(separable, opset, ir, ml):
    """SFace as shipped (IR 6 with opset 21), an old net, an opset above skl2onnx's, a net using ai.onnx.ml."""
    X, y, est, _ = separable
    net = dummy_net(opset, ir, ml=ml)
    model = clf.match_net(clf.to_onnx(est, 64), net)
    assert model.ir_version == ir and clf.opsets_of(model)[""] == opset
    assert clf.opsets_of(model)[clf.ML] == (ml or 1)
    assert np.array_equal(merged_labels(net, model, X[:100]), est.predict(np.maximum(X[:100], 0)))
    explicit = clf.to_onnx(est, 64, target_opset={"": opset, clf.ML: ml or 1}, ir_version=ir)
    assert clf.opsets_of(explicit) == clf.opsets_of(model)


def test_merges_with_the_real_sface():
    """On SFace's 128-d embedding (the graft itself is another stage): IR 6 / opset 21 as shipped."""
    path = REPO / "models" / "sface.onnx"
    if not path.is_file():
        pytest.skip("models/sface.onnx not prepared (make model)")
    net = onnx.load(path)
    assert net.ir_version == 6 and clf.opsets_of(net)[""] == 21
    inp, emb = net.graph.input[0].name, net.graph.output[0].name
    images = np.random.default_rng(0).normal(size=(8, 3, 112, 112)).astype(np.float32)
    E = ort.InferenceSession(net.SerializeToString(), ONE_THREAD, providers=["CPUExecutionProvider"]).run(
        [emb], {inp: images}
    )[0]
    labels = (E[:, 0] > np.median(E[:, 0])).astype(int)
    est = clf.make_classifier(cv=2, Cs=[1.0]).fit(E, labels)
    model = clf.to_onnx(est, E.shape[1], target_opset=21, ir_version=6)
    merged = compose.merge_models(net, model, io_map=[(emb, clf.INPUT)], outputs=[emb, clf.LABEL, clf.SCORES])
    onnx.checker.check_model(merged)
    out = ort.InferenceSession(merged.SerializeToString(), ONE_THREAD, providers=["CPUExecutionProvider"]).run(
        None, {inp: images}
    )
    assert np.allclose(out[0], E, atol=1e-5)
    assert np.array_equal(out[1], est.predict(E))


# --------------------------------------------------------------------------- whitened PCA, folded


def fitted_pipelines(X: np.ndarray, y: np.ndarray):
    """Every shape of pipeline fold_linear meets, fitted on (X, y)."""
    for kw in (dict(), dict(scale=True), dict(pca=0), dict(pca=0, scale=False), dict(pca=0.9), dict(pca=8)):
        yield kw, clf.make_classifier(cv=2, Cs=[1.0], **kw).fit(X, y)


@pytest.mark.parametrize("k", [2, 5])
def test_fold_linear_gives_scikit_learns_scores(k):
    X, y = mixture(600, k=k, rare=0.1)
    X64 = X.astype(np.float64)
    for kw, est in fitted_pipelines(X, y):
        W, b = clf.fold_linear(est)
        assert W.shape == (1 if k == 2 else k, 64) and b.shape == (W.shape[0],)
        ref = est.decision_function(X64).reshape(len(X), -1)
        assert np.abs(X64 @ W.T + b - ref).max() < 1e-6 * max(1.0, np.abs(ref).max()), kw
        model = clf.to_onnx(est, 64)
        assert [n.op_type for n in model.graph.node][-1] == "LinearClassifier"
        fig = clf.check_onnx(model, est, X)  # raw ONNX scores vs the unfolded pipeline
        assert fig["max_abs_diff"] < 1e-4 and fig["label_mismatches"] == 0, kw


def test_pca_zero_keeps_todays_fit():
    """pca=0 is the classifier before issue 13: the same CV search, C, coefficients and graph."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = mixture(800, k=4, sep=3.0)
    est, m = clf.fit_validated(X, y, pca=0, **FAST)
    train, test = clf.holdout_split(y)
    cv = LogisticRegressionCV(
        Cs=4,
        cv=StratifiedKFold(n_splits=3, shuffle=True, random_state=0),
        max_iter=1000,
        class_weight="balanced",
        random_state=0,
        scoring="neg_log_loss",
        l1_ratios=(0.0,),
        use_legacy_attributes=False,
    )
    today = Pipeline([("scale", StandardScaler()), ("logreg", cv)]).fit(X[train], y[train])
    assert m["C_validation"] == float(np.ravel(cv.C_)[0]) and m["pca_components"] is None
    assert m["accuracy"] == float(np.mean(today.predict(X[test]) == y[test]))
    final = Pipeline(
        [
            ("scale", StandardScaler()),
            ("logreg", LogisticRegression(C=m["C_final"], max_iter=1000, class_weight="balanced", random_state=0)),
        ]
    ).fit(X, y)
    assert np.array_equal(clf.final_step(est).coef_, final[-1].coef_)
    assert np.array_equal(clf.final_step(est).intercept_, final[-1].intercept_)
    assert [n.op_type for n in clf.to_onnx(est, 64).graph.node] == ["Scaler", "LinearClassifier"]


def test_pca_fit_is_close_to_todays_on_separable_data(separable):
    X, y, est, m = separable
    assert m["pca_components"] == clf.PCA_COMPONENTS and m["params"]["pca"] == clf.PCA_COMPONENTS
    _, old = clf.fit_validated(X, y, pca=0, **FAST)
    assert m["accuracy"] >= old["accuracy"] - 0.01


def test_whitened_pca_fits_few_rows():
    """Fewer rows than components: clipped to rows - 1 (no zero-variance component to blow up)."""
    X, y = mixture(6, d=8, k=3, rare=0.3)
    est = clf.make_classifier(cv=2, Cs=[1.0]).fit(X, np.arange(6) % 3)
    assert est.named_steps["pca"].n_components_ == 5
    assert np.abs(clf.fold_linear(est)[0]).max() < 1e3
    assert clf.check_onnx(clf.to_onnx(est, 8), est, X)["label_mismatches"] == 0


@pytest.mark.parametrize("pca", [clf.PCA_COMPONENTS, 0])
def test_export_is_byte_reproducible(pca):
    """Same rows and settings: the same classifier.onnx bytes, fit and export done twice."""
    X, y = mixture(500, k=4)
    net = dummy_net(13, 7)
    blobs = []
    for _ in range(2):
        est, _ = clf.fit_validated(X, y, pca=pca, **FAST)
        model = clf.match_net(clf.to_onnx(est, 64), net)
        assert model.graph.name == clf.GRAPH_NAME and model.doc_string == ""
        blobs.append(model.SerializeToString())
    assert blobs[0] == blobs[1]


def test_unknown_threshold_is_calibrated_on_held_out_rows():
    rng = np.random.default_rng(5)
    X = np.concatenate([rng.normal(c, 1.0, (150, 16)) for c in (0, 1.5, 3)]).astype(np.float32)
    y = np.repeat([0, 1, 2], 150)
    _, m = clf.fit_validated(X, y, cv=2, Cs=[1.0], unknown=0.05)
    u = m["unknown"]
    assert 0 < u["threshold"] < 1 and u["quantile"] == 0.05 and u["rows"] == m["n_test"]
    _, m = clf.fit_validated(X, y, cv=2, Cs=[1.0])
    assert m["unknown"] is None  # off unless asked for


def test_the_C_search_is_capped_and_the_fits_at_C_see_every_row():
    X, y = mixture(1500)
    _, capped = clf.fit_validated(X, y, cv_rows=400, **FAST)
    _, whole = clf.fit_validated(X, y, **FAST)
    assert whole["search_rows"] == whole["n_train"] == capped["n_train"]
    assert 400 <= capped["search_rows"] <= 420  # every cluster keeps its share (and at least 10 rows)
    assert capped["n_fit_final"] == whole["n_fit_final"] and capped["accuracy"] > 0.98
