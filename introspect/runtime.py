"""ONNX Runtime sessions: the CUDA provider when it is there and wanted, the CPU otherwise."""

from __future__ import annotations

import logging

import onnx
import onnxruntime as ort

from .errors import UserError

log = logging.getLogger(__name__)


def providers(device: str = "auto") -> list[str]:
    available = ort.get_available_providers()
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"device {device!r} is not one of auto, cpu, cuda")
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise UserError("device 'cuda' asked for, but onnxruntime has no CUDA provider: install the `gpu` extra")
    return ["CPUExecutionProvider"]


def session(model: onnx.ModelProto, device: str = "auto", spin: bool = False) -> ort.InferenceSession:
    """A session whose idle threads sleep (spin=False): busy-waiting between calls would take the
    cores the decoding threads need."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # warnings about the shipped graph are not the user's business
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    chosen = providers(device)
    log.info("onnxruntime providers: %s", ", ".join(chosen))
    return ort.InferenceSession(model.SerializeToString(), opts, providers=chosen)
