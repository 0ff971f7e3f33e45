"""The report of a run with several views (issue 17): switch, per-view galleries, skipped and approximate views.

The views are written into a copy of test_report's run the way the cluster, label and evaluate stages write
them (metrics.json `views`, clusters.h5 `views/<name>/label`, labels.h5 `label_<name>`, evaluation.json
`views`), so the page is tested against the files, not against the stages that make them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REPO
from test_report import _chromium, reported  # noqa: F401  (a fixture)

from introspect.engine.rundir import RunDir
from introspect.stages import report, report_run

SCREENSHOT = REPO / "runs" / "screenshots" / "report_views.png"
HOSTILE = "<i>dark</i> & co"


def _data(text: str) -> dict:
    return json.loads(text.split('<script type="application/json" id="data">')[1].split("</script>")[0])


def _body(text: str) -> str:
    return text.split("<body>")[1].split('<script type="application/json"')[0]


def _view(name: str, feature: str, labels: np.ndarray, **extra: object) -> dict:
    keep = labels >= 0
    sizes = np.bincount(labels[keep]).tolist()
    return {
        "name": name,
        "feature": feature,
        "transform": f"{name}: z-score per channel, whitened PCA",
        "grafted": "exact",
        "skipped": None,
        "clusters": len(sizes),
        "sizes": sizes,
        "shares": [s / len(labels) for s in sizes],
        "noise": int((~keep).sum()),
        "discovery": {
            "space": "pca",
            "method": "kmeans",
            "k": len(sizes),
            "components": 8,
            "rule": "the most clusters stable under subsample refits",
            "boundary": False,
            "table": [
                {"method": "kmeans", "k": k, "stable": k, "stable_share": 0.9, "ari": 0.8} for k in (2, 3, len(sizes))
            ],
        },
        "facets": [],
        "identity": [],
        "unknown": None,
        "classifier": {"accuracy": 0.97},
        "classifier_file": f"classifier_{name}.onnx",
        "seconds": 1.25,
        **extra,
    }


def _with_views(cfg: dict, dest: Path, noid_skipped: bool = False) -> dict:
    """A copy of the run with a `mean` view (labelled, named, one identity flag) and a `noid` view (approximate,
    not in the labelling: its galleries come from the map), or `noid` skipped; evaluate's per-view scores."""
    shutil.copytree(cfg["extract"]["out"], dest)
    cfg = {**cfg, "extract": {**cfg["extract"], "out": str(dest)}}
    with h5py.File(dest / "clusters.h5", "a") as f:
        index, center, Y = f["index"][:], f["label"][:], f["tsne"][:]
        mean = (Y[:, 1] > np.median(Y[:, 1])).astype(np.int64)
        mean[::17] = -1  # a few points without a cluster in this view
        noid = (index % 3).astype(np.int64)
        for name, lab in (("center", center), ("mean", mean)) + ((("noid", noid),) if not noid_skipped else ()):
            if f"views/{name}" in f:  # the cluster stage's own center view, replaced as written here
                del f[f"views/{name}"]
            f[f"views/{name}/label"] = lab
            f[f"views/{name}"].attrs["feature"] = "center" if name == "center" else "mean"
    with h5py.File(dest / "labels.h5", "a") as f:  # the labelling's mean column: each labelled image's map cluster
        where = {int(i): r for r, i in enumerate(index)}
        f["label_mean"] = np.array([mean[where[int(i)]] if int(i) in where else -1 for i in f["index"][:]], np.int64)
    m = json.loads((dest / "metrics.json").read_text())
    flagged = {"cluster": 1, "size": int((mean == 1).sum()), "same_person_pairs": 0.41, "threshold": 0.5}
    flagged |= {"flagged": True, "people": 3, "largest_share": 0.62}
    per = [{"cluster": k, "precision": 0.9, "recall": 0.8} for k in (0, 1)]
    views = [
        {**_view("center", "center", center), "transform": "whitened PCA above the noise floor"},
        _view("mean", "mean", mean, identity=[flagged], classifier={"accuracy": 0.97, "per_cluster": per}),
    ]
    if noid_skipped:
        reason = "3 of 91 rows have same-person neighbours (at least half needed)"
        views.append({"name": "noid", "feature": "mean", "transform": "minus the person's mean", "skipped": reason})
    else:
        approx = "a linear head on the raw prefacen_mean learns this view's clusters at held-out accuracy 0.812"
        views.append(
            _view("noid", "mean", noid, grafted="approximate", classifier={"accuracy": 0.812}, approximation=approx)
        )
    m["views"] = views
    (dest / "metrics.json").write_text(json.dumps(m))
    names = RunDir(dest).path("names")
    names.write_text(names.read_text() + f'\n[views.mean.clusters]\n0 = {json.dumps(HOSTILE)}\n1 = "light"\n')
    scores = {v: {"f1_union": f, "f1_union_chance": 0.30, "union": [0]} for v, f in (("center", 0.41), ("mean", 0.88))}
    target = {"target": "dark=1", "positives": 30, "views": scores, "best": "mean", "f1": 0.88, "f1_chance": 0.35}
    evaluation = {
        "targets": [
            {
                "target": "dark=1",
                "positives": 30,
                "f1_cluster": 0.4,
                "f1_cluster_chance": 0.3,
                "f1_union": 0.41,
                "f1_union_chance": 0.3,
                "probe_auc": None,
            }
        ],
        "agreement": {"combination": {"nmi": 0.1}, "identity": {"nmi": 0.2}},
        "views": {
            "views": ["center", "mean"],
            "targets": [target],
            "lift": {"center": 0.11, "mean": 0.58, "best_of_views": 0.53},
        },
    }
    (dest / "evaluation.json").write_text(json.dumps(evaluation))
    return cfg


@pytest.fixture(scope="module")
def viewed(reported, tmp_path_factory):  # noqa: F811
    cfg = _with_views(reported[0], tmp_path_factory.mktemp("views") / "run")
    return cfg, report.build(cfg)


def test_each_view_has_its_colouring_and_galleries(viewed):
    cfg, page = viewed
    text = page.read_text()
    out = Path(cfg["extract"]["out"])
    m = json.loads((out / "metrics.json").read_text())
    n_center, n_mean, n_noid = (v["clusters"] for v in m["views"])
    # the switch (twice: at the map and at the galleries), a legend and a block of galleries per view
    assert text.count('class="viewbtn"') == 6 and text.count('data-show="noid"') == 2
    assert text.count('data-view="mean" hidden') == 2 and text.count('data-view="center"') == 2
    sections = _body(text).split('class="cluster-section"')[1:]
    assert len(sections) == n_center + n_mean + n_noid
    assert text.count('id="view-mean-cluster-') == n_mean and text.count('id="view-noid-cluster-') == n_noid
    # names from [views.mean.clusters], escaped; the noid view's default names
    assert "&lt;i&gt;dark&lt;/i&gt; &amp; co" in text and HOSTILE not in text and "noid-02" in text
    mean0 = text.split('id="view-mean-cluster-0"')[1].split("</section>")[0]
    assert "labelled images" in mean0 and "classifier precision 0.90, recall 0.80" in mean0
    mean1 = text.split('id="view-mean-cluster-1"')[1].split("</section>")[0]
    assert 'class="identity"' in mean1 and "41% of member pairs look like one person; 3 people" in mean1
    assert "the largest holds 62%" in mean1
    noid0 = text.split('id="view-noid-cluster-0"')[1].split("</section>")[0]
    assert "labelled images" not in noid0  # the labelling has no noid column: counts and galleries from the map
    assert "galleries drawn from its map points" in text
    with h5py.File(out / "labels.h5") as f:
        none = int((f["label_mean"][:] < 0).sum())
    assert none and f"{none} of 91 labelled images" in text and "in none of its clusters" in text
    assert (
        text.count("<summary>How this view's clusters were chosen</summary>") == 2
    )  # the rule's table of mean and noid
    srcs = [s.split('"')[0] for s in noid0.split('<img src="')[1:]]
    assert srcs and all(s.startswith("thumbs/m") and (out / "report" / s).is_file() for s in srcs)
    # the views table: the approximate view with its held-out accuracy, the exact ones as exact
    views = text.split("<h2>Views</h2>")[1].split("<h2>")[0]
    assert "approximate: a linear head learns it at held-out accuracy 0.812" in views
    assert views.count("exact linear head") == 2 and "fitted in 1.2 s" in views
    assert "<td>views</td><td>center: " in text  # the summary line
    # evaluate's per-view table
    planted = text.split("<h2>Planted attributes by view</h2>")[1].split("<h2>")[0]
    assert "0.88 (0.30)" in planted and "mean: 0.88 (0.35)" in planted and "+0.530" in planted
    # the map's script gets each further view's colouring
    data = _data(text)
    assert [v["name"] for v in data["views"]] == ["center", "mean", "noid"]
    assert data["views"][1]["c"] == [int(x) for x in h5py.File(out / "clusters.h5")["views/mean/label"][:]]
    assert data["views"][1]["names"]["0"] == HOSTILE and len(data["views"][2]["colors"]) == n_noid
    assert "http://" not in text and "https://" not in text


def test_a_skipped_view_is_listed_with_its_reason(reported, tmp_path):  # noqa: F811
    cfg = _with_views(reported[0], tmp_path / "run", noid_skipped=True)
    text = report.build(cfg).read_text()
    views = text.split("<h2>Views</h2>")[1].split("<h2>")[0]
    assert '<tr class="skipped"><td>noid</td>' in views and "3 of 91 rows have same-person neighbours" in views
    assert 'data-show="noid"' not in text and 'data-view="noid"' not in text and "view-noid-" not in text
    assert [v["name"] for v in _data(text)["views"]] == ["center", "mean"]
    assert "noid: skipped (3 of 91 rows" in text


def test_a_run_without_views_renders_as_before(reported, tmp_path):  # noqa: F811
    """No `views` (an older run) and one view (the reference pipeline) give the same page, with nothing of views."""
    cfg, page, _, _ = reported
    text = page.read_text()
    body = _body(text)
    assert "data-view" not in body and "viewbtn" not in body and "<h2>Views</h2>" not in body
    assert "views" not in _data(text) and '<div id="legend"><a class="chip" href="#cluster-0">' in body
    run = report_run.load_run(cfg)
    assert run["views"] == []
    one = {**run, "metrics": {**run["metrics"], "views": [{"name": "center", "skipped": None}]}}
    one["views"] = report_run.load_views(RunDir(cfg["extract"]["out"]), one)
    assert one["views"] == []
    slots = np.full(len(run["index"]), -1)
    figs = {"compare": "compare.png"}
    assert report.render(one, {}, slots, figs, None) == report.render(run, {}, slots, figs, None)


def test_view_switch_in_headless_chromium(viewed):
    from playwright.sync_api import sync_playwright

    cfg, page = viewed
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            tab = browser.new_page(viewport={"width": 1200, "height": 900})
            errors = []
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.goto(page.as_uri())
            tab.wait_for_load_state("load")
            data = tab.evaluate("JSON.parse(document.getElementById('data').textContent)")
            assert tab.evaluate("window.introspectMap.view()") == "center"
            assert tab.is_visible("#legend") and not tab.is_visible('.legend[data-view="mean"]')
            assert not tab.is_visible("#view-mean-cluster-0") and tab.is_visible("#cluster-0")
            tab.locator("#map").scroll_into_view_if_needed()
            pixels = "Array.from(document.getElementById('map').getContext('2d').getImageData(0,0,900,640).data)"
            before = tab.evaluate(pixels)
            tab.locator('.views button[data-show="mean"]').first.click()
            assert tab.evaluate("window.introspectMap.view()") == "mean"
            assert tab.evaluate(pixels) != before  # recoloured
            assert tab.is_visible('.legend[data-view="mean"]') and not tab.is_visible("#legend")
            assert tab.is_visible("#view-mean-cluster-0") and not tab.is_visible("#cluster-0")
            assert tab.locator('button[data-show="mean"][aria-pressed="true"]').count() == 2
            # hover and click a point: its cluster in the mean view, and its section there
            mean = data["views"][1]
            i = next(j for j, c in enumerate(mean["c"]) if c >= 0)
            x, y = tab.evaluate(f"window.introspectMap.screen({i})")
            tab.mouse.move(x, y)
            assert tab.text_content("#tipcluster") == mean["names"][str(mean["c"][i])]
            tab.mouse.click(x, y)
            assert tab.evaluate("location.hash") == f"#view-mean-cluster-{mean['c'][i]}"
            tab.evaluate("window.scrollTo(0, 0)")
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(SCREENSHOT))  # the viewport: a full-page capture took a minute
            # the noid view's galleries (from the map's points) load once shown
            tab.locator('.views button[data-show="noid"]').first.click()
            assert tab.is_visible("#view-noid-cluster-0") and not tab.is_visible("#view-mean-cluster-0")
            assert tab.evaluate(
                "Array.from(document.querySelectorAll('[data-view=\"noid\"] .gallery img'))"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
            assert errors == []
        finally:
            browser.close()
