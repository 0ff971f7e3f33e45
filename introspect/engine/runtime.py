"""ONNX Runtime sessions: the CUDA provider when it is there and wanted, the CPU otherwise."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import UserError

log = logging.getLogger(__name__)

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"

#: Images per batch when `batch_size` is 0. A CPU gains nothing past a few dozen; a GPU needs
#: hundreds to amortize each launch and copy (bench/gpu.py sweeps this on the device).
AUTO_BATCH = {"cpu": 64, "cuda": 512}


def providers(device: str = "auto") -> list[str]:
    """The providers to ask for; a wrong or impossible `device` is the user's to fix, in one line."""
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"device {device!r} is not one of auto, cpu, cuda")
    if device in ("auto", "cuda") and CUDA in ort.get_available_providers():
        return [CUDA, CPU]
    if device == "cuda":
        raise UserError("device 'cuda' asked for, but onnxruntime has no CUDA provider: install the `gpu` extra")
    return [CPU]


def batch_size(asked: int, gpu: bool) -> int:
    """`asked`, or for 0 the usual size for where the net runs."""
    return int(asked) if asked else AUTO_BATCH["cuda" if gpu else "cpu"]


def create(
    model: onnx.ModelProto, opts: ort.SessionOptions | None, wanted: list[str], what: str
) -> ort.InferenceSession:
    """`ort.InferenceSession`, or one line when onnxruntime refuses the model (an op it lacks, an invalid graph).

    `opts` None: default options, quiet (onnxruntime's own log lines would double the one line).
    """
    if opts is None:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
    try:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=wanted)
    except Exception as e:  # noqa: BLE001  Fail, InvalidGraph, NotImplemented, InvalidArgument...
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise UserError(f"onnxruntime cannot load {what}: {first[:240]}") from None


def session(
    model: onnx.ModelProto, device: str = "auto", spin: bool = False, what: str = "the model"
) -> ort.InferenceSession:
    """A session on the GPU when one serves, else on the CPU, saying which in one logged line.

    Idle threads sleep (spin=False): busy-waiting between calls would take the cores the
    decoding threads need. onnxruntime quietly drops a CUDA provider whose libraries do not
    load; that is a warning here, and an error when `device` is 'cuda'.
    """
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # warnings about the shipped graph are not the user's business; errors become one line
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    wanted = providers(device)
    sess = create(model, opts, wanted, what)
    got = sess.get_providers()
    if CUDA in wanted and CUDA not in got:
        if device == "cuda":
            raise UserError(
                "onnxruntime's CUDA provider did not load (CUDA or cuDNN libraries missing?); "
                "check `python -c 'import onnxruntime; onnxruntime.preload_dlls()'`, or use device cpu"
            )
        log.warning("onnxruntime's CUDA provider did not load; running on the CPU")
    elif CUDA in got:
        log.info("onnxruntime: on the GPU (%s)", ", ".join(got))
    else:
        log.info("onnxruntime: on the CPU%s", "" if device == "cpu" else " (no CUDA provider; the `gpu` extra adds it)")
    return sess


class Runner:
    """A session that returns the named outputs for a batch, with I/O binding on the GPU.

    Bound outputs are allocated on the device and copied back once, after the run, instead of
    per output by `run`; on the CPU binding only adds calls, so it is off there (it works, and
    the tests use it to check both paths give the same numbers).
    """

    def __init__(
        self, model: onnx.ModelProto, outputs: list[str], device: str = "auto", binding: bool | None = None
    ) -> None:
        self.session = session(model, device)
        self.outputs = list(outputs)
        self.gpu = self.session.get_providers()[0] == CUDA
        self.binding = self.gpu if binding is None else binding
        self.where = "cuda" if self.gpu else "cpu"

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not self.binding:
            return self.session.run(self.outputs, feeds)
        io = self.session.io_binding()
        for name, x in feeds.items():
            io.bind_cpu_input(name, np.ascontiguousarray(x))
        for name in self.outputs:
            io.bind_output(name, self.where)
        self.session.run_with_iobinding(io)
        return io.copy_outputs_to_cpu()
