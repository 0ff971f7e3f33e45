"""The run folder remembers: outside the checkout, after extract, every later stage works with `--out run` alone.

A team's own folder (no pipelines/, no models/): a net with a non-default input size and
normalization, a list and a root given once to extract. The later stages take all of that from
the run's records; a flag that contradicts them is one line unless --force; a moved net is one
line naming where it was.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import onnx
import pytest
from conftest import REPO

from introspect import cli, config
from introspect.engine import nets, records
from introspect.engine.merged import load_merged
from introspect.errors import UserError
from introspect.stages import remembered

ENV = dict(os.environ, PYTHONPATH=str(REPO))
#: The net's own preprocessing: nothing like the defaults (112 x 112, mean 0, std 1).
PRE = ["--set", "preprocess.size=[64,64]", "--set", "preprocess.mean=[127.5,127.5,127.5]"]
PRE += ["--set", "preprocess.std=[128,128,128]"]
#: Small t-SNE and k grid, given as flags (no pipeline file anywhere).
SMALL = ["--perplexity", "10", "--n-iter", "250", "--set", "cluster.k_grid=[2,3,4]"]


def chain(cwd: Path, *commands: list) -> subprocess.CompletedProcess:
    """`introspect STAGE -q ARGS...` for each command, in order, in one process of its own working in `cwd`
    (one interpreter start for the chain); stops at the first that fails."""
    argvs = [[c[0], "-q", *map(str, c[1:])] for c in commands]
    code = f"import sys; from introspect import cli; sys.exit(next((rc for a in {argvs!r} if (rc := cli.main(a))), 0))"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


def one_line(rc: int, err: str, *words: str) -> str:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, (rc, err)
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def team(tmp_path_factory) -> Path:
    """A team's folder with nets/face.onnx (64 x 64 input), photos/ and photos.txt (+ ground truth), extracted
    into run/ and clustered, merged, labelled and reported with `--out run` alone, each as its own process."""
    home = tmp_path_factory.mktemp("team")
    (home / "nets").mkdir()
    onnx.save(nets.tiny_resnet(seed=0, size=64), home / "nets" / "face.onnx")
    extract = ["--model", "nets/face.onnx", "--list", "photos.txt", "--root", "photos", "--out", "run"]
    res = chain(
        home,
        ["synth", "--n", "90", "--root", "photos", "--list", "photos.txt"],
        ["extract", *extract, *PRE, "--fraction", "1.0", "--chunk-size", "32"],
        ["cluster", "--out", "run", *SMALL],
        *[[stage, "--out", "run"] for stage in ("merge", "label", "report", "evaluate")],
    )
    assert res.returncode == 0, res.stderr
    return home


def test_every_stage_runs_with_out_alone_outside_the_checkout(team):
    run = team / "run"
    assert not (team / "models").exists() and not (team / "pipelines").exists()
    _, meta = load_merged(run / "merged.onnx")
    assert meta["preprocess"] == {"size": [64, 64], "mean": [127.5] * 3, "std": [128.0] * 3, "rgb": True}
    assert meta["net_sha256"] == nets.sha256_file(team / "nets" / "face.onnx")
    with h5py.File(run / "labels.h5") as f:
        assert len(f["label"]) == 90 and f.attrs["list_path_abs"] == str((team / "photos.txt").resolve())
    assert (run / "report" / "index.html").is_file() and (run / "evaluation.json").is_file()
    with h5py.File(run / "full.h5") as f:  # the paths as given, and resolved
        assert f.attrs["model_path"] == "nets/face.onnx"
        assert f.attrs["model_path_abs"] == str((team / "nets" / "face.onnx").resolve())
        assert f.attrs["data_root_abs"] == str((team / "photos").resolve())


def test_another_working_folder_finds_the_run_by_its_resolved_paths(team, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = team / "run"
    thumbs = sorted((run / "report" / "thumbs").glob("*.jpg"))  # the report made in the team's folder
    shutil.rmtree(run / "report")
    assert _cli(capsys, "report", "-q", "--out", run) == (0, "")
    assert thumbs and sorted((run / "report" / "thumbs").glob("*.jpg")) == thumbs  # the images found from here
    assert "000/000001.jpg" in (run / "report" / "index.html").read_text()
    assert cli.main(["label", "-q", "--out", str(run), "--no-fast", "--overwrite"]) == 0
    assert "label: 90 images, 0 failed" in capsys.readouterr().out


def test_new_data_into_a_new_folder_from_the_merged_model_alone(team, monkeypatch, capsys):
    monkeypatch.chdir(team)
    assert _cli(capsys, "synth", "-q", "--n", "12", "--seed", "3", "--root", "new", "--list", "new.txt")[0] == 0
    merged = ["--merged", "run/merged.onnx"]
    rc, err = _cli(capsys, "label", "-q", *merged, "--list", "new.txt", "--root", "new", "--out", "NEW")
    assert rc == 0, err
    with h5py.File(team / "NEW" / "labels.h5") as f:
        assert len(f["label"]) == 12
        assert json.loads(f.attrs["preprocess"])["size"] == [64, 64]  # from the merged model, not the default
    one_line(*_cli(capsys, "label", "-q", *merged, "--out", "NEW2"), "NEW2", "--list")


# --------------------------------------------------------------------------- contradictions, in process


def _cli(capsys, *argv) -> tuple[int, str]:
    rc = cli.main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def test_another_net_is_refused_unless_force(team, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(team)
    other = tmp_path / "other.onnx"
    onnx.save(nets.tiny_resnet(seed=7, size=64), other)  # same shapes, other weights
    for stage in ("merge", "cluster"):
        rc, err = _cli(capsys, stage, "-q", "--out", "run", "--model", other)
        one_line(rc, err, "another model sha256", "--force")
    copy = tmp_path / "same.onnx"  # the same net at another path is no contradiction
    shutil.copy(team / "nets" / "face.onnx", copy)
    cfg = _cfg("merge", "--out", "run", "--model", copy, "--layer", "features_map", *PRE)
    assert cfg["model"]["path"] == str(copy) and cfg["preprocess"]["size"] == [64, 64]
    forced = _cfg("merge", "--out", "run", "--model", other, "--force")
    assert forced["model"]["path"] == str(other) and forced["preprocess"]["mean"] == [127.5] * 3


@pytest.mark.parametrize(
    "stage, flag, word",
    [
        ("cluster", "preprocess.size=[112,112]", "preprocess.size"),
        ("merge", "preprocess.rgb=false", "preprocess.rgb"),
        ("report", "model.layer=stem", "model.layer"),
        ("sweep", "model.pool=['center']", "model.pool"),
        ("evaluate", "data.format=tar", "data.format"),
        ("label", "preprocess.std=[1,1,1]", "preprocess.std"),
    ],
)
def test_a_setting_against_the_records_is_one_line(team, monkeypatch, capsys, stage, flag, word):
    monkeypatch.chdir(team)
    rc, err = _cli(capsys, stage, "-q", "--out", "run", "--set", flag)
    one_line(rc, err, word, "run/", "--force")
    key, _, value = flag.partition("=")
    cfg = _cfg(stage, "--out", "run", "--set", flag, "--force")
    assert cfg[key.split(".")[0]][key.split(".")[1]] == config.from_text(key, value)


def test_a_pipeline_file_agreeing_with_the_records_is_fine(team, monkeypatch):
    monkeypatch.chdir(team)
    Path("agree.toml").write_text('[model]\npath = "nets/face.onnx"\nlayer = "auto"\n[preprocess]\nsize = [64, 64]\n')
    cfg = _cfg("merge", "-p", "agree.toml", "--out", "run")
    assert cfg["model"]["layer"] == "features_map" and cfg["preprocess"]["std"] == [128.0] * 3
    assert cfg["data"]["list"] == str((team / "photos.txt").resolve())


def test_a_list_is_the_runs_for_report_but_label_and_merge_take_another(team, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(team)
    other = tmp_path / "other.txt"
    other.write_text("".join(Path("photos.txt").read_text().splitlines(keepends=True)[:10]))
    for stage in ("report", "evaluate"):
        rc, err = _cli(capsys, stage, "-q", "--out", "run", "--list", other)
        one_line(rc, err, "another list", "--force")
    same = tmp_path / "moved.txt"  # the same list, moved: its rows are the run's
    shutil.copy("photos.txt", same)
    assert _cfg("report", "--out", "run", "--list", same)["data"]["list"] == str(same)
    for stage in ("label", "merge"):  # labelling a new list is label's job; merge checks on any sample
        cfg = _cfg(stage, "--out", "run", "--list", other)
        assert cfg["data"]["list"] == str(other) and cfg["data"]["root"] == str((team / "photos").resolve())
    rc, err = _cli(capsys, "merge", "-q", "--out", "run", "--list", other)
    assert rc == 0, err


def _cfg(stage: str, *argv) -> dict:
    args = cli.parser().parse_args([stage, *map(str, argv)])
    flags = {
        "merge": cli.MERGE_FLAGS,
        "cluster": cli.CLUSTER_FLAGS,
        "report": cli.REPORT_FLAGS,
        "label": cli.LABEL_FLAGS,
        "sweep": cli.SWEEP_FLAGS,
        "evaluate": {"--out": cli.EXTRACT_FLAGS["--out"], "--list": cli.EXTRACT_FLAGS["--list"]},
    }[stage]
    return cli._config(args, flags)


# --------------------------------------------------------------------------- a net that moved, an older run


def _copy_run(team: Path, dest: Path, **attrs) -> Path:
    """subset.h5 of the team's run in a folder of its own, with some attributes changed (None: removed)."""
    dest.mkdir()
    shutil.copy(team / "run" / "subset.h5", dest / "subset.h5")
    with h5py.File(dest / "subset.h5", "a") as f:
        for k, v in attrs.items():
            if v is None:
                del f.attrs[k]
            else:
                f.attrs[k] = v
    return dest


def test_a_moved_net_is_one_line_naming_where_it_was(team, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    gone = tmp_path / "nets" / "gone.onnx"
    run = _copy_run(team, tmp_path / "run", model_path_abs=str(gone), model_path="nets/gone.onnx")
    rc, err = _cli(capsys, "cluster", "-q", "--out", run)
    line = one_line(rc, err, str(gone), "--model PATH", "does not exist")
    assert "make model" not in line
    gone.parent.mkdir()
    onnx.save(nets.tiny_resnet(seed=9, size=64), gone)  # another file at the recorded place
    one_line(*_cli(capsys, "merge", "-q", "--out", run), str(gone), "not the same file", "--model PATH")
    # --model points at it; stages that never load the net do not look for it
    assert _cfg("cluster", "--out", run, "--model", team / "nets" / "face.onnx")["model"]["path"].endswith("face.onnx")
    assert _cfg("sweep", "--out", run)["preprocess"]["size"] == [64, 64]


def test_an_older_run_without_resolved_paths_still_works(team, tmp_path, monkeypatch):
    run = _copy_run(team, tmp_path / "old", model_path_abs=None, list_path_abs=None, data_root_abs=None)
    monkeypatch.chdir(team)  # its paths are relative to where it was extracted
    cfg = _cfg("cluster", "--out", run)
    assert cfg["model"]["path"] == "nets/face.onnx" and cfg["data"]["list"] == "photos.txt"
    monkeypatch.chdir(tmp_path)  # elsewhere: one line, pointing at --model
    with pytest.raises(UserError, match="nets/face.onnx.*--model PATH"):
        _cfg("cluster", "--out", run)


def test_a_folder_without_records_keeps_the_defaults(tmp_path):
    cfg = config.load(None)
    cfg["extract"]["out"] = str(tmp_path / "empty")
    assert remembered.apply(cfg, set(), "cluster") == {**config.load(None), "extract": cfg["extract"]}


def test_explicit_keys_are_the_pipeline_files_and_the_flags(tmp_path):
    (tmp_path / "p.toml").write_text('[model]\nlayer = "x"\n[tsne]\nseed = 3\n')
    assert config.explicit(tmp_path / "p.toml", {"data.list": "a", "data.root": None}) == {
        "model.layer",
        "tsne.seed",
        "data.list",
    }


def test_records_prefer_the_resolved_path_that_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "l.txt").write_text("a\n")
    a = records.paths("net.onnx", "l.txt", "photos")
    assert a["list_path"] == "l.txt" and a["list_path_abs"] == str(tmp_path / "l.txt")
    assert records.best(a, "list_path") == tmp_path / "l.txt"
    assert records.best({"list_path": "x.txt"}, "list_path") == Path("x.txt")  # an older run: as given
    assert records.best({}, "list_path") is None


# --------------------------------------------------------------------------- label's two models


def test_label_model_flag_is_refused_with_a_hint_to_merged(team, monkeypatch, capsys):
    monkeypatch.chdir(team)
    rc, err = _cli(capsys, "label", "-q", "--out", "run", "--model", "run/merged.onnx")
    one_line(rc, err, "--merged")
    cfg = _cfg("label", "--out", "run", "--merged", "run/merged.onnx")
    assert cfg["label"]["model"] == "run/merged.onnx"
