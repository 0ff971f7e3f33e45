"""Views: several clusterings of one subset side by side (science/views.py, the cluster and evaluate stages)."""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import onnxruntime as ort
import pytest
from conftest import make_config
from sklearn.metrics import adjusted_mutual_info_score, homogeneity_score

from introspect import config
from introspect.errors import UserError
from introspect.science import views
from introspect.science.clustering import ClusterSettings
from introspect.science.planted import best_union
from introspect.science.planted_views import best_of_views
from introspect.stages import cluster, evaluate


def write_two_feature_subset(path, n=400, d=48, seed=0, mean=True):
    """Centre pixels in 3 groups (say people) and spatial means in 3 others (group 0: say a mask): independent."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 3, n)  # what the centre sees
    b = rng.integers(0, 3, n)  # what only the mean sees
    X = (rng.normal(0, 6, (3, d))[a] + rng.normal(0, 1, (n, d))).astype(np.float32)
    M = (rng.normal(0, 6, (3, d))[b] + rng.normal(0, 1, (n, d))).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["prefacen"] = X
        if mean:
            f["prefacen_mean"] = M
        f["facen"] = rng.normal(0, 1, (n, 16)).astype(np.float32)
        f["index"] = np.arange(n, dtype=np.int64)
    return X, M, a, b


@pytest.fixture
def views_cfg(tmp_path, tiny_model):
    out = tmp_path / "run"
    out.mkdir()
    data = write_two_feature_subset(out / "subset.h5")
    cfg = make_config(tmp_path / "l.txt", tmp_path, tiny_model, out)
    cfg["tsne"].update(perplexity=20.0, n_iter=250, pca=20, backend="opentsne")
    cfg["cluster"].update(views=["center", "mean"], k_grid=[2, 3, 4, 6], facets=0)
    return cfg, data


def test_each_view_finds_what_its_feature_holds(views_cfg):
    cfg, (X, M, a, b) = views_cfg
    m = cluster.run(cfg).metrics
    out = cfg["extract"]["out"]
    assert [v["name"] for v in m["views"]] == ["center", "mean"]
    with h5py.File(f"{out}/clusters.h5") as f:
        center, mean = f["views/center/label"][:], f["views/mean/label"][:]
        assert np.array_equal(center, f["label"][:])  # the center view is the top-level clustering
        assert f["views/mean"].attrs["feature"] == "mean"
    # each view's clusters lie inside its own feature's groups (the rule may split a group) and ignore the other's
    assert homogeneity_score(a, center) > 0.95 and adjusted_mutual_info_score(b, center) < 0.05
    assert homogeneity_score(b, mean) > 0.95 and adjusted_mutual_info_score(a, mean) < 0.05
    v = m["views"][1]
    assert v["grafted"] == "exact" and v["skipped"] is None and v["classifier_file"] == "classifier_mean.onnx"
    assert v["clusters"] >= 2 and v["classifier"]["accuracy"] > 0.95 and v["onnx_check"]["label_mismatches"] == 0
    sess = ort.InferenceSession(f"{out}/classifier_mean.onnx", providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: M})[0].ravel()
    assert (got == mean).mean() > 0.99  # the head reads the spatial mean, not the centre
    assert json.load(open(f"{out}/metrics.json"))["views"][1]["name"] == "mean"


def test_a_view_without_its_feature_is_skipped_with_the_reason(views_cfg, tmp_path):
    cfg, _ = views_cfg
    out = tmp_path / "run"
    (out / "classifier_mean.onnx").write_bytes(b"an earlier run's head")
    write_two_feature_subset(out / "subset.h5", mean=False)
    m = cluster.run(cfg).metrics
    v = m["views"][1]
    assert v["skipped"] and "prefacen_mean" in v["skipped"] and v["classifier_file"] is None
    assert not (out / "classifier_mean.onnx").exists()  # never grafted by mistake later
    with h5py.File(out / "clusters.h5") as f:
        assert list(f["views"]) == ["center"]


def test_the_reference_pipeline_fits_the_center_view_only():
    cfg = config.load("pipelines/reference.toml")
    assert ClusterSettings.from_config(cfg["cluster"]).views == ("center",)


@pytest.mark.parametrize("bad", [["mean"], ["center", "center"], ["center", "colour"], "center", [1]])
def test_bad_views_are_one_line(bad):
    cfg = config.load(None)
    cfg["cluster"]["views"] = bad
    with pytest.raises(UserError, match="views"):
        ClusterSettings.from_config(cfg["cluster"])


def test_zscore_gives_every_channel_unit_variance_and_keeps_constant_ones_finite():
    rng = np.random.default_rng(0)
    F = np.c_[rng.normal(5, 100, 200), rng.normal(0, 0.01, 200), np.full(200, 3.0)]
    Z = views.zscore(F)
    np.testing.assert_allclose(Z.std(axis=0), [1, 1, 0], atol=1e-9)
    assert np.isfinite(Z).all()
    assert views.prepare(views.VIEWS["center"], F) is F  # the center view sees its rows untouched


def test_best_of_views_takes_chance_the_same_way():
    rng = np.random.default_rng(1)
    y = rng.random(2000) < 0.1
    good = np.where(y, 0, rng.integers(1, 8, 2000))  # one cluster is exactly the attribute
    noise_views = {f"v{i}": rng.integers(0, 8, 2000) for i in range(4)}
    f1, best, chance = best_of_views({"good": good, **noise_views}, y, seed=0, shuffles=5)
    assert best == "good" and f1 == pytest.approx(1.0)
    _, _, chance_one = best_of_views({"v0": noise_views["v0"]}, y, seed=0, shuffles=5)
    _, _, chance_all = best_of_views(noise_views, y, seed=0, shuffles=5)
    assert chance_all >= chance_one  # more views, more tries: chance rises with them
    assert chance < 0.5


def test_evaluate_scores_each_view_and_the_best_per_attribute(views_cfg, tmp_path):
    cfg, (X, M, a, b) = views_cfg
    cluster.run(cfg)
    attrs = tmp_path / "l.attrs.csv"
    with open(attrs, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "identity", "glasses", "mask", "pose", "dark", "gray", "blur", "occluder"])
        for i in range(len(X)):
            mask = "medical" if b[i] == 0 else "none"
            w.writerow([f"{i}.jpg", int(a[i]), "none", mask, "frontal", 0, 0, 0, "none"])
    rec = evaluate.run(cfg, attrs_csv=attrs).record
    v = rec["views"]
    assert v["views"] == ["center", "mean"]
    mask = next(r for r in v["targets"] if r["target"] == "mask=medical")
    assert mask["best"] == "mean" and mask["f1"] > 0.95 and mask["f1_chance"] < 0.6
    assert mask["views"]["center"]["f1_union"] < 0.6
    # best of views beats the center view alone; its chance is the best of views too, so it may sit below "mean"
    assert v["lift"]["best_of_views"] > v["lift"]["center"] + 0.3
    assert "best of views" in evaluate.EvaluateResult(rec, tmp_path / "e.json").text()


def write_people(out, people=60, photos=6, d=32, seed=0, copies=False):
    """full.h5 and a subset (every other row) of faces whose spatial mean is mostly who they are.

    Each person's photos share a large offset, each photo adds its own (pose, light), and an
    attribute (30 % of photos, independently) adds a smaller direction. With `copies`, a person's
    rows are one photo re-encoded: the same activations up to a little noise, the same attribute,
    and embeddings as close as another photo's, so only the activations tell them apart."""
    rng = np.random.default_rng(seed)
    person = np.repeat(np.arange(people), photos)
    n = len(person)
    centres = rng.normal(0, 1, (people, 128))  # as wide as a face embedding: strangers near cosine 0
    E = centres[person] + 0.6 * rng.normal(0, 1, (n, 128))  # same person: cosine about 0.74
    first = np.arange(n) - np.arange(n) % photos  # each person's first row
    attr = rng.random(n) < 0.3
    photo = rng.normal(0, 2, (n, d))
    if copies:
        attr, photo = attr[first], photo[first]
    M = rng.normal(0, 8, (people, d))[person] + 3.0 * attr[:, None] * rng.normal(0, 1, d) + photo
    M = M + rng.normal(0, 0.1, (n, d))
    index = np.arange(n, dtype=np.int64)
    with h5py.File(out / "full.h5", "w") as f:
        f["prefacen"], f["prefacen_mean"] = M.astype(np.float32), M.astype(np.float32)
        f["facen"], f["index"] = E.astype(np.float32), index
    sub = index[::2]
    with h5py.File(out / "subset.h5", "w") as f:
        f["prefacen"], f["prefacen_mean"] = M[sub].astype(np.float32), M[sub].astype(np.float32)
        f["facen"], f["index"] = E[sub].astype(np.float32), sub
    return attr[sub], person[sub]


@pytest.fixture
def people_cfg(tmp_path, tiny_model):
    out = tmp_path / "run"
    out.mkdir()
    cfg = make_config(tmp_path / "l.txt", tmp_path, tiny_model, out)
    cfg["tsne"].update(perplexity=10.0, n_iter=250, pca=10, backend="opentsne")
    cfg["cluster"].update(views=["center", "mean", "noid"], k_grid=[2, 3, 4, 6], facets=0)
    return cfg, out


def test_the_identity_removed_view_finds_what_people_hide(people_cfg):
    cfg, out = people_cfg
    attr, person = write_people(out)
    m = cluster.run(cfg).metrics
    noid = m["views"][2]
    assert noid["name"] == "noid" and noid["skipped"] is None and noid["grafted"] == "approximate"
    found = noid["identity_removed"]
    assert found["searched"].startswith("all 360") and found["rows_with_other_photos"] > 0.9
    with h5py.File(out / "clusters.h5") as f:
        mean, nid = f["views/mean/label"][:], f["views/noid/label"][:]
    ok = nid >= 0
    # the attribute, once people are removed (a person's other photos that share it blur the cut);
    # the spatial mean alone sees people
    f1_noid, f1_mean = best_union(nid[ok], attr[ok])[0], best_union(mean, attr)[0]
    assert f1_noid > 0.85 and f1_noid > f1_mean + 0.1, (f1_noid, f1_mean)
    assert "accuracy" in noid["approximation"] and (out / "classifier_noid.onnx").is_file()


def test_copies_of_one_photo_are_not_other_photos_of_the_person(people_cfg):
    """Every copy is set aside (never subtracted); what is left are look-alikes, few above the same-person line."""
    cfg, out = people_cfg
    attr, person = write_people(out, copies=True)
    m = cluster.run(cfg).metrics
    noid = m["views"][2]
    if noid["skipped"]:
        assert "too few rows with same-person neighbours" in noid["skipped"]
        return
    found = noid["identity_removed"]
    copies = len(person) * 5  # each subset row's 5 copies in full.h5
    assert found["near_duplicates_left_out"] >= copies
    assert found["rows_with_a_likely_same_person_photo"] <= 0.1  # chance matches: the line allows 0.1 a row


def test_further_views_take_the_rule_when_the_center_view_is_fixed_on_the_map(views_cfg):
    cfg, (X, M, a, b) = views_cfg
    cfg["cluster"].update(space="map", settings="fixed", eps=0.3, min_samples=10)  # the reference's way
    m = cluster.run(cfg).metrics
    assert m["discovery"]["space"] == "map"
    mean = m["views"][1]
    assert mean["skipped"] is None and mean["discovery"]["space"] == "pca" and "rule" in mean["discovery"]


def test_size_caps_bound_the_rule_and_the_search_and_the_partitions_cover_every_row(people_cfg):
    cfg, out = people_cfg
    write_people(out)
    cfg["cluster"].update(rule_rows=100, noid_rows=100)
    cfg["classifier"]["cv_rows"] = 100
    m = cluster.run(cfg).metrics
    center, mean, noid = m["views"]
    assert center["discovery"]["rule_rows"] == mean["discovery"]["rule_rows"] == 100
    assert m["classifier"]["search_rows"] < m["classifier"]["n_train"]
    with h5py.File(out / "clusters.h5") as f:
        labels, mean_labels, noid_labels = f["label"][:], f["views/mean/label"][:], f["views/noid/label"][:]
    assert len(labels) == 180 and (labels >= 0).all() and (mean_labels >= 0).all()  # fitted on every row
    found = noid["identity_removed"]
    assert found["rows_searched"] == 100 and found["rows_labelled_by_the_head"] == 80  # the rest, by the view's head
    assert (noid_labels >= 0).sum() > 170
    assert set(noid["steps"]) == {"identity_search", "partition", "head", "facets", "identity_flags"}
