"""The command line as a user meets it: a mistake is one line on stderr and exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import onnx
import pytest
from conftest import REPO, write_images

from introspect import cli
from introspect.engine import graph, layers

ENV = dict(os.environ, PYTHONPATH=str(REPO))


def introspect(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "introspect.cli", *map(str, args)],
        cwd=cwd or REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_user_error(res: subprocess.CompletedProcess, *words: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("introspect"), lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def small(tmp_path_factory, tiny_model):
    """(list, root, model, tmp): 20 images."""
    tmp = tmp_path_factory.mktemp("cli")
    root = tmp / "data"
    rel = write_images(root, 20, seed=4)
    lst = tmp / "list.txt"
    lst.write_text("".join(p + "\n" for p in rel))
    return lst, root, tiny_model, tmp


def base(small, out: str = "out") -> list[str]:
    lst, root, model, tmp = small
    return [
        "--list",
        lst,
        "--root",
        root,
        "--model",
        model,
        "--out",
        tmp / out,
        "--chunk-size",
        "8",
        "--batch-size",
        "4",
        "--fraction",
        "0.3",
    ]


# --------------------------------------------------------------------------- mistakes, as a real process


def _mistakes(small) -> dict[str, tuple[list, list[str]]]:
    tmp = small[3]
    (tmp / "unknown_key.toml").write_text("[extract]\nbatchsize = 3\n")
    (tmp / "bad_type.toml").write_text('[extract]\nbatch_size = "64"\n')
    no_list, no_model = base(small), base(small)
    no_list[1] = tmp / "no_list.txt"
    no_model[5] = tmp / "no_model.onnx"
    return {  # name -> (argv, words the one line must hold)
        "unknown-key": (
            ["extract", "-p", tmp / "unknown_key.toml", *base(small)],
            ["extract.batchsize", "unknown_key.toml"],
        ),
        "bad-type": (["extract", "-p", tmp / "bad_type.toml", *base(small)], ["batch_size", "bad_type.toml"]),
        "missing-pipeline": (["extract", "-p", tmp / "nope.toml", *base(small)], ["nope.toml"]),
        "missing-list": (["extract", *no_list], ["no_list.txt"]),
        "missing-model": (["extract", *no_model], ["no_model.onnx"]),
        "bad-shard": (["extract", *base(small), "--shard", "3/3"], ["--shard", "3/3"]),
        "wrong-layer": (["extract", *base(small), "--layer", "nope"], ["nope", "features_map", "introspect layers"]),
        "set-notanumber": (
            ["extract", *base(small), "--set", "extract.batch_size=notanumber"],
            ["extract.batch_size", "notanumber"],
        ),
    }


MISTAKES = [
    "unknown-key",
    "bad-type",
    "missing-pipeline",
    "missing-list",
    "missing-model",
    "bad-shard",
    "wrong-layer",
    "set-notanumber",
]


@pytest.fixture(scope="module")
def mistakes(small) -> dict[str, tuple[subprocess.CompletedProcess, list[str]]]:
    """Every mistake run as its own `introspect` process, all at once (they are independent)."""
    cases = _mistakes(small)
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "introspect.cli", *map(str, argv)],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (argv, _) in cases.items()
    }
    out = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=120)
        out[name] = (subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr), cases[name][1])
    return out


@pytest.mark.parametrize("name", MISTAKES)
def test_mistake_is_one_line_and_status_2(mistakes, name):
    res, words = mistakes[name]
    assert_user_error(res, *words)
    assert res.stdout == ""


# --------------------------------------------------------------------------- more mistakes, in process


def run_main(capsys, *args) -> subprocess.CompletedProcess:
    rc = cli.main([str(a) for a in args])
    cap = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, cap.out, cap.err)


def test_bad_toml(small, capsys):
    p = small[3] / "broken.toml"
    p.write_text("[extract\n")
    assert_user_error(run_main(capsys, "extract", "-p", p, *base(small)), "TOML", "broken.toml")


@pytest.mark.parametrize("shard", ["x", "1/0", "1/2/3", "--shard=-1/2"])
def test_bad_shard(small, capsys, shard):
    args = [shard] if shard.startswith("--") else ["--shard", shard]
    assert_user_error(run_main(capsys, "extract", *base(small), *args), "--shard")


def test_wrong_node_index(small, capsys):
    assert_user_error(run_main(capsys, "extract", *base(small), "--layer", "node:500"), "node:500")


@pytest.mark.parametrize(
    "item, word",
    [
        ("extract.nope=1", "extract.nope"),
        ("extract.batch_size", "KEY=VALUE"),
        ("extract.fraction=0", "fraction"),
        ("extract.batch_size=-1", "batch_size"),
        ("extract.device='gpu'", "gpu"),
        ("model.embedding='nope'", "nope"),
        ("preprocess.size=[100,100]", "112"),
    ],
)
def test_bad_set(small, capsys, item, word):
    assert_user_error(run_main(capsys, "extract", *base(small), "--set", item), word)


@pytest.mark.parametrize(
    "item", ["preprocess.mean=[0.0,0.0]", "preprocess.std=[0.0,1.0,1.0]", "preprocess.std=[1.0,1.0,1.0,1.0]"]
)
def test_bad_preprocess_values(small, capsys, item):
    assert_user_error(run_main(capsys, "extract", *base(small), "--set", item), "preprocess")


def test_join_without_shards(small, capsys):
    assert_user_error(run_main(capsys, "join", "--out", small[3] / "no_run"), "shard")


def test_layers_missing_model(small, capsys):
    assert_user_error(run_main(capsys, "layers", small[3] / "nope.onnx"), "nope.onnx")


# --------------------------------------------------------------------------- what works


def test_layers_marks_the_detected_layer(tiny_model):
    res = introspect("layers", tiny_model)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    maps = graph.feature_maps(onnx.load(tiny_model))
    rows = lines[2 : lines.index(next(x for x in lines if x.startswith("* auto-detected layer")))]
    assert len(rows) == len(maps) > 5
    for row, m in zip(rows, maps):
        assert m.name in row.split() and " x ".join(map(str, m.shape)) in row
        assert row.startswith("*") == (m.name == "features_map"), row
    assert sum(r.startswith("*") for r in rows) == 1
    marked = next(r for r in rows if r.startswith("*"))
    fm = next(m for m in maps if m.name == "features_map")
    assert marked.split()[1:3] == [str(fm.node_index), "features_map"]
    assert "BatchNormalization" in marked and "N x 512 x 7 x 7" in marked
    detected = next(x for x in lines if x.startswith("* auto-detected layer"))
    assert "features_map" in detected


def _candidates(stdout: str) -> tuple[list[str], str]:
    """The embedding candidates' rows of `introspect layers`, and the line that names the embedding."""
    lines = stdout.splitlines()
    start = lines.index("embedding candidates (2-D, N x D), for --embedding:") + 2
    end = next(i for i in range(start, len(lines)) if lines[i].startswith(("* embedding", "! embedding")))
    return lines[start:end], lines[end]


def test_layers_lists_the_embedding_candidates_and_marks_the_pick(tiny_model, capsys):
    """What `--embedding` may name: every N x D tensor, inner ones too, the auto pick (the first output) marked."""
    cands = layers.embedding_candidates(onnx.load(tiny_model))
    assert [c.name for c in cands] == ["flat", "fc", "embedding"] and [c.dim for c in cands] == [25088, 128, 128]
    assert cli.main(["layers", str(tiny_model)]) == 0
    rows, pick = _candidates(capsys.readouterr().out)
    assert [r.split()[2 if r.startswith("*") else 1] for r in rows] == ["flat", "fc", "embedding"]
    assert [r.startswith("*") for r in rows] == [False, False, True] and "N x 128  (graph output)" in rows[2]
    assert pick.startswith("* embedding: embedding (the first graph output")
    assert cli.main(["layers", str(tiny_model), "--embedding", "fc"]) == 0
    rows, pick = _candidates(capsys.readouterr().out)
    assert [r.startswith("*") for r in rows] == [False, True, False] and pick.startswith("* embedding: fc (as named")


def test_layers_says_when_the_first_output_is_no_embedding(tiny_model, tmp_path, capsys):
    net = graph.expose(onnx.load(tiny_model), "features_map")
    first = net.graph.output.pop()  # the 4-D map becomes the first output: what auto would take
    net.graph.output.insert(0, first)
    path = tmp_path / "map_first.onnx"
    onnx.save(net, path)
    assert cli.main(["layers", str(path)]) == 0
    rows, pick = _candidates(capsys.readouterr().out)
    assert len(rows) == 3 and not any(r.startswith("*") for r in rows)
    assert pick.startswith("! embedding: features_map") and "not N x D: name one above with --embedding" in pick


def test_extract_shards_and_join(small, capsys):
    """A single run and two shards at once (shards of one job may run side by side), then join."""
    argv = {
        "single": ["extract", "-q", *base(small, "single")],
        **{f"shard{i}": ["extract", "-q", *base(small, "sharded"), "--shard", f"{i}/2"] for i in range(2)},
    }
    procs = {
        k: subprocess.Popen(
            [sys.executable, "-m", "introspect.cli", *map(str, a)],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k, a in argv.items()
    }
    done = {k: (p.communicate(timeout=120), p.returncode) for k, p in procs.items()}
    for k, ((_, stderr), rc) in done.items():
        assert rc == 0 and "Traceback" not in stderr, (k, stderr)
    assert "extract: 20 images, 0 failed" in done["single"][0][0] and "full.h5" in done["single"][0][0]
    res = introspect("join", "-q", "--out", small[3] / "sharded")
    assert res.returncode == 0, res.stderr
    assert "join: full" in res.stdout and "join: subset" in res.stdout
    for name in ("full.h5", "subset.h5"):
        with h5py.File(small[3] / "single" / name) as a, h5py.File(small[3] / "sharded" / name) as b:
            assert (a["index"][:] == b["index"][:]).all() and (a["facen"][:] == b["facen"][:]).all()
            assert (a["prefacen"][:] == b["prefacen"][:]).all()
            assert dict(a.attrs) == dict(b.attrs)
    # the same command again: nothing to do; another model in that folder: refused unless --overwrite
    res = run_main(capsys, "extract", "-q", *base(small, "single"))
    assert res.returncode == 0 and "(0 this session)" in res.stdout
    other = small[3] / "other.onnx"
    m = onnx.load(small[2])
    m.producer_name = "something else"
    onnx.save(m, other)
    args = base(small, "single")
    args[5] = other
    assert_user_error(run_main(capsys, "extract", *args), "overwrite")
    res = run_main(capsys, "extract", "-q", *args, "--overwrite")
    assert res.returncode == 0 and "(20 this session)" in res.stdout, res.stderr
    res = run_main(capsys, "extract", "-q", *args, "--no-full", "--out", small[3] / "nofull")
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(small[3] / "nofull")) == ["subset.h5", "timings.json"]
