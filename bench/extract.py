"""Extraction throughput: the reference loop vs `introspect extract` vs inference alone.

In one run, on the same JPEGs and the same net:
  (a) reference: sequential cv2.imread, cv2.dnn.blobFromImages, session.run fetching the whole
      feature map (center pixel taken in numpy), HDF5 datasets resized on every batch;
  (b) introspect: `extract.run` (threaded decoding ahead of inference, parts, final files);
  (c) ceiling: the same session as (b) on batches decoded and normalized beforehand.
Printed: images/s of each, b/a and b/c. Targets: b/c >= 0.9 with SFace; b/a >= 1.5 on a net
small enough that decoding dominates. Then the decoding side alone on one core (what bounds a
GPU run): with the per-image blob the stages used to do, and with the normalization in the net.
Then the cost of `model.pool`: SFace's `introspect extract` and its session alone with the
reference's pool ["center"] vs the default ["center", "mean"] (the spatial mean as well), on
the same images, interleaved (the sessions batch by batch); printed: images/s of both, ratio.

    .venv/bin/python bench/extract.py [--sface-images 1024] [--small-images 20000] [--repeat 3]
    .venv/bin/python bench/extract.py --small-images 0 --sface-images 0 --rss-lines --pool-images 512
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from introspect import config, synth
from introspect.engine import graph, nets, runtime
from introspect.engine.extractor import Extractor
from introspect.engine.images import Preprocess, read_batch, read_image
from introspect.stages import extract


def small_net(seed: int = 0) -> onnx.ModelProto:
    """A net whose forward pass costs less than decoding: one 16 x 16 stride-16 conv to 7 x 7."""
    rng = np.random.default_rng(seed)
    w = lambda name, *shape: numpy_helper.from_array(rng.normal(0, 0.05, shape).astype(np.float32), name)  # noqa: E731
    c = 16  # small enough that decoding is most of the work
    inits = [
        w("cw", c, 3, 16, 16),
        w("g", c),
        w("b", c),
        w("m", c),
        numpy_helper.from_array(np.ones(c, np.float32), "v"),
        w("fw", 128, c * 49),
    ]
    nodes = [
        helper.make_node("Conv", ["img", "cw"], ["conv"], strides=[16, 16]),
        helper.make_node("BatchNormalization", ["conv", "g", "b", "m", "v"], ["map"]),
        helper.make_node("Flatten", ["map"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fw"], ["emb"], transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["N", 128])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def reference(model_path: Path, lst: Path, root: Path, out: Path, pre: Preprocess, batch: int) -> float:
    """The notebook loop of ORIGINAL.md, generalised only in model, layer and preprocessing."""
    net = onnx.load(model_path)
    layer = graph.resolve_layer(net)
    emb = graph.embedding_output(net)
    exposed = graph.keep_outputs(_expose(net, layer.name), [layer.name, emb])
    sess = runtime.session(exposed, "cpu")
    inp = graph.data_input(net).name
    files = lst.read_text().splitlines()
    t = time.perf_counter()
    with h5py.File(out, "w") as f:
        pd = f.create_dataset(
            "prefacen", (0, layer.channels), np.float32, maxshape=(None, layer.channels), chunks=(512, layer.channels)
        )
        fd = None
        for i in range(0, len(files), batch):
            imgs = [cv2.imread(str(root / p)) for p in files[i : i + batch]]
            blob = cv2.dnn.blobFromImages(
                imgs, 1.0 / pre.std[0], tuple(pre.size[::-1]), tuple(pre.mean), swapRB=pre.rgb
            )
            act, e = sess.run([layer.name, emb], {inp: blob})
            h, w = act.shape[2:]
            center = act[..., h // 2, w // 2]
            if fd is None:
                fd = f.create_dataset(
                    "facen", (0, e.shape[1]), np.float32, maxshape=(None, e.shape[1]), chunks=(512, e.shape[1])
                )
            for ds, rows in ((pd, center), (fd, e)):
                ds.resize(ds.shape[0] + len(rows), axis=0)
                ds[-len(rows) :] = rows
    return len(files) / (time.perf_counter() - t)


def _expose(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return m


def ceiling(
    model_path: Path, lst: Path, root: Path, pre: Preprocess, batch: int, pool: tuple[str, ...] = ("center",)
) -> float:
    """The session (b) runs (normalizing in the net), fed batches decoded beforehand: what the net alone allows."""
    ex = Extractor.build(onnx.load(model_path), "auto", "auto", pre, pool)
    fed = pre.in_graph(ex.model, ex.input)
    sess, name = runtime.session(fed, "cpu"), fed.graph.input[0].name
    files = lst.read_text().splitlines()
    batches = [np.stack([cv2.imread(str(root / p)) for p in files[i : i + batch]]) for i in range(0, len(files), batch)]
    fetch = list(ex.outputs.values())
    sess.run(fetch, {name: batches[0]})  # warm-up, as (a) and (b) pay it too
    t = time.perf_counter()
    for b in batches:
        sess.run(fetch, {name: b})
    return len(files) / (time.perf_counter() - t)


def decode_side(lst: Path, root: Path, pre: Preprocess, batch: int, repeat: int) -> None:
    """Images/s on one core of what the decoding threads do per image, the limit of a GPU run.

    (p) read + decode + OpenCV's per-image blob into a float buffer (introspect before the
    normalization moved into the net); (q) read + decode into a uint8 buffer (now). Best of
    `repeat`, interleaved.
    """
    paths = [str(root / p) for p in lst.read_text().splitlines()]
    f32, u8 = np.empty((batch, 3, *pre.size), np.float32), np.empty((batch, *pre.size, 3), np.uint8)
    params = pre._params

    def blob_path(chunk):
        for k, p in enumerate(chunk):
            f32[k] = cv2.dnn.blobFromImageWithParams(read_image(p, pre.size)[0], params)[0]

    def raw_path(chunk):
        read_batch(chunk, pre.size, u8[: len(chunk)])

    best = {}
    cv2.setNumThreads(1)
    for _ in range(repeat):
        for name, fn in (("p", blob_path), ("q", raw_path)):
            t = time.perf_counter()
            for i in range(0, len(paths), batch):
                fn(paths[i : i + batch])
            best[name] = max(best.get(name, 0.0), len(paths) / (time.perf_counter() - t))
    cv2.setNumThreads(-1)
    p, q = best["p"], best["q"]
    print(
        f"decoding side, one core, {len(paths)} images: per-image blob {p:8.1f}  "
        f"uint8 (net normalizes) {q:8.1f} images/s   "
        f"q/p {q / p:5.2f}; 16 cores at this rate: {16 * q:,.0f} images/s"
    )


def ours(
    model_path: Path, lst: Path, root: Path, out: Path, pre: Preprocess, batch: int, pool: tuple[str, ...] = ("center",)
) -> float:
    """`extract.run` with the reference's pool unless told (what (a) computes), from a fresh folder."""
    cfg = config.load(None)
    cfg["data"].update(list=str(lst), root=str(root))
    cfg["model"].update(path=str(model_path), pool=list(pool))
    cfg["preprocess"] = pre.as_dict()
    cfg["extract"].update(out=str(out), batch_size=batch, device="cpu")
    t = time.perf_counter()
    s = extract.run(cfg, overwrite=True, progress=False)
    return s.images / (time.perf_counter() - t)


def compare(name: str, model_path: Path, n: int, tmp: Path, pre: Preprocess, batch: int, repeat: int) -> dict:
    """Best of `repeat` interleaved rounds: a shared machine's slow spells hit every method alike."""
    root, lst = tmp / f"faces{n}", tmp / f"faces{n}.txt"
    if not lst.exists():
        synth.synthesize(n, 0, root, lst, progress=False)
    a = b = c = 0.0
    for _ in range(repeat):
        a = max(a, reference(model_path, lst, root, tmp / f"{name}-ref.h5", pre, batch))
        b = max(b, ours(model_path, lst, root, tmp / f"{name}-run", pre, batch))
        c = max(c, ceiling(model_path, lst, root, pre, batch))
    print(
        f"{name:<8} {n:>6} images  reference {a:8.1f}  introspect {b:8.1f}  ceiling {c:8.1f} images/s   "
        f"b/a {b / a:5.2f}  b/c {b / c:5.2f}"
    )
    return {"net": name, "a": a, "b": b, "c": c}


def _file_bytes(path: Path) -> int:
    return path.stat().st_size


def _row_bytes(path: Path) -> int:
    """The row datasets' bytes, without the padding of partly filled HDF5 chunks (what a long list costs)."""
    with h5py.File(path, "r") as f:
        return sum(f[k].size * f[k].dtype.itemsize for k in f if isinstance(f[k], h5py.Dataset))


def pool_cost(model_path: Path, n: int, tmp: Path, pre: Preprocess, batch: int, repeat: int) -> dict:
    """`model.pool` ["center"] vs ["center", "mean"] on the same n faces.

    End to end: `extract.run` with each pool, best of `repeat` interleaved rounds. The net alone:
    both sessions on each pre-decoded batch back to back (order alternating), `repeat` passes, so
    a loaded machine's slow spells hit both alike; the ratio is the median of the per-batch
    ratios, the images/s the totals.
    """
    root, lst = tmp / f"faces{n}", tmp / f"faces{n}.txt"
    if not lst.exists():
        synth.synthesize(n, 0, root, lst, progress=False)
    pools = {"center": ("center",), "center+mean": ("center", "mean")}
    run = {k: 0.0 for k in pools}
    for _ in range(repeat):
        for k, pool in pools.items():
            run[k] = max(run[k], ours(model_path, lst, root, tmp / f"pool-{k}", pre, batch, pool))
    c, m = run["center"], run["center+mean"]
    print(f"pool     {n:>6} images  extract    center {c:8.1f}  center+mean {m:8.1f} images/s   ratio {m / c:5.3f}")
    for what, size in (("file", _file_bytes), ("rows", _row_bytes)):  # the file pads its last HDF5 chunks
        b = {k: size(tmp / f"pool-{k}" / "full.h5") / n for k in pools}
        print(
            f"pool     {n:>6} images  full.h5 {what}  center {b['center']:8.0f}  center+mean {b['center+mean']:8.0f} "
            f"bytes per image   ratio {b['center+mean'] / b['center']:5.3f}"
        )

    sessions = {}
    for k, pool in pools.items():
        ex = Extractor.build(onnx.load(model_path), "auto", "auto", pre, pool)
        fed = pre.in_graph(ex.model, ex.input)
        sessions[k] = (runtime.session(fed, "cpu"), fed.graph.input[0].name, list(ex.outputs.values()))
    files = lst.read_text().splitlines()
    batches = [np.stack([cv2.imread(str(root / p)) for p in files[i : i + batch]]) for i in range(0, len(files), batch)]
    for sess, name, fetch in sessions.values():
        sess.run(fetch, {name: batches[0]})  # warm-up
    seconds = {k: 0.0 for k in pools}
    ratios = []
    for r in range(repeat):
        for i, b in enumerate(batches):
            took = {}
            for k in list(pools)[:: 1 if (i + r) % 2 == 0 else -1]:
                sess, name, fetch = sessions[k]
                t = time.perf_counter()
                sess.run(fetch, {name: b})
                took[k] = time.perf_counter() - t
                seconds[k] += took[k]
            ratios.append(took["center"] / took["center+mean"])
    c, m = (repeat * len(files) / seconds[k] for k in pools)
    print(
        f"pool     {n:>6} images  net alone  center {c:8.1f}  center+mean {m:8.1f} images/s   "
        f"ratio {m / c:5.3f} (median per-batch ratio {float(np.median(ratios)):5.3f}, {len(ratios)} pairs)"
    )
    return {"n": n, "extract": run, "net": {"center": c, "center+mean": m}, "median_ratio": float(np.median(ratios))}


def peak_rss(small: Path, tmp: Path, sizes: list[int]) -> None:
    """Peak RSS of `introspect extract` on lists of growing length (lines repeat 1,000 images)."""
    root, base = tmp / "faces1000", tmp / "faces1000.txt"
    if not base.exists():
        synth.synthesize(1000, 0, root, base, progress=False)
    lines = base.read_text().splitlines()
    for n in sizes:
        lst = tmp / f"rss{n}.txt"
        lst.write_text("".join(lines[i % len(lines)] + "\n" for i in range(n)))
        cmd = [
            sys.executable,
            "-m",
            "introspect.cli",
            "extract",
            "-q",
            "--list",
            str(lst),
            "--root",
            str(root),
            "--model",
            str(small),
            "--out",
            str(tmp / f"rss{n}"),
            "--device",
            "cpu",
        ]
        code = (
            "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)"
        )
        rss = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True, cwd=REPO)
        print(f"peak RSS  {n:>7} lines  {int(rss.stdout.split()[-1]):5d} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sface-images", type=int, default=1024)
    ap.add_argument("--small-images", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--pool-images", type=int, default=1024, help="SFace images for the pool cost (0: skip)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the best of each method counts")
    ap.add_argument(
        "--rss-lines", type=int, nargs="*", default=[10_000, 80_000], help="list lengths for the memory check"
    )
    args = ap.parse_args()
    pre = Preprocess()  # SFace: raw RGB 0..255, 112 x 112
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        small = tmp / "small.onnx"
        onnx.save(small_net(), small)
        print(
            f"cores: {len(__import__('os').sched_getaffinity(0))}; batch {args.batch}; "
            f"synthetic 112 x 112 JPEG faces; best of {args.repeat}"
        )
        if args.small_images:
            compare("small", small, args.small_images, tmp, pre, args.batch, args.repeat)
            decode_side(
                tmp / f"faces{args.small_images}.txt", tmp / f"faces{args.small_images}", pre, args.batch, args.repeat
            )
        if args.sface_images:
            compare("sface", nets.sface(REPO / "models"), args.sface_images, tmp, pre, args.batch, args.repeat)
        if args.pool_images:
            pool_cost(nets.sface(REPO / "models"), args.pool_images, tmp, pre, args.batch, args.repeat)
        if args.rss_lines:
            peak_rss(small, tmp, args.rss_lines)


if __name__ == "__main__":
    main()
