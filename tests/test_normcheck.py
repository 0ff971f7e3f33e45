"""The normalization check: on real faces it names a wrong mean/std (with flags that work when pasted) and
stays quiet on the right one, for SFace, for a net that wants its normalization outside, and for a net
that normalizes inside its graph; extract records it, refuses in strict mode, and the report shows it."""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from introspect import cli, config
from introspect.engine import graph, normcheck, runtime
from introspect.engine.extractor import Extractor
from introspect.engine.images import Preprocess
from introspect.errors import UserError
from introspect.stages import extract, report_html, settings

RIGHT = Preprocess()  # SFace: raw RGB 0..255
WRONG = {
    name: p for name, p in normcheck.alternatives(RIGHT).items() if name in ("0..1", "[-1, 1]", "ImageNet mean/std")
}


# --------------------------------------------------------------------------- nets made from SFace


def prepend(net: onnx.ModelProto, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    """`net` with `nodes` in front: they read a new input `pixels` and write what was the data input."""
    out = onnx.ModelProto()
    out.CopyFrom(net)
    old = graph.data_input(out)
    new = onnx.ValueInfoProto()
    new.CopyFrom(old)
    new.name = "pixels"
    at = list(out.graph.input).index(old)
    out.graph.input.remove(old)
    out.graph.input.insert(at, new)
    out.graph.initializer.extend(inits)
    for n in reversed(nodes):
        out.graph.node.insert(0, n)
    return out


def wants_outside(net: onnx.ModelProto, mean: float = 127.5, std: float = 128.0) -> onnx.ModelProto:
    """A net whose right input is (x - mean) / std, normalized outside its graph (as MobileFace-style nets):
    SFace behind `pixels * std + mean`."""
    x = graph.data_input(net).name
    nodes = [helper.make_node("Mul", ["pixels", "w_std"], ["w_t"]), helper.make_node("Add", ["w_t", "w_mean"], [x])]
    f = numpy_helper.from_array
    return prepend(net, nodes, [f(np.array(std, np.float32), "w_std"), f(np.array(mean, np.float32), "w_mean")])


def normalizes_inside(net: onnx.ModelProto) -> onnx.ModelProto:
    """A net that standardizes each image's channels itself (InstanceNormalization), then feeds SFace
    0..255-like values: any per-channel affine normalization outside gives it the same input."""
    x = graph.data_input(net).name
    node = helper.make_node("InstanceNormalization", ["pixels", "w_scale", "w_bias"], [x], epsilon=1e-5)
    f = numpy_helper.from_array
    return prepend(
        net, [node], [f(np.full(3, 64.0, np.float32), "w_scale"), f(np.full(3, 127.5, np.float32), "w_bias")]
    )


@pytest.fixture(scope="module")
def sface_net(sface_model) -> onnx.ModelProto:
    return onnx.load(sface_model)


@pytest.fixture(scope="module")
def outside_net(sface_net) -> onnx.ModelProto:
    return wants_outside(sface_net)


@pytest.fixture(scope="module")
def inside_net(sface_net) -> onnx.ModelProto:
    return normalizes_inside(sface_net)


_EMBEDDERS: dict[int, object] = {}


def embedder(net: onnx.ModelProto):
    """The net's embedding of a blob, remembered per net and blob: the tests ask for the same ~10 settings."""
    if id(net) in _EMBEDDERS:
        return _EMBEDDERS[id(net)]
    ex = Extractor.build(net, "auto", "auto", RIGHT)
    sess = runtime.create(ex.model, None, [runtime.CPU], "the net")
    memo: dict[bytes, np.ndarray] = {}

    def embed(blob: np.ndarray) -> np.ndarray:
        key = hashlib.sha256(np.ascontiguousarray(blob).tobytes()).digest()
        if key not in memo:
            memo[key] = sess.run([ex.embedding], {ex.input: blob})[0]
        return memo[key]

    _EMBEDDERS[id(net)] = embed
    return embed


def nn_accuracy(emb: np.ndarray, labels: np.ndarray) -> float:
    """1-NN identity accuracy over the faces whose person is in another photo too."""
    u = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cos = u @ u.T
    np.fill_diagonal(cos, -np.inf)
    rep = [i for i in range(len(labels)) if (labels == labels[i]).sum() > 1]
    return float(np.mean([labels[cos[i].argmax()] == labels[i] for i in rep]))


# --------------------------------------------------------------------------- real faces


def test_real_faces_fixture(real_faces, sface_net):
    """The set the checks run on: 26 faces, three people in more than one photo, SFace tells them apart."""
    labels = real_faces.labels()
    repeated = {p for p in labels if (labels == p).sum() > 1}
    assert len(labels) >= 24 and repeated == {"obama", "einstein", "middleditch"}
    imgs = real_faces.images()
    assert imgs.shape[1:] == (112, 112, 3) and imgs.dtype == np.uint8
    embed = embedder(sface_net)
    assert nn_accuracy(embed(RIGHT.blob(imgs)), labels) == 1.0
    for name, pre in WRONG.items():  # what the check is for: a wrong mean/std loses the people
        assert nn_accuracy(embed(pre.blob(imgs)), labels) <= 0.5, name


def test_sface_quiet_on_right(real_faces, sface_net, caplog):
    with caplog.at_level(logging.WARNING):
        out = normcheck.run(embedder(sface_net), RIGHT, real_faces.images(), "warn")
    assert out.line is None and out.figures["better"] == "" and not caplog.records
    assert out.figures["alternatives"]["0..255"]["configured"] is True
    # RGB vs BGR is near-tied on a face net: recorded, never named
    bgr, conf = out.figures["alternatives"]["BGR"], out.figures["configured"]
    assert abs(bgr["mean_cosine"] - conf["mean_cosine"]) < normcheck.COSINE_MARGIN


@pytest.mark.parametrize("wrong", sorted(WRONG))
def test_sface_fires_on_wrong(real_faces, sface_net, caplog, wrong):
    with caplog.at_level(logging.WARNING):
        out = normcheck.run(embedder(sface_net), WRONG[wrong], real_faces.images(), "warn")
    fig = out.figures
    assert fig["better"] == "0..255", fig
    flags = "--set 'preprocess.mean=[0,0,0]' --set 'preprocess.std=[1,1,1]'"
    assert fig["alternatives"]["0..255"]["flags"] == flags
    assert len(caplog.records) == 1 and "\n" not in out.line and "0..255" in out.line
    assert "--set 'preprocess.mean=[0,0,0]'" in out.line


def test_outside_normalization(real_faces, outside_net):
    """A net that wants (x - 127.5) / 128: quiet there; fed raw 0..255 the check fires, and the setting it
    names keeps the people apart (the affine settings near its own spread about as well: the table has them)."""
    embed, imgs = embedder(outside_net), real_faces.images()
    right = normcheck.alternatives(RIGHT)["(x - 127.5) / 128"]
    assert normcheck.run(embed, right, imgs, "warn").line is None
    fig = normcheck.run(embed, RIGHT, imgs, "warn").figures
    assert fig["better"] and normcheck.clearly_better(fig["alternatives"]["(x - 127.5) / 128"], fig["configured"])
    named = normcheck.alternatives(RIGHT)[fig["better"]]
    assert nn_accuracy(embed(named.blob(imgs)), real_faces.labels()) == 1.0
    assert nn_accuracy(embed(RIGHT.blob(imgs)), real_faces.labels()) <= 0.5


@pytest.mark.parametrize("configured", ["0..255", "ImageNet mean/std"])
def test_inside_normalization_quiet(real_faces, inside_net, configured):
    pre = RIGHT if configured == "0..255" else normcheck.alternatives(RIGHT)[configured]
    out = normcheck.run(embedder(inside_net), pre, real_faces.images(), "warn")
    assert out.line is None, out.figures


def test_strict_refuses_and_off_skips(real_faces, sface_net):
    embed, imgs = embedder(sface_net), real_faces.images()
    with pytest.raises(UserError, match=r"0\.\.255.*--set 'preprocess.mean=\[0,0,0\]'.*strict"):
        normcheck.run(embed, WRONG["[-1, 1]"], imgs, "strict")
    assert normcheck.run(embed, WRONG["[-1, 1]"], imgs, "off") == normcheck.Outcome({}, None)


# --------------------------------------------------------------------------- the stage, the flags, the report


@pytest.fixture
def face_list(real_faces, tmp_path) -> tuple[Path, Path]:
    lst = tmp_path / "faces.txt"
    lst.write_text("".join(p + "\n" for p in real_faces.paths))
    return lst, real_faces.root


def test_extract_records_and_strict_refuses_before_the_folder(face_list, sface_model, tmp_path, caplog):
    from conftest import make_config

    lst, root = face_list
    out = tmp_path / "run"
    cfg = make_config(lst, root, sface_model, out, full=False)
    cfg["preprocess"].update(mean=[127.5] * 3, std=[127.5] * 3, check="strict")
    with pytest.raises(UserError, match="preprocess.check = strict"):
        extract.run(cfg, progress=False)
    assert not out.exists()  # refused before the run folder was touched

    cfg["preprocess"]["check"] = "warn"
    with caplog.at_level(logging.WARNING):
        extract.run(cfg, progress=False)
    assert sum("normalization looks wrong" in r.getMessage() for r in caplog.records) == 1
    from introspect.engine import store

    sanity = json.loads(store.read_attrs(out / "subset.h5")["sanity"])
    assert {"images", "nonfinite", "constant", "mean_cosine"} <= set(sanity)  # the old keys, for old readers
    assert sanity["normalization"]["better"] == "0..255"
    html = report_html.normalization_section(store.read_attrs(out / "subset.h5")["sanity"])
    assert "Normalization check" in html and 'class="pick"' in html and "0..255" in html


def test_printed_flags_work_when_pasted(tmp_path):
    """The flags, split as a shell would, through the CLI's --set over a pipeline, give exactly the alternative."""
    pipe = tmp_path / "p.toml"
    pipe.write_text("[preprocess]\nmean = [127.5, 127.5, 127.5]\nstd = [127.5, 127.5, 127.5]\nrgb = true\n")
    conf = Preprocess(mean=(127.5,) * 3, std=(127.5,) * 3, rgb=True)
    for name, alt in normcheck.alternatives(conf).items():
        text = normcheck.flags(alt, conf)
        if normcheck.same(alt, conf):
            continue
        args = cli.parser().parse_args(["extract", "-p", str(pipe), *shlex.split(text)])
        got = Preprocess.from_config(cli._config(args, cli.EXTRACT_FLAGS)["preprocess"])
        assert normcheck.same(got, alt) and got.rgb == alt.rgb, name


def test_check_key_is_checked():
    cfg = config.load(None)
    assert cfg["preprocess"]["check"] == "warn"
    cfg["preprocess"]["check"] = "loud"
    with pytest.raises(UserError, match="preprocess.check = 'loud'"):
        settings.check(cfg)


def test_spread_measures():
    """Effective rank: 1 for one direction, N for N orthogonal ones; mean cosine leaves self-pairs out."""
    same = np.ones((5, 8))
    assert normcheck.spread(same) == {"mean_cosine": 1.0, "effective_rank": 1.0}
    eye = np.eye(6, 8)
    assert normcheck.spread(eye) == {"mean_cosine": 0.0, "effective_rank": 6.0}


def test_too_few_images_give_no_verdict():
    """Under MIN_IMAGES a collapse is recorded but not named (an effective rank of a handful says little)."""
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (normcheck.MIN_IMAGES - 1, 16, 16, 3), np.uint8)
    pre = Preprocess(size=(16, 16), mean=(127.5,) * 3, std=(127.5,) * 3)

    def embed(blob):  # spreads only when fed 0..255 (values far above 1)
        v = blob.reshape(len(blob), -1)[:, :32].astype(np.float64)
        return v if blob.max() > 10 else np.ones_like(v) + 1e-3 * v

    assert normcheck.compare(embed, pre, imgs)["better"] == ""
    more = np.concatenate([imgs, imgs[:, ::-1]])
    assert normcheck.compare(embed, pre, more)["better"] == "0..255"


def test_report_section_reads_old_and_off_runs():
    assert report_html.normalization_section(json.dumps({"images": 64, "mean_cosine": 0.1})) == ""
    assert report_html.normalization_section(None) == ""
    assert report_html.normalization_section("not json") == ""
