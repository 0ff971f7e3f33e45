"""Invalid nets given to `model prepare`, `layers` and `extract`: one line on what is wrong, exit 2, nothing removed."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from introspect import cli


def _net(case: str) -> onnx.ModelProto:
    """Conv -> Relu -> GlobalAveragePool -> Flatten on N x 3 x 8 x 8, broken as `case` says ("ok": not broken)."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    if case == "NaN weights":
        w[0, 0, 0, 0] = np.nan
    inits = [numpy_helper.from_array(w, "w")]
    elem, opset, extra = TensorProto.FLOAT, 17, []
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4, name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["y"], name="flat"),
    ]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])]
    if case == "unknown op (checker)":
        nodes[1] = helper.make_node("NoSuchOp", ["c"], ["r"], name="relu")
    elif case == "unsorted graph (checker)":
        nodes = nodes[1:] + nodes[:1]
    elif case == "output without a shape (checker)":
        out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    elif case == "shapes do not add up (inference)":
        inits.append(numpy_helper.from_array(np.ones((1, 5, 1, 1), np.float32), "b"))
        nodes[0].output[0] = "c0"
        nodes.insert(1, helper.make_node("Add", ["c0", "b"], ["c"], name="add"))
    elif case == "string input":
        elem = TensorProto.STRING
    elif case == "string input into Identity":
        nodes.insert(0, helper.make_node("Identity", ["s"], ["s2"], name="id"))
        extra = [helper.make_tensor_value_info("s", TensorProto.STRING, ["N"])]
        out.append(helper.make_tensor_value_info("s2", TensorProto.STRING, ["N"]))
    elif case == "opset 99":
        opset = 99
    elif case == "custom op onnxruntime lacks (Fail)":
        nodes[1] = helper.make_node("Foo", ["c"], ["r"], name="relu", domain="com.foo")
    elif case == "int32 Gemm (NotImplemented)":
        nodes += [
            helper.make_node("Cast", ["y"], ["yi"], to=TensorProto.INT32, name="cast"),
            helper.make_node("Gemm", ["yi", "wi"], ["gi"], name="gemm"),
            helper.make_node("Cast", ["gi"], ["z"], to=TensorProto.FLOAT, name="back"),
        ]
        inits.append(numpy_helper.from_array(np.eye(4, dtype=np.int32), "wi"))
        out = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])]
    elif case == "kernel channels (runs, fails)":
        inits = [numpy_helper.from_array(np.zeros((4, 5, 3, 3), np.float32), "w")]
    g = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", elem, ["N", 3, 8, 8])] + extra, out, inits)
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("com.foo", 1)] if "custom" in case else [])
    model = helper.make_model(g, opset_imports=opsets)
    model.ir_version = 8
    return model


CASES = [
    "NaN weights",
    "unknown op (checker)",
    "unsorted graph (checker)",
    "output without a shape (checker)",
    "shapes do not add up (inference)",
    "string input",
    "string input into Identity",
    "opset 99",
    "custom op onnxruntime lacks (Fail)",
    "int32 Gemm (NotImplemented)",
    "kernel channels (runs, fails)",
]
#: What the line names, per case.
SAYS = {
    "NaN weights": "NaN",
    "unknown op (checker)": "NoSuchOp",
    "unsorted graph (checker)": "topologically sorted",
    "output without a shape (checker)": "not a valid ONNX model",
    "shapes do not add up (inference)": "do not add up",
    "string input": "string",
    "string input into Identity": "input 's' is string",
    "opset 99": "opset 99",
    "custom op onnxruntime lacks (Fail)": "com.foo:Foo",
    "int32 Gemm (NotImplemented)": "Gemm",
    "kernel channels (runs, fails)": "kernel channels",
}
#: Cases `layers` can list: it reads the graph, it never runs the net.
RUN_ONLY = {"custom op onnxruntime lacks (Fail)", "int32 Gemm (NotImplemented)", "kernel channels (runs, fails)"}


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_the_unbroken_net_prepares_and_extracts(tmp_path, capsys):
    """The cases' base net is fine: what fails below is the break alone."""
    path = tmp_path / "ok.onnx"
    onnx.save(_net("ok"), path)
    assert cli.main(["model", "prepare", str(path), "--out", str(tmp_path / "p.onnx")]) == 0


@pytest.mark.parametrize("case", CASES)
def test_prepare_and_layers_say_what_is_wrong(tmp_path, capsys, case):
    path = tmp_path / "net.onnx"
    onnx.save(_net(case), path)
    out = tmp_path / "prepared.onnx"
    assert cli.main(["model", "prepare", str(path), "--out", str(out)]) == 2
    assert SAYS[case] in _one_line(capsys) and not out.exists()
    if case not in RUN_ONLY:
        assert cli.main(["layers", str(path)]) == 2
        assert SAYS[case] in _one_line(capsys)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(list, root, run folder): a finished extract with the unbroken net, to --overwrite."""
    tmp = tmp_path_factory.mktemp("hostile_nets")
    root = tmp / "data"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        cv2.imwrite(str(root / f"{i}.png"), (rng.random((8, 8, 3)) * 255).astype(np.uint8))
    lst = tmp / "list.txt"
    lst.write_text("".join(f"{i}.png\n" for i in range(6)))
    onnx.save(_net("ok"), tmp / "ok.onnx")
    run = tmp / "run"
    argv = ["extract", "-q", "--list", str(lst), "--root", str(root), "--model", str(tmp / "ok.onnx")]
    assert cli.main(argv + ["--out", str(run), "--set", "preprocess.size=[8, 8]"]) == 0
    return lst, root, run


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_extract_says_what_is_wrong_before_removing_anything(finished, tmp_path, capsys, case, overwrite):
    lst, root, run = finished
    path = tmp_path / "net.onnx"
    onnx.save(_net(case), path)
    before = sorted(p.name for p in run.iterdir())
    argv = ["extract", "-q", "--list", str(lst), "--root", str(root), "--model", str(path), "--out", str(run)]
    argv += ["--set", "preprocess.size=[8, 8]"] + (["--overwrite"] if overwrite else [])
    assert cli.main(argv) == 2
    assert SAYS[case] in _one_line(capsys)
    assert sorted(p.name for p in run.iterdir()) == before and (run / "full.h5").is_file()


def test_a_fifo_as_the_net_is_one_line(tmp_path, capsys):
    fifo = tmp_path / "net.onnx"
    os.mkfifo(fifo)
    assert cli.main(["layers", str(fifo)]) == 2  # stat first: opening it would wait for a writer
    assert "FIFO" in _one_line(capsys)
