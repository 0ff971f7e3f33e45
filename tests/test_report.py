"""`introspect report`: the page from a real (tiny) run, checked in headless Chromium."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from conftest import REPO, make_config, write_looks

from introspect import cli
from introspect.engine.rundir import RunDir
from introspect.errors import UserError
from introspect.stages import cluster, extract, label, merge, report, report_run

EVIL = "<img src=x onerror=alert(1)>.jpg"
SCREENSHOT = REPO / "runs" / "screenshots" / "report.png"


def _images(root: Path, n_per: int = 30) -> list[str]:
    """Three looks the tiny net tells apart (red, green, blue), plus one file with a hostile name."""
    rng = np.random.default_rng(0)
    rel = write_looks(root, n_per, rng=rng)
    img = (rng.random((112, 112, 3)) * 60).astype(np.uint8)
    img[..., 0] += 180
    cv2.imwrite(str(root / EVIL), img)
    return [EVIL] + rel


@pytest.fixture(scope="module")
def reported(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("report")
    root = tmp / "data"
    lines = _images(root)
    lst = tmp / "list.txt"
    lst.write_text("".join(p + "\n" for p in lines) + "missing.jpg\n")
    cfg = make_config(lst, root, tiny_model, tmp / "run", fraction=1.0)
    cfg["tsne"].update(perplexity=10.0, n_iter=400, pca=10, backend="opentsne")
    cfg["cluster"].update(space="map", settings="fixed", eps=0.3, min_samples=5, subsample=1.0)
    cfg["cluster"]["views"] = ["center"]  # a run of one view (test_report_views writes views into a copy)
    cfg["classifier"].update(cv=2)
    extract.run(cfg, progress=False)
    metrics = cluster.run(cfg).metrics
    merge.run(cfg)
    label.run(cfg, progress=False)
    page = report.build(cfg)
    return cfg, page, metrics, lines


def test_page_and_its_files(reported):
    cfg, page, metrics, lines = reported
    folder = page.parent
    assert metrics["clusters"] >= 2
    text = page.read_text()
    assert text.count('class="cluster-section"') == metrics["clusters"]
    assert f"labelled images (sample, {len(lines)})" in text  # every labelled image placed on the map
    assert '"lx":' in text.replace(" ", "") and '"lx":[]' not in text.replace(" ", "")
    for f in ("pca.png", "compare.png", "sprites/sheet0.jpg"):
        assert (folder / f).is_file(), f
    assert len(list((folder / "thumbs").glob("*.jpg"))) == len(lines)  # every image fits in the galleries
    # the hostile name is text everywhere: escaped in HTML, \u003c-escaped in the page's JSON
    assert EVIL not in text and "&lt;img src=x onerror=alert(1)&gt;.jpg" in text
    data = json.loads(text.split('<script type="application/json" id="data">')[1].split("</script>")[0])
    assert EVIL in data["p"] and len(data["x"]) == len(lines)
    # every cluster its own colour; grey means noise only: the labelled images beneath are another colour
    assert len(set(data["colors"].values())) == len(data["colors"]) and data["noise"] not in data["colors"].values()
    assert len({data["noise"], data["labelled"], data["second"]}) == 3
    assert "grey points are noise" in text and "Pale sand dots beneath are a sample of the labelled images" in text
    assert "http://" not in text and "https://" not in text  # offline: nothing fetched from elsewhere


def test_no_run_is_one_line(tmp_path, capsys):
    assert cli.main(["report", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "make cluster" in err[0]
    with pytest.raises(UserError):
        report.build({**make_config(tmp_path / "l", tmp_path, tmp_path / "m", tmp_path)})


def test_renamed_cluster_shows_everywhere(reported, tmp_path):
    cfg, page, metrics, _ = reported
    out = Path(cfg["extract"]["out"])
    names = RunDir(out).path("names")
    before = names.read_text()
    try:
        names.write_text(before.replace('"cluster_0"', '"red <faces> & co"'))
        text = report.build(cfg).read_text()
        assert "red &lt;faces&gt; &amp; co" in text and "red <faces>" not in text
        assert "red \\u003cfaces\\u003e \\u0026 co" in text  # in the map's legend data
    finally:
        names.write_text(before)
        report.build(cfg)


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("Debian's chromium is not installed (`make test` installs it: apt-get install chromium)")
    return path


def test_page_in_headless_chromium(reported):
    from playwright.sync_api import sync_playwright

    cfg, page, metrics, lines = reported
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            tab = browser.new_page(viewport={"width": 1200, "height": 900})
            errors, dialogs = [], []
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            tab.goto(page.as_uri())
            tab.wait_for_load_state("load")
            assert tab.locator(".cluster-section").count() == metrics["clusters"]
            # every gallery image loaded (a broken path would be naturalWidth 0)
            assert tab.evaluate(
                "Array.from(document.querySelectorAll('.gallery img')).every(i => i.complete && i.naturalWidth > 0)"
            )
            # hover each of a few points: the tooltip shows that point's path, cluster and thumbnail
            data = tab.evaluate("JSON.parse(document.getElementById('data').textContent)")
            tab.locator("#map").scroll_into_view_if_needed()
            for i in (data["p"].index(EVIL), 5, len(lines) - 1):
                x, y = tab.evaluate(f"window.introspectMap.screen({i})")
                tab.mouse.move(x, y)
                assert tab.is_visible("#tip")
                assert tab.text_content("#tippath") == data["p"][i]
                assert tab.text_content("#tipcluster") == data["names"][str(data["c"][i])]
                assert "sprites/sheet0.jpg" in tab.evaluate(
                    "getComputedStyle(document.getElementById('tipimg')).backgroundImage"
                )
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(SCREENSHOT))
            # a click on a point opens its cluster's section
            tab.mouse.click(x, y)
            assert tab.evaluate("location.hash") == f"#cluster-{data['c'][i]}"
            # the hostile file name is shown as text and never became an element
            assert tab.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
            captions = tab.evaluate("Array.from(document.querySelectorAll('figcaption')).map(f => f.textContent)")
            assert EVIL in captions
            assert errors == [] and dialogs == []
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000


def test_map_takes_a_reference_sized_subset(reported, tmp_path):
    """150,000 points (the reference mapped 342 k): the page loads without errors and hovers the right point."""
    from playwright.sync_api import sync_playwright

    _, _, metrics, _ = reported
    n = 150_000
    rng = np.random.default_rng(0)
    lab = rng.integers(-1, 12, n)
    run = {
        "metrics": metrics,
        "names": {k: f"cluster_{k}" for k in range(12)},
        "source": {},
        "label": lab,
        "tsne": rng.normal(0, 1, (n, 2)) + np.c_[np.cos(lab), np.sin(lab)] * 5,
        "index": np.arange(n),
        "timings": {},
        "distribution": None,
        "evaluation": None,
        "hover_lines": {},
    }
    run["tsne"][12345] = (12.0, 12.0)  # apart from the crowd, so the point under the cursor is that one
    page = tmp_path / "index.html"
    page.write_text(report.render(run, {}, np.full(n, -1), {"compare": "compare.png"}, None))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            tab = browser.new_page(viewport={"width": 1200, "height": 900})
            errors = []
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.goto(page.as_uri())
            assert tab.evaluate("window.introspectMap.n") == n and errors == []
            tab.locator("#map").scroll_into_view_if_needed()
            x, y = tab.evaluate("window.introspectMap.screen(12345)")
            tab.mouse.move(x, y)
            assert tab.text_content("#tippath") == "line 12345"
        finally:
            browser.close()


def test_cost_model_table_when_measured(reported):
    cfg, _, _, _ = reported
    scale = Path(cfg["extract"]["out"]) / "scale.json"
    rows = [{"stage": "extract", "n": n, "seconds": n / 50, "peak_mb": 300.0} for n in (500, 1000, 2000)]
    fits = {
        "extract": {
            "fixed_seconds": 0.0,
            "seconds_per_item": 0.02,
            "b": 1.0,
            "reference_n": 17_100_000,
            "projected_seconds": 342_000.0,
            "memory_b": 0.0,
            "projected_peak_mb": 300.0,
        }
    }
    gpu = {
        "gpu": "NVIDIA H200",
        "cores": 16,
        "rows": [{"stage": "extract", "measured": "12,000 images/s (batch 512)", "hours_1": 0.396, "hours_8": 0.0495}],
    }
    scale.write_text(json.dumps({"cores": 2, "rows": rows, "fits": fits, "gpu": gpu}))
    try:
        text = report.build(cfg).read_text()
        assert "Cost model" in text and "17,100,000" in text and "95.00 h" in text and "N^1.00" in text
        assert "NVIDIA H200" in text and "12,000 images/s (batch 512)" in text and "0.05 h" in text
    finally:
        scale.unlink()
        report.build(cfg)


def test_distribution_is_read_typed(reported, tmp_path):
    """label writes distribution.json beside the CSV; both read back with types (older runs: the CSV alone)."""
    cfg, _, _, _ = reported
    out = Path(cfg["extract"]["out"])
    from_json = report_run._distribution(out)
    assert (out / "distribution.json").is_file() and from_json
    shutil.copy(out / "distribution.csv", tmp_path / "distribution.csv")
    assert report_run._distribution(tmp_path) == from_json  # the CSV fallback gives the same typed rows
    for r in from_json:
        assert type(r["cluster"]) is int and type(r["images"]) is int and type(r["flagged"]) is bool
        assert type(r["labelled_share"]) is float and (r["ratio"] is None or type(r["ratio"]) is float)
    (tmp_path / "distribution.csv").write_text(
        "cluster,name,subset_share,labelled_share,difference,ratio,images,flagged\n"
        "0,a,0.5,0.25,-0.25,0.5,3,True\n1,b,,0.75,,,9,False\n"
    )
    assert report_run._distribution(tmp_path) == [
        {
            "cluster": 0,
            "name": "a",
            "subset_share": 0.5,
            "labelled_share": 0.25,
            "difference": -0.25,
            "ratio": 0.5,
            "images": 3,
            "flagged": True,
        },
        {
            "cluster": 1,
            "name": "b",
            "subset_share": None,
            "labelled_share": 0.75,
            "difference": None,
            "ratio": None,
            "images": 9,
            "flagged": False,
        },
    ]
    assert report_run._distribution(tmp_path / "none") is None


def test_page_files_ship_with_the_package():
    """The page's template, style and script are package data: read through importlib.resources, declared for wheels."""
    from importlib import resources

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    files = ["report_page.html", "report_page.css", "report_page.js"]
    for name in files:
        assert resources.files("introspect.stages").joinpath(name).read_text(encoding="utf-8").strip(), name
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert set(files) <= set(declared["introspect.stages"])


def test_facets_unknown_and_identity_show(reported, tmp_path):
    """The cluster stage's facets, unknown threshold and identity flags, merged and labelled, on the page."""
    import h5py

    cfg, _, metrics, _ = reported
    out = tmp_path / "run"
    shutil.copytree(cfg["extract"]["out"], out)
    cfg = {**cfg, "extract": {**cfg["extract"], "out": str(out)}}
    m = json.loads((out / "metrics.json").read_text())
    ids = list(range(metrics["clusters"]))
    m["facets"] = [{"id": 0, "clusters": ids[:2]}, {"id": 1, "clusters": ids[1:]}]
    with h5py.File(out / "labels.h5") as f:
        scores = f["score"][:]
    m["unknown"] = {"quantile": 0.2, "threshold": float(np.quantile(scores, 0.2)) + 1e-7}
    m["identity"] = [  # the cluster stage's rows (discovery.same_person_pairs), one with the people counted
        {"cluster": ids[1], "size": 30, "same_person_pairs": 0.34, "threshold": 0.9, "flagged": True, "people": 2},
        {"cluster": 0, "size": 31, "same_person_pairs": 0.02, "threshold": 0.9, "flagged": False},
    ]
    (out / "metrics.json").write_text(json.dumps(m))
    names = RunDir(out).path("names")
    names.write_text(names.read_text() + '\n[facets]\n0 = "<b>eyes & co"\n1 = "facet_1"\n')
    merge.run(cfg)
    label.run({**cfg, "label": {**cfg["label"], "fast": False}}, overwrite=True, progress=False)
    text = report.build(cfg).read_text()
    assert "<h2>Facets</h2>" in text and text.count('class="facet-section"') == 2
    assert "&lt;b&gt;eyes &amp; co" in text and "<b>eyes" not in text
    assert text.count('class="identity"') == 1 and "mostly one or a few people" in text
    assert "34% of member pairs look like one person; 2 people" in text and "yes (pairs 0.34, 2 people)" in text
    assert "labelled unknown" in text and "unknown (below the threshold)" in text
    with h5py.File(out / "labels.h5") as f:
        unknown, n = int((f["label"][:] == -1).sum()), len(f["label"])
    assert 0 < unknown < n and f"{unknown} images" in text
    assert (out / "facets" / "<b>eyes & co.txt").is_file() and (out / "clusters" / "unknown.txt").is_file()
    gallery = text.split('id="facet-0"')[1].split("</section>")[0]
    srcs = [s.split('"')[0] for s in gallery.split('<img src="')[1:]]
    assert srcs and all((out / "report" / s).is_file() for s in srcs)


def test_a_second_labelling_of_new_data_is_drawn_over_the_first(reported, tmp_path):
    import shutil

    cfg, _, _, lines = reported
    out = Path(cfg["extract"]["out"])
    second = tmp_path / "second"
    shutil.copytree(out, second, ignore=shutil.ignore_patterns("labels.h5", "report", "clusters", "facets"))
    new = tmp_path / "new.txt"
    new.write_text("".join(p + "\n" for p in lines if p.startswith("g2/")))  # new data: one kind of image only
    cfg2 = {**cfg, "data": {**cfg["data"], "list": str(new)}, "extract": {**cfg["extract"], "out": str(second)}}
    label.run({**cfg2, "label": {**cfg2["label"], "fast": False}}, progress=False)
    shown = {**cfg, "report": {**cfg["report"], "compare": str(second / "labels.h5")}}
    text = report.build(shown).read_text()
    assert "New data:" in text and "new data (sample," in text and '"nx":[]' not in text.replace(" ", "")
    assert 'class="drift"' in text  # one kind of image only: its clusters' shares move

    other = tmp_path / "other.h5"
    shutil.copy(second / "labels.h5", other)
    with h5py.File(other, "a") as f:
        f.attrs["model_sha256"] = "another model"
    with pytest.raises(UserError, match="another merged model"):
        report.build({**cfg, "report": {**cfg["report"], "compare": str(other)}})
    report.build(cfg)  # leave the page as the other tests expect it
