"""Pipeline files: defaults < file < command line; unknown keys and wrong types are one clear error."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from conftest import REPO

from introspect import cli, config
from introspect.errors import UserError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "pipe.toml"
    p.write_text(text)
    return p


def test_defaults_are_a_copy():
    before = copy.deepcopy(config.DEFAULTS)
    cfg = config.load(None)
    assert cfg == config.DEFAULTS
    cfg["extract"]["batch_size"] = 1
    cfg["preprocess"]["size"].append(3)
    assert config.DEFAULTS == before


def test_precedence_defaults_file_overrides(tmp_path):
    p = write(tmp_path, '[extract]\nbatch_size = 8\nseed = 5\nout = "runs/x"\n[model]\nlayer = "node:-4"\n')
    cfg = config.load(p, {"extract.seed": 7, "extract.workers": 3, "extract.out": None})
    assert cfg["extract"]["batch_size"] == 8  # file over default
    assert cfg["extract"]["seed"] == 7  # override over file
    assert cfg["extract"]["workers"] == 3  # override over default
    assert cfg["extract"]["out"] == "runs/x"  # an unset flag (None) keeps the file's
    assert cfg["model"]["layer"] == "node:-4"
    assert cfg["extract"]["chunk_size"] == config.DEFAULTS["extract"]["chunk_size"]  # untouched default
    assert cfg["data"] == config.DEFAULTS["data"]


def test_int_for_float_becomes_float(tmp_path):
    cfg = config.load(write(tmp_path, "[extract]\nfraction = 1\n"))
    assert cfg["extract"]["fraction"] == 1.0 and isinstance(cfg["extract"]["fraction"], float)
    assert isinstance(config.load(None, {"extract.fraction": 1})["extract"]["fraction"], float)


@pytest.mark.parametrize(
    "text, word",
    [
        ("[extract]\nbatchsize = 3\n", "extract.batchsize"),
        ("[extrct]\nbatch_size = 3\n", "extrct"),
        ("top = 1\n", "top"),
        ('[extract]\nbatch_size = "64"\n', "batch_size"),
        ("[extract]\nbatch_size = 6.5\n", "batch_size"),
        ("[extract]\nbatch_size = true\n", "batch_size"),
        ('[extract]\nfull = "yes"\n', "full"),
        ("[extract]\nfull = 1\n", "full"),
        ("[extract]\nfraction = true\n", "fraction"),
        ("[data]\nlist = 3\n", "data.list"),
        ('[preprocess]\nsize = "112x112"\n', "size"),
        ("[extract\nbatch_size = 3\n", "TOML"),
    ],
)
def test_bad_file_is_one_user_error(tmp_path, text, word):
    p = write(tmp_path, text)
    with pytest.raises(UserError) as err:
        config.load(p)
    msg = str(err.value)
    assert word in msg and str(p) in msg


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        config.load(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    "key, value", [("extract.nope", 1), ("nope.key", 1), ("extract", 1), ("extract.batch_size", "notanumber")]
)
def test_bad_override(key, value):
    with pytest.raises(UserError, match="command line"):
        config.load(None, {key: value})


@pytest.mark.parametrize(
    "text, value",
    [
        ("128", 128),
        ("false", False),
        ("true", True),
        ("0.5", 0.5),
        ("[1, 2]", [1, 2]),
        ('"x y"', "x y"),
        ("runs/x", "runs/x"),
        ("notanumber", "notanumber"),
    ],
)
def test_parse_value(text, value):
    got = config.parse_value(text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("path", sorted((REPO / "pipelines").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_pipelines_load(path):
    cfg = config.load(path)
    assert set(cfg) == set(config.DEFAULTS)


def test_reference_pipeline_is_the_reference():
    cfg = config.load(REPO / "pipelines" / "reference.toml")
    pre = {"size": [112, 112], "mean": [127.5] * 3, "std": [127.5] * 3, "rgb": True, "check": "warn"}
    assert cfg["preprocess"] == pre
    assert cfg["extract"]["fraction"] == 0.02 and cfg["extract"]["seed"] == 2463426724
    assert cfg["model"]["layer"] == "node:-4"


def _cli_config(argv: list[str]) -> dict:
    args = cli.parser().parse_args(argv)
    return cli._config(args, cli.EXTRACT_FLAGS)


def test_cli_flags_and_set_over_file(tmp_path):
    p = write(tmp_path, '[extract]\nbatch_size = 8\nfull = true\nworkers = 5\n[data]\nroot = "r"\n')
    cfg = _cli_config(
        [
            "extract",
            "-p",
            str(p),
            "--batch-size",
            "4",
            "--set",
            "extract.full=false",
            "--set",
            "preprocess.size=[96, 96]",
        ]
    )
    assert cfg["extract"]["batch_size"] == 4
    assert cfg["extract"]["full"] is False
    assert cfg["extract"]["workers"] == 5
    assert cfg["preprocess"]["size"] == [96, 96]
    assert cfg["data"]["root"] == "r"
    assert cfg["extract"]["out"] == config.DEFAULTS["extract"]["out"]


def test_cli_set_without_equals():
    with pytest.raises(UserError, match="KEY=VALUE"):
        _cli_config(["extract", "--set", "extract.batch_size"])


@pytest.mark.parametrize(
    "item, key, want", [("model.layer=680", ("model", "layer"), "680"), ("data.root=2024", ("data", "root"), "2024")]
)
def test_cli_set_string_key_with_numeric_text(item, key, want):
    cfg = _cli_config(["extract", "--set", item])
    assert cfg[key[0]][key[1]] == want


def test_learning_rate_takes_auto_or_a_number():
    assert config.load(None, {"tsne.learning_rate": 2000})["tsne"]["learning_rate"] == 2000
    assert config.from_text("tsne.learning_rate", "2000") == 2000
    assert config.from_text("tsne.learning_rate", "auto") == "auto"
    with pytest.raises(UserError):
        config.load(None, {"model.layer": 680})
