"""A hostile user's cases, one class at a time: each ends in one line and exit 2, or a recorded failure, never silent.

Concurrency (two real processes into one folder), provenance between stages, join's checks, settings checked
before any work (and before --overwrite removes anything), names read from a model, the list the report shows,
data changed under a run, files that are not what they should be, and a full disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
from conftest import REPO, make_config, write_images
from onnx import helper
from test_label import _fresh, labelled_run  # noqa: F401  (a fixture)

from introspect import cli
from introspect.engine import nets, store, stream
from introspect.engine.rundir import RunDir
from introspect.errors import UserError
from introspect.stages import extract, label, report

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _cli(capsys, *argv) -> tuple[int, str]:
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return rc, err


def _args(cfg: dict, *more) -> list[str]:
    return [
        "--list",
        cfg["data"]["list"],
        "--root",
        cfg["data"]["root"],
        "--model",
        cfg["model"]["path"],
        "--out",
        cfg["extract"]["out"],
        "--batch-size",
        "16",
        "--chunk-size",
        "32",
        "--fraction",
        "0.2",
        *more,
    ]


# --------------------------------------------------------------------------- one writer per folder


def test_a_held_folder_refuses_a_second_writer_with_the_holders_pid(dataset, tiny_model, tmp_path, capsys):
    lst, root, _ = dataset
    cfg = make_config(lst, root, tiny_model, tmp_path / "out")
    with RunDir(tmp_path / "out").lock("extract"):
        for stage in ("extract", "label", "merge", "report", "sweep", "cluster", "join"):
            argv = [stage, "-q", "--out", tmp_path / "out"] + (_args(cfg) if stage == "extract" else [])
            rc, err = _cli(capsys, *argv)
            assert rc == 2 and len(err.splitlines()) == 1, (stage, err)
            assert "in use by another introspect run" in err and f"pid {os.getpid()}" in err, (stage, err)
    assert not (tmp_path / "out" / ".lock").exists()  # released and removed
    assert _cli(capsys, "extract", "-q", *_args(cfg))[0] == 0  # and free again


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    where = str(tmp_path / "out")
    code = f"from introspect.engine.rundir import RunDir; import time; c = RunDir({where!r}).lock('x'); c.__enter__(); "
    p = subprocess.Popen(
        [sys.executable, "-c", code + "print('held', flush=True); time.sleep(60)"],
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match=f"pid {p.pid}"):
        with RunDir(tmp_path / "out").lock("y"):
            pass
    p.kill()
    p.wait()
    with RunDir(tmp_path / "out").lock("y"):  # the OS released it: no stale lock
        pass


def test_two_processes_into_one_folder_one_refuses_the_result_equals_one_run(tmp_path, tiny_model):
    root = tmp_path / "data"
    rel = write_images(root, 400, seed=5)
    lst = tmp_path / "list.txt"
    lst.write_text("".join(p + "\n" for p in rel))
    cfg = make_config(lst, root, tiny_model, tmp_path / "ref")
    extract.run(cfg, progress=False)
    argv = [
        sys.executable,
        "-m",
        "introspect.cli",
        "extract",
        "-q",
        *_args({**cfg, "extract": {**cfg["extract"], "out": str(tmp_path / "out")}}),
        "--workers",
        "1",
    ]
    argv[argv.index("--batch-size") + 1] = "4"
    procs = [subprocess.Popen(argv, cwd=REPO, env=ENV, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    done = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in done)
    refused = [err for rc, err in done if rc == 2]
    if codes == [0, 0]:  # the second started after the first had finished: both saw a complete run
        pytest.skip("the first run ended before the second started (machine too fast for this race)")
    assert codes == [0, 2] and "in use by another introspect run" in refused[0] and "Traceback" not in refused[0]
    for name in ("full.h5", "subset.h5"):
        with h5py.File(tmp_path / "ref" / name) as a, h5py.File(tmp_path / "out" / name) as b:
            for k in ("index", "prefacen", "facen"):
                np.testing.assert_array_equal(a[k][:], b[k][:])


# --------------------------------------------------------------------------- settings before work


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--device", "tpu"], "device"),
        (["--seed", "-1"], "seed"),
        (["--seed", str(2**32)], "seed"),
        (["--fraction", "0"], "fraction"),
        (["--set", "tsne.seed=-1"], "seed"),
        (["--set", "cluster.min_cluster_size=0"], "min_cluster_size"),
        (["--set", "cluster.eps=0"], "eps"),
        (["--set", "classifier.test_size=1.5"], "test_size"),
        (["--set", "classifier.cv=1"], "cv"),
        (["--set", "preprocess.std=[nan, 1, 1]"], "std"),
        (["--set", "label.drift=0.5"], "drift"),
    ],
)
def test_overwrite_validates_everything_before_removing_anything(dataset, tiny_model, tmp_path, capsys, flags, says):
    lst, root, _ = dataset
    cfg = make_config(lst, root, tiny_model, tmp_path / "out")
    assert _cli(capsys, "extract", "-q", *_args(cfg))[0] == 0
    before = {p: p.read_bytes() for p in (tmp_path / "out").glob("*.h5")}
    t = time.perf_counter()
    rc, err = _cli(capsys, "extract", "-q", *_args(cfg), "--overwrite", *flags)
    assert rc == 2 and len(err.splitlines()) == 1 and says in err, err
    assert time.perf_counter() - t < 10
    assert {p: p.read_bytes() for p in (tmp_path / "out").glob("*.h5")} == before


def test_a_section_given_as_a_value_says_so(tmp_path, capsys):
    (tmp_path / "p.toml").write_text("extract = 3\n")
    rc, err = _cli(capsys, "extract", "--pipeline", tmp_path / "p.toml")
    assert rc == 2 and "should be a section [extract]" in err


@pytest.mark.parametrize("what", ["empty", "junk", "truncated", "folder"])
def test_a_model_that_is_not_onnx_is_one_line(dataset, tiny_model, tmp_path, capsys, what):
    lst, root, _ = dataset
    bad = tmp_path / "bad.onnx"
    if what == "folder":
        bad.mkdir()
    else:
        data = {"empty": b"", "junk": b"not a model at all", "truncated": tiny_model.read_bytes()[:999]}[what]
        bad.write_bytes(data)
    cfg = make_config(lst, root, bad, tmp_path / "out")
    rc, err = _cli(capsys, "extract", "-q", *_args(cfg))
    assert rc == 2 and len(err.splitlines()) == 1 and str(bad) in err, err


def test_a_folder_given_as_the_list_is_one_line(dataset, tiny_model, tmp_path, capsys):
    _, root, _ = dataset
    cfg = make_config(tmp_path, root, tiny_model, tmp_path / "out")
    rc, err = _cli(capsys, "extract", "-q", *_args(cfg))
    assert rc == 2 and "is a folder" in err


# --------------------------------------------------------------------------- data changed under a run


def test_resuming_with_another_root_refuses(dataset, tiny_model, tmp_path, monkeypatch):
    lst, root, _ = dataset
    other = tmp_path / "other"
    shutil.copytree(root, other)
    cfg = make_config(lst, root, tiny_model, tmp_path / "out")

    class Crash(Exception):
        pass

    with monkeypatch.context() as m:
        m.setattr(stream, "_finalize", lambda *a, **k: (_ for _ in ()).throw(Crash))
        with pytest.raises(Crash):
            extract.run(cfg, progress=False)
    with pytest.raises(UserError, match="data_root"):
        extract.run(make_config(lst, other, tiny_model, tmp_path / "out"), progress=False)
    assert extract.run(cfg, progress=False).processed == 0  # the same root resumes


def test_a_list_edited_during_the_run_is_refused_before_the_result(dataset, tiny_model, tmp_path, monkeypatch):
    lst, root, rel = dataset
    cfg = make_config(lst, root, tiny_model, tmp_path / "out")
    write_part = store.write_part

    def and_edit(*a, **k):
        write_part(*a, **k)
        with open(lst, "a") as f:
            f.write(rel[0] + "\n")

    monkeypatch.setattr(store, "write_part", and_edit)
    with pytest.raises(UserError, match="changed while this run read it"):
        extract.run(cfg, progress=False)
    assert not (tmp_path / "out" / "full.h5").exists()


# --------------------------------------------------------------------------- join checks its shards


@pytest.fixture
def shards(dataset, tiny_model, tmp_path):
    lst, root, _ = dataset
    cfg = make_config(lst, root, tiny_model, tmp_path / "out")
    for i in range(3):
        extract.run(cfg, stream.Shard(i, 3), progress=False)
    return tmp_path / "out"


def test_join_refuses_a_shard_copied_over_another(shards, capsys):
    folder = shards / "shards"
    shutil.copy(folder / "full.shard-0-of-3.h5", folder / "full.shard-1-of-3.h5")
    rc, err = _cli(capsys, "join", "--out", shards)
    assert rc == 2 and "made as shard '0/3', not 1/3" in err
    assert not (shards / "full.h5").exists()


def test_join_refuses_a_shard_with_missing_or_foreign_rows(shards, capsys):
    path = shards / "shards" / "subset.shard-2-of-3.h5"
    with h5py.File(path, "a") as f:  # one row dropped, as a truncated copy would
        for k in ("index", "prefacen", "facen"):
            data = f[k][:-1]
            del f[k]
            f[k] = data
    rc, err = _cli(capsys, "join", "--out", shards)
    assert rc == 2 and "re-run that shard" in err


@pytest.mark.parametrize("name, says", [("full.shard-x-of-3.h5", "is not named"), ("full.shard-0-of-3.h5", "HDF5")])
def test_join_refuses_misnamed_or_junk_shards(shards, capsys, name, says):
    (shards / "shards" / name).write_bytes(b"junk")
    rc, err = _cli(capsys, "join", "--out", shards)
    assert rc == 2 and says in err and len(err.splitlines()) == 1


def test_join_killed_between_its_files_can_be_run_again(shards):
    extract.join(shards)
    (shards / "subset.h5").unlink()  # killed after full.h5, before subset.h5
    joined = extract.join(shards)
    assert set(joined) == {"subset"} and (shards / "subset.h5").is_file()


# --------------------------------------------------------------------------- provenance between stages


def test_merge_refuses_another_net_or_layer(labelled_run, tmp_path, capsys):  # noqa: F811
    cfg = _fresh(labelled_run[0], tmp_path)
    other = tmp_path / "other.onnx"
    onnx.save(nets.tiny_resnet(seed=7), other)  # same shapes, other weights
    rc, err = _cli(capsys, "merge", *_merge_args(cfg), "--model", other)
    assert rc == 2 and "another model sha256" in err and "--force" in err
    assert _cli(capsys, "merge", *_merge_args(cfg), "--model", other, "--force")[0] == 0


def _merge_args(cfg: dict) -> list:
    return ["-q", "--out", cfg["extract"]["out"], "--list", cfg["data"]["list"], "--root", cfg["data"]["root"]]


def test_label_refuses_another_runs_merged_model(labelled_run, tmp_path, capsys):  # noqa: F811
    cfg = _fresh(labelled_run[0], tmp_path)
    theirs = tmp_path / "theirs.onnx"
    shutil.copy(Path(cfg["extract"]["out"]) / "merged.onnx", theirs)
    clf = Path(cfg["extract"]["out"]) / "classifier.onnx"
    model = onnx.load(clf)
    model.doc_string = "another clustering"
    onnx.save(model, clf)
    rc, err = _cli(capsys, "label", *_merge_args(cfg), "--merged", theirs)
    assert rc == 2 and "another classifier" in err and "--force" in err


@pytest.mark.parametrize("name", ["/abs/path/x", "../../x", "a\\b", ".."])
def test_names_from_a_models_metadata_never_reach_the_file_system(labelled_run, tmp_path, capsys, name):  # noqa: F811
    cfg = _fresh(labelled_run[0], tmp_path)
    path = Path(cfg["extract"]["out"]) / "merged.onnx"
    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    clusters = json.loads(props["introspect.clusters"])
    clusters[0]["name"] = name
    props["introspect.clusters"] = json.dumps(clusters)
    helper.set_model_props(model, props)
    onnx.save(model, path)
    rc, err = _cli(capsys, "label", *_merge_args(cfg))
    assert rc == 2 and "not usable as a file name" in err
    assert not (tmp_path / "x").exists() and not Path("/abs/path/x").exists()


def test_a_duplicated_name_in_a_models_metadata_is_refused(labelled_run, tmp_path, capsys):  # noqa: F811
    cfg = _fresh(labelled_run[0], tmp_path)
    path = Path(cfg["extract"]["out"]) / "merged.onnx"
    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    clusters = json.loads(props["introspect.clusters"])
    clusters[1]["name"] = clusters[0]["name"].upper()
    props["introspect.clusters"] = json.dumps(clusters)
    helper.set_model_props(model, props)
    onnx.save(model, path)
    rc, err = _cli(capsys, "label", *_merge_args(cfg))
    assert rc == 2 and "names must be unique" in err


@pytest.mark.parametrize("junk", [b"", b"{not json", b'["a list"]'])
def test_tampered_metadata_json_is_one_line(labelled_run, tmp_path, capsys, junk):  # noqa: F811
    cfg = _fresh(labelled_run[0], tmp_path)
    path = Path(cfg["extract"]["out"]) / "merged.onnx"
    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    props["introspect.clusters"] = junk.decode()
    helper.set_model_props(model, props)
    onnx.save(model, path)
    rc, err = _cli(capsys, "label", *_merge_args(cfg))
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err


def test_the_report_shows_the_list_that_was_labelled(labelled_run, tmp_path):  # noqa: F811
    cfg = _fresh(labelled_run[0], tmp_path)
    new_root = tmp_path / "new"
    rel = write_images(new_root, 40, seed=11)
    new_list = tmp_path / "new.txt"
    new_list.write_text("".join(f"fresh/{p}\n" for p in rel))
    shutil.copytree(new_root, new_root / "fresh")
    label.run({**cfg, "data": {**cfg["data"], "list": str(new_list), "root": str(new_root)}}, progress=False)
    clusters = Path(cfg["extract"]["out"]) / "clusters.h5"
    if not clusters.exists():
        pytest.skip("the fixture has no map")
    (Path(cfg["extract"]["out"]) / "metrics.json").write_text(json.dumps(_metrics()))
    page = report.build(cfg).read_text()
    assert "fresh/" in page


def _metrics() -> dict:
    return {
        "rows": 1,
        "clusters": 3,
        "noise": 0,
        "sizes": [1, 1, 1],
        "shares": [0.3, 0.3, 0.4],
        "pca": {"curve": [1.0], "components_for_80pct": 1, "used": 0},
        "tsne": {"backend": "test", "perplexity": 1, "n_iter": 1, "learning_rate": 1, "num_neighbors": 1, "seed": 0},
        "cluster": {"method": "kmeans"},
        "classifier": {"accuracy": 1.0, "balanced_accuracy": 1.0, "per_cluster": [], "roc_auc": {}},
        "onnx_check": {"n_rows": 1, "label_mismatches": 0},
    }


# --------------------------------------------------------------------------- files that are not what they should be


def test_a_corrupt_timings_file_is_replaced_not_fatal(labelled_run, tmp_path, capsys):  # noqa: F811
    cfg = _fresh(labelled_run[0], tmp_path)
    (Path(cfg["extract"]["out"]) / "timings.json").write_text("{broken")
    assert _cli(capsys, "merge", *_merge_args(cfg), "--model", cfg["model"]["path"])[0] == 0
    assert "merge" in json.loads((Path(cfg["extract"]["out"]) / "timings.json").read_text())


@pytest.mark.parametrize("name", ["classifier.onnx", "merged.onnx"])
def test_junk_models_in_the_run_are_one_line(labelled_run, tmp_path, capsys, name):  # noqa: F811
    cfg = _fresh(labelled_run[0], tmp_path)
    (Path(cfg["extract"]["out"]) / name).write_bytes(b"\x08junk")
    more = ["merge", "--model", cfg["model"]["path"]] if name == "classifier.onnx" else ["label"]
    rc, err = _cli(capsys, more[0], *_merge_args(cfg), *more[1:])
    assert rc == 2 and len(err.splitlines()) == 1 and name in err


def test_a_junk_subset_file_is_one_line(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "subset.h5").write_bytes(b"junk")
    rc, err = _cli(capsys, "cluster", "--out", tmp_path / "out")
    assert rc == 2 and "not a readable HDF5 file" in err


# --------------------------------------------------------------------------- a full disk


def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="unshare -rm (a private tmpfs) is not allowed here")
def test_a_full_disk_is_one_line_and_keeps_finished_work(dataset, tiny_model, tmp_path):
    lst, root, _ = dataset
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "out"
    cmd = [
        sys.executable,
        "-m",
        "introspect.cli",
        "extract",
        "-q",
        *_args(make_config(lst, root, tiny_model, out)),
        "--chunk-size",
        "16",
    ]
    script = f"mount -t tmpfs -o size=96k tmpfs {disk} && cd {REPO} && " + " ".join(f"'{c}'" for c in cmd)
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "no space left" in r.stderr and "finished work is kept" in r.stderr and "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ": error: " in ln]  # warnings may come before it
    assert len(errors) == 1 and "no space left" in errors[0]
