"""Aligned crops are shown and exported by their source photo's name (align's faces CSV beside the list):
extract and label record the CSV, label writes per-cluster exports, the report's galleries and hover show
the names; shards, join and a resume keep the record; real photos through `align` give their own names."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import extract_interrupted, make_config, write_looks
from test_align import real_photos, stage_config, yunet  # noqa: F401  (yunet: a fixture)

from introspect.engine import nets, source_names, store
from introspect.engine.rundir import Shard
from introspect.stages import align, cluster, extract, label, merge, report


def _crops(tmp: Path, n_per: int = 20) -> tuple[Path, list[str], list[tuple[str, int]]]:
    """Three looks the tiny net tells apart, as crops under data/; their list; a faces CSV beside it naming each
    crop's photo (the first two are two faces of one photo)."""
    root = tmp / "data"
    rel = write_looks(root, n_per, name=lambda g, i: f"{g:06d}/{i:09d}-0.jpg")
    src = [
        ("holiday/group.jpg", i) if g == 0 and i < 2 else (f"holiday/IMG_{g}{i:02d}.JPG", 0)
        for g in range(3)
        for i in range(n_per)
    ]
    lst = tmp / "aligned.txt"
    lst.write_text("".join(p + "\n" for p in rel))
    with open(source_names.faces_csv(lst), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["aligned_line", "source_line", "source_path", "face", "score"])
        w.writerows([k, k, s, face, 0.9] for k, (s, face) in enumerate(src))
    return lst, rel, src


def test_faces_reads_rows_in_order_and_sees_several_faces(tmp_path):
    lst, rel, src = _crops(tmp_path, 3)
    got = list(source_names.faces(source_names.faces_csv(lst)))
    assert [(f.source, f.face) for f in got] == src
    assert [f.shown() for f in got[:3]] == [
        "holiday/group.jpg (face 0)",
        "holiday/group.jpg (face 1)",
        "holiday/IMG_002.JPG",
    ]
    assert source_names.shown_names(lst, [1, 4]) == {1: "holiday/group.jpg (face 1)", 4: "holiday/IMG_101.JPG"}
    assert source_names.shown_names(tmp_path / "other.txt", [1]) == {}  # no CSV: nothing to show
    assert source_names.shown_names(lst, [1], sha256="0" * 64) == {}  # not the recorded CSV: not used


def test_paths_with_commas_quotes_and_odd_bytes_round_trip(tmp_path):
    lst = tmp_path / "aligned.txt"
    crops = ["a/1-0.jpg", 'b,"x"/2-0.jpg', "c/3-0.jpg"]
    lst.write_text("".join(c + "\n" for c in crops))
    photos = ['Smith, J. "Jo".jpg', "caf\udce9.jpg", "plain.jpg"]  # a comma and quotes; a byte that is not UTF-8
    with open(source_names.faces_csv(lst), "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.writer(f)  # align's writer: \r\n line ends, quotes where needed
        w.writerow(["aligned_line", "source_line", "source_path", "face"])
        w.writerows([k, k, p, 0] for k, p in enumerate(photos))
    assert source_names.shown_names(lst, [0, 1, 2]) == {0: photos[0], 1: "caf\\xe9.jpg", 2: "plain.jpg"}
    labels = tmp_path / "labels.h5"
    with h5py.File(labels, "w") as f:
        f["index"], f["label"] = np.arange(3), np.array([0, 0, 1])
    counts = source_names.write_source_lists(labels, lst, {0: "a", 1: "b"}, tmp_path / "sources")
    assert counts == {0: 2, 1: 1}
    with open(tmp_path / "sources" / "a.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = list(csv.reader(f))
    assert rows == [source_names.EXPORT_COLUMNS, ["0", crops[0], photos[0], "0"], ["1", crops[1], photos[1], "0"]]


@pytest.fixture(scope="module")
def named_run(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("names")
    lst, rel, src = _crops(tmp)
    cfg = make_config(lst, tmp / "data", tiny_model, tmp / "run", fraction=1.0)
    cfg["tsne"].update(perplexity=10.0, n_iter=400, pca=10, backend="opentsne")
    cfg["cluster"].update(space="map", settings="fixed", eps=0.3, min_samples=5, subsample=1.0)
    cfg["cluster"]["views"] = ["center"]
    cfg["classifier"].update(cv=2)
    extract.run(cfg, progress=False)
    cluster.run(cfg)
    merge.run(cfg)
    result = label.run(cfg, progress=False)
    page = report.build(cfg)
    return cfg, rel, src, result, page


def test_extract_and_label_record_the_faces_csv(named_run):
    cfg, rel, src, result, _ = named_run
    out = Path(cfg["extract"]["out"])
    csv_path = source_names.faces_csv(cfg["data"]["list"])
    for name in ("full.h5", "subset.h5", "labels.h5"):
        a = store.read_attrs(out / name)
        assert a["faces_csv"] == str(csv_path) and a["faces_sha256"] == nets.sha256_file(csv_path), name


def test_label_exports_each_cluster_with_source_photos(named_run):
    cfg, rel, src, result, _ = named_run
    out = Path(cfg["extract"]["out"])
    assert out / "sources" in result.files
    rows = []
    for p in sorted((out / "sources").glob("*.csv")):
        with open(p, newline="") as f:
            r = list(csv.DictReader(f))
        assert list(r[0]) == source_names.EXPORT_COLUMNS if r else True
        crops = (out / "clusters" / (p.stem + ".txt")).read_text().splitlines()
        assert [x["crop"] for x in r] == crops  # the lists `cat` gives are still the crops
        rows += r
    assert len(rows) == len(rel)
    assert {int(x["line"]): (x["source_path"], int(x["face"])) for x in rows} == dict(enumerate(src))


def test_report_shows_source_photos(named_run):
    cfg, rel, src, _, page = named_run
    html = Path(page).read_text()
    data = json.loads(html.split('<script type="application/json" id="data">')[1].split("</script>")[0])
    shown = {p for p in data["p"]}
    assert "holiday/group.jpg (face 1)" in shown and "holiday/IMG_105.JPG" in shown
    assert not any(p.endswith("-0.jpg") for p in shown)  # no crop name in the hover
    assert "<figcaption>holiday/IMG_" in html  # the galleries' captions
    assert "(crop 000" in html  # the crop's path stays in the title


def test_shards_join_and_resume_keep_the_record(named_run, tmp_path, monkeypatch):
    cfg, *_ = named_run
    sha = nets.sha256_file(source_names.faces_csv(cfg["data"]["list"]))
    sharded = {**cfg, "extract": {**cfg["extract"], "out": str(tmp_path / "sharded")}}
    for i in range(2):
        extract.run(sharded, Shard(i, 2), progress=False)
    extract.join(tmp_path / "sharded")
    assert store.read_attrs(tmp_path / "sharded" / "full.h5")["faces_sha256"] == sha
    resumed = {**cfg, "extract": {**cfg["extract"], "out": str(tmp_path / "resumed")}}
    extract_interrupted(resumed, monkeypatch)
    extract.run(resumed, progress=False)
    assert store.read_attrs(tmp_path / "resumed" / "full.h5")["faces_sha256"] == sha


def test_real_photos_aligned_are_named_by_their_files(yunet, tmp_path, tiny_model):  # noqa: F811
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, p in real_photos().items():
        (photos / name).write_bytes(p.read_bytes())
    lst = tmp_path / "photos.txt"
    lst.write_text("astronaut.png\ncamera.png\n")
    cfg = stage_config(tmp_path, lst, photos, yunet)
    assert align.run(cfg, progress=False).faces == 2
    aligned = Path(cfg["align"]["list"])
    run = make_config(aligned, Path(cfg["align"]["root"]), tiny_model, tmp_path / "run", fraction=1.0)
    extract.run(run, progress=False)
    with h5py.File(tmp_path / "run" / "full.h5") as f:
        index = f["index"][:]
        assert f.attrs["faces_csv"] == str(source_names.faces_csv(aligned))
    assert source_names.shown_names(aligned, index) == {0: "astronaut.png", 1: "camera.png"}
