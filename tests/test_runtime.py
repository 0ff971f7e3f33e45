"""Sessions: which device, what the user is told, and I/O binding giving the same numbers as run."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from introspect.engine import runtime
from introspect.errors import UserError


@pytest.fixture()
def net(tiny_model) -> onnx.ModelProto:
    return onnx.load(tiny_model)


def test_cpu_is_said_in_one_line(net, caplog):
    with caplog.at_level(logging.INFO, logger="introspect.engine.runtime"):
        sess = runtime.session(net, "auto")
    assert sess.get_providers() == [runtime.CPU]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "on the CPU" in lines[0] and "gpu" in lines[0]


def test_unknown_device_is_a_user_error(net):
    with pytest.raises(UserError, match="auto, cpu, cuda"):
        runtime.session(net, "tpu")


def test_cuda_without_the_provider_is_a_user_error(net, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [runtime.CPU])
    with pytest.raises(UserError, match="gpu. extra"):
        runtime.session(net, "cuda")


def test_a_cuda_provider_that_does_not_load_falls_back_with_a_warning(net, monkeypatch, caplog):
    """onnxruntime lists CUDA but drops it when its libraries fail to load: say so, run on the CPU."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [runtime.CUDA, runtime.CPU])
    with caplog.at_level(logging.INFO, logger="introspect.engine.runtime"):
        sess = runtime.session(net, "auto")
    assert sess.get_providers() == [runtime.CPU]
    assert any(r.levelno == logging.WARNING and "did not load" in r.getMessage() for r in caplog.records)
    with pytest.raises(UserError, match="did not load"):
        runtime.session(net, "cuda")


def test_batch_size_zero_means_the_devices_usual():
    assert runtime.batch_size(0, gpu=False) == runtime.AUTO_BATCH["cpu"]
    assert runtime.batch_size(0, gpu=True) == runtime.AUTO_BATCH["cuda"] > runtime.AUTO_BATCH["cpu"]
    assert runtime.batch_size(7, gpu=True) == 7


def test_io_binding_gives_the_same_outputs_as_run(net):
    outputs = [o.name for o in net.graph.output]
    x = np.random.default_rng(0).normal(0, 1, (3, 3, 112, 112)).astype(np.float32)
    name = net.graph.input[0].name
    plain = runtime.Runner(net, outputs, "cpu")
    bound = runtime.Runner(net, outputs, "cpu", binding=True)
    assert not plain.binding and not plain.gpu and bound.binding
    for _ in range(2):  # a binding is made per call: the second call must not see the first's
        for a, b in zip(plain.run({name: x}), bound.run({name: x[::-1]})):
            np.testing.assert_array_equal(a[::-1], b)
    assert [a.shape for a in bound.run({name: x[:1]})] == [(1, *a.shape[1:]) for a in plain.run({name: x})]
