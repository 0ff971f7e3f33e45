"""Cluster and facet names, from the user's names file or a model's metadata: names that become bad file names."""

from __future__ import annotations

import json
import os
import signal
import unicodedata

import onnx
import pytest
from conftest import kmeans_run, make_config
from onnx import helper

from introspect import cli
from introspect.engine import merged
from introspect.errors import UserError

#: Names no names file may give, as TOML escapes (TOML's basic strings take \uXXXX).
BAD = {
    "over 251 bytes in UTF-8 (63 emoji: 63 characters)": "\\U0001F600" * 63,
    "DEL": "a\\u007Fb",
    "C1 control (NEL)": "a\\u0085b",
    "right-to-left override": "\\u202Egpj.exe",
    "right-to-left isolate": "x\\u2067y",
    "left-to-right mark": "x\\u200Ey",
    "pop directional isolate": "x\\u2069",
    "tab": "a\\tb",
}


def _names_file(tmp_path, zero: str, one: str = "b"):
    path = tmp_path / "cluster_names.toml"
    path.write_text(f'[names]\n0 = "{zero}"\n1 = "{one}"\n2 = "c"\n', encoding="utf-8")
    return path


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_name_is_refused(tmp_path, case):
    with pytest.raises(UserError, match="not usable as a file name"):
        merged.load_names(_names_file(tmp_path, BAD[case]), [0, 1, 2])


def test_names_up_to_the_byte_limit_pass():
    ok = "\U0001f600" * 62  # 248 bytes: `<name>.txt` is 252
    assert merged.check_names("x", {0: ok}) == {0: ok}
    with pytest.raises(UserError, match="251 bytes"):
        merged.check_names("x", {0: ok + "abcd"})  # 252 bytes


def test_names_are_nfc_and_unique_after_nfc_and_casefold(tmp_path):
    nfd = unicodedata.normalize("NFD", "Café")
    assert nfd != "Café"
    names = merged.load_names(_names_file(tmp_path, nfd), [0, 1, 2])
    assert names[0] == "Café" and unicodedata.is_normalized("NFC", names[0])
    with pytest.raises(UserError, match="clusters 0 and 1 are both named"):
        merged.load_names(_names_file(tmp_path, "café", nfd), [0, 1, 2])
    with pytest.raises(UserError, match="facet 0 is named"):  # a facet may not look like a cluster either
        merged.check_names("x", {0: nfd.upper()}, "facet", {1: "café"})
    with pytest.raises(UserError, match="reserved"):
        merged.check_names("x", {0: "UNKNOWN"})


class Hung(BaseException):
    """Raised by the alarm: not an OSError, which the code under test could turn into a line."""


def _hung(*_):
    raise Hung("opened a FIFO and waited for a writer")


def test_a_fifo_names_file_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "cluster_names.toml"
    os.mkfifo(fifo)
    signal.signal(signal.SIGALRM, _hung)
    signal.alarm(30)
    try:
        for read in (
            lambda: merged.load_names(fifo, [0, 1]),
            lambda: merged.load_facet_names(fifo, [0], {0: "a", 1: "b"}),
            lambda: merged.set_aside_if_stale(fifo, [0, 1], "a" * 64),
        ):
            with pytest.raises(UserError, match="FIFO"):
                read()
    finally:
        signal.alarm(0)


def _with_meta(clusters: list[dict], facets: list[dict] | None = None) -> onnx.ModelProto:
    model = onnx.ModelProto()
    props = {"introspect.clusters": json.dumps(clusters)}
    if facets is not None:
        props["introspect.facets"] = json.dumps(facets)
    helper.set_model_props(model, props)
    return model


@pytest.mark.parametrize("case", list(BAD))
def test_names_from_a_models_metadata_follow_the_same_rules(case):
    name = json.loads('"' + BAD[case].replace("\\U0001F600", "\\ud83d\\ude00") + '"')
    with pytest.raises(UserError, match="not usable as a file name"):
        merged.read_metadata(_with_meta([{"id": 0, "name": name}, {"id": 1, "name": "b"}]))
    with pytest.raises(UserError, match="not usable as a file name"):
        merged.read_metadata(
            _with_meta([{"id": 0, "name": "a"}, {"id": 1, "name": "b"}], [{"id": 0, "name": name, "clusters": [0]}])
        )


def test_look_alike_names_in_metadata_are_one_name():
    nfd = unicodedata.normalize("NFD", "café")
    with pytest.raises(UserError, match="both named"):
        merged.read_metadata(_with_meta([{"id": 0, "name": "Café"}, {"id": 1, "name": nfd}]))
    meta = merged.read_metadata(_with_meta([{"id": 0, "name": nfd}, {"id": 1, "name": "b"}]))
    assert meta["clusters"][0]["name"] == "café"


@pytest.fixture(scope="module")
def ready(tmp_path_factory, tiny_model):
    """A run ready to merge (k-means clusters, classifier.onnx)."""
    from conftest import write_images

    tmp = tmp_path_factory.mktemp("names")
    root = tmp / "data"
    rel = write_images(root, 40)
    lst = tmp / "list.txt"
    lst.write_text("".join(p + "\n" for p in rel))
    cfg = make_config(lst, root, tiny_model, tmp / "run", fraction=1.0)
    kmeans_run(cfg, k=3)
    return cfg


@pytest.mark.parametrize("case", ["over 251 bytes in UTF-8 (63 emoji: 63 characters)", "right-to-left override", "DEL"])
def test_merge_with_a_bad_name_is_one_line(ready, capsys, case):
    out = ready["extract"]["out"]
    names = os.path.join(out, "cluster_names.toml")
    with open(names, "w", encoding="utf-8") as f:
        f.write(f'[names]\n0 = "{BAD[case]}"\n1 = "b"\n2 = "c"\n')
    try:
        rc = cli.main(["merge", "--out", out, "--model", ready["model"]["path"], "-q"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "not usable as a file name" in err[0], err
    finally:
        os.unlink(names)


def _view_file(tmp_path, clusters: tuple[str, str], facet: str = "f") -> object:
    path = tmp_path / "cluster_names.toml"
    text = f'[names]\n0 = "a"\n[views.mean.clusters]\n0 = "{clusters[0]}"\n1 = "{clusters[1]}"\n'
    path.write_text(text + f'[views.mean.facets]\n0 = "{facet}"\n', encoding="utf-8")
    return path


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_view_name_is_refused(tmp_path, case):
    """A further view's clusters and facets (`[views.V.clusters]`, `[views.V.facets]`) obey the same rules."""
    with pytest.raises(UserError, match="not usable as a file name"):
        merged.load_view_names(_view_file(tmp_path, (BAD[case], "b")), "mean", [0, 1], [0])
    with pytest.raises(UserError, match="not usable as a file name"):
        merged.load_view_names(_view_file(tmp_path, ("a", "b"), BAD[case]), "mean", [0, 1], [0])


def test_view_names_are_nfc_and_unique_after_nfc_and_casefold(tmp_path):
    nfd = unicodedata.normalize("NFD", "Café")
    clusters, facets = merged.load_view_names(_view_file(tmp_path, (nfd, "b"), nfd.lower() + "s"), "mean", [0, 1], [0])
    assert clusters == {0: "Café", 1: "b"} and facets == {0: "cafés"}
    with pytest.raises(UserError, match="both named"):
        merged.load_view_names(_view_file(tmp_path, ("café", nfd)), "mean", [0, 1], [0])
    with pytest.raises(UserError, match="like cluster 0"):
        merged.load_view_names(_view_file(tmp_path, ("café", "b"), nfd.upper()), "mean", [0, 1], [0])


def _with_views(view: dict) -> onnx.ModelProto:
    center = {"name": "center", "feature": "center", "grafted": "exact", "clusters": [{"id": 0, "name": "a"}]}
    model = _with_meta([{"id": 0, "name": "a"}])
    props = {p.key: p.value for p in model.metadata_props}
    props["introspect.views"] = json.dumps([center, {"feature": "mean", "grafted": "exact", **view}])
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    return model


@pytest.mark.parametrize("case", list(BAD))
def test_view_names_in_a_models_metadata_follow_the_same_rules(case):
    name = json.loads('"' + BAD[case].replace("\\U0001F600", "\\ud83d\\ude00") + '"')
    with pytest.raises(UserError, match="not usable as a file name"):
        merged.read_metadata(_with_views({"name": "mean", "clusters": [{"id": 0, "name": name}]}))
    facet = [{"id": 0, "name": name, "clusters": [0]}]
    with pytest.raises(UserError, match="not usable as a file name"):
        merged.read_metadata(_with_views({"name": "mean", "clusters": [{"id": 0, "name": "x"}], "facets": facet}))


def test_view_names_in_metadata_are_nfc():
    nfd = unicodedata.normalize("NFD", "café")
    meta = merged.read_metadata(_with_views({"name": "mean", "clusters": [{"id": 0, "name": nfd}]}))
    assert meta["views"][1]["clusters"][0]["name"] == "café"
    with pytest.raises(UserError, match="both named"):
        two = [{"id": 0, "name": "Café"}, {"id": 1, "name": nfd}]
        merged.read_metadata(_with_views({"name": "mean", "clusters": two}))
