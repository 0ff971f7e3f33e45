"""A merged model whose metadata says other than its graph does, or that no net could take: refused in one line.

The graph is the truth: the labels come from the graph's unknown threshold and facets, the
lists, distribution and report from the metadata's, so a model where the two differ is refused
before either label path runs (they would silently disagree). Each further view's are checked the
same way (test_views_graft).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper
from test_facets import _copy, base_run, faceted  # noqa: F401  (module fixtures: a run merged with facets, unknown)

from introspect import cli
from introspect.engine import merged


def _tamper(model_path: Path, **props: str | None) -> None:
    """Set (or, with None, drop) `introspect.<key>` metadata of the model in place."""
    model = onnx.load(model_path)
    kept = {p.key: p.value for p in model.metadata_props}
    for k, v in props.items():
        kept.pop(merged.META + k, None)
        if v is not None:
            kept[merged.META + k] = v
    del model.metadata_props[:]
    helper.set_model_props(model, kept)
    onnx.save(model, model_path)


def _meta(model_path: Path) -> dict:
    return {p.key[len(merged.META) :]: p.value for p in onnx.load(model_path).metadata_props}


def _deep(n: int) -> str:
    return "[" * n + "]" * n


CASES = {
    "threshold differs": (lambda m: {"unknown_threshold": repr(float(m["unknown_threshold"]) / 3)}, "threshold"),
    "threshold dropped": (lambda m: {"unknown_threshold": None}, "threshold"),
    "facet clusters differ": (
        lambda m: {
            "facets": json.dumps(
                [{**f, "clusters": [2] if f["id"] == 0 else f["clusters"]} for f in json.loads(m["facets"])]
            )
        },
        "facets' clusters",
    ),
    "facets dropped": (lambda m: {"facets": None}, "facets"),
    "deeply nested JSON": (lambda m: {"preprocess": _deep(100_000)}, "not valid JSON"),
    "nested JSON in clusters": (lambda m: {"clusters": _deep(50_000)}, "not valid JSON"),
    "preprocess size the net cannot take": (
        lambda m: {"preprocess": json.dumps({**json.loads(m["preprocess"]), "size": [200, 160]})},
        "200 x 160",
    ),
    "preprocess not a preprocessing": (lambda m: {"preprocess": json.dumps({"size": "big"})}, "preprocess"),
    "input not the model's": (lambda m: {"input": "nope"}, "'nope'"),
}


def test_the_untampered_model_agrees_with_its_graph(faceted):  # noqa: F811
    cfg, _, threshold, _ = faceted
    model, meta = merged.load_merged(Path(cfg["extract"]["out"]) / "merged.onnx")
    assert merged.graph_threshold(model) == pytest.approx(threshold) == meta["unknown_threshold"]
    m = merged.graph_members(model)
    assert m.shape == (3, 2) and np.array_equal(m, merged.membership([[0, 2], [1]], [0, 1, 2]))


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_label_refuses_a_model_whose_metadata_is_not_its_graph(faceted, tmp_path, capsys, case, fast):  # noqa: F811
    cfg, *_ = faceted
    cfg = _copy(cfg, tmp_path)
    out = Path(cfg["extract"]["out"])
    change, says = CASES[case]
    _tamper(out / "merged.onnx", **change(_meta(out / "merged.onnx")))
    argv = ["label", "-q", "--out", str(out), "--list", cfg["data"]["list"], "--root", cfg["data"]["root"]]
    rc = cli.main(argv + ([] if fast else ["--no-fast"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert says in err[0] and not (out / "labels.h5").exists()


def test_a_merged_model_onnxruntime_refuses_keeps_the_labels_under_overwrite(faceted, tmp_path, capsys):  # noqa: F811
    cfg, *_ = faceted
    cfg = _copy(cfg, tmp_path)
    out = Path(cfg["extract"]["out"])
    argv = ["label", "-q", "--out", str(out), "--list", cfg["data"]["list"], "--root", cfg["data"]["root"]]
    assert cli.main(argv + ["--no-fast"]) == 0
    before = (out / "labels.h5").read_bytes()
    model = onnx.load(out / "merged.onnx")  # an extra output through an op onnxruntime does not have
    model.graph.node.append(helper.make_node("Foo", ["cluster_scores"], ["foo"], domain="com.foo", name="foo"))
    model.graph.output.append(helper.make_tensor_value_info("foo", onnx.TensorProto.FLOAT, ["N"]))
    model.opset_import.append(helper.make_opsetid("com.foo", 1))
    onnx.save(model, out / "merged.onnx")
    capsys.readouterr()
    assert cli.main(argv + ["--no-fast", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "com.foo:Foo" in err[0], err
    assert (out / "labels.h5").read_bytes() == before
