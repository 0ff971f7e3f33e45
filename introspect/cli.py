"""`introspect <stage>`: thin wrappers that read the pipeline file, apply flags, call the stage.

A user's mistake ends as one line on stderr and exit status 2; an interrupt says how to resume.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from pathlib import Path

from . import config
from .engine.rundir import Shard, write_bytes
from .errors import SelfCheckFailed, UserError

#: flag -> pipeline key, per stage; each flag overrides the pipeline file.
EXTRACT_FLAGS = {
    "--list": ("data.list", str, 'image list, one path per line ("" with recordio/tar: every image)'),
    "--root": (
        "data.root",
        str,
        "folder the list's paths are relative to (recordio: the .rec; tar: the shards); or a URL: s3://bucket/prefix",
    ),
    "--format": ("data.format", str, "files, recordio or tar"),
    "--model": ("model.path", str, "ONNX net"),
    "--layer": ("model.layer", str, "auto, a tensor name, or node:<index>"),
    "--embedding": ("model.embedding", str, "output kept as facen (auto = first output)"),
    "--pool": ("model.pool", lambda t: [w.strip() for w in t.split(",")], "center,mean or center (the reference's)"),
    "--out": ("extract.out", str, "run folder"),
    "--batch-size": ("extract.batch_size", int, "images per forward pass"),
    "--fraction": (
        "extract.fraction",
        lambda t: t if t == "auto" else float(t),
        "share of the list kept in subset.h5, exactly; auto = 2 %, at least extract.min_subset lines",
    ),
    "--seed": ("extract.seed", int, "subset seed"),
    "--chunk-size": ("extract.chunk_size", int, "list lines per resumable unit"),
    "--workers": ("extract.workers", int, "decoding threads (0 = one per core)"),
    "--device": ("extract.device", str, "auto, cpu or cuda"),
    "--engine": ("extract.engine", str, "local, or ray (a Ray cluster: the distributed extra)"),
    "--address": ("extract.address", str, "Ray cluster address (default RAY_ADDRESS, else a local one)"),
}
SYNTH_FLAGS = {
    "--n": ("synth.n", int, "number of images"),
    "--seed": ("synth.seed", int, "random seed"),
    "--root": ("synth.root", str, "folder for the JPEGs"),
    "--list": ("synth.list", str, "list file to write (ground truth goes beside it)"),
}


def _add_pipeline(p: argparse.ArgumentParser, flags: dict) -> None:
    p.add_argument("--pipeline", "-p", type=Path, help="pipeline file (pipelines/*.toml)")
    for flag, (key, typ, text) in flags.items():
        p.add_argument(flag, dest=key, type=typ, default=None, help=f"{text} [{key}]")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any pipeline key")


def _add_stage(sub, name: str, text: str, flags: dict, func) -> argparse.ArgumentParser:
    """A stage's subcommand: its pipeline flags, and what runs it."""
    p = sub.add_parser(name, help=text)
    _add_pipeline(p, flags)
    p.set_defaults(func=func)
    return p


def _add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="use settings that contradict the run folder's records")


def _config(args: argparse.Namespace, flags: dict) -> dict:
    overrides = {key: getattr(args, key) for key, _, _ in flags.values()}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r} should be KEY=VALUE, e.g. --set extract.batch_size=128")
        overrides[key.strip()] = config.from_text(key.strip(), value.strip())
    cfg = config.load(args.pipeline, overrides)
    from .stages import remembered, settings

    if args.command in remembered.STAGES:  # the run folder's records are the defaults
        explicit = config.explicit(args.pipeline, overrides)
        cfg = remembered.apply(cfg, explicit, args.command, force=getattr(args, "force", False))
    settings.check(cfg)
    return cfg


def cmd_model(args: argparse.Namespace) -> None:

    from .engine import nets

    if args.name == "prepare":
        if not args.path or not args.out:
            raise UserError("usage: introspect model prepare PATH --out OUT.onnx [--dequantize] [--size H W]")
        path, lines = nets.prepare_file(args.path, args.out, dequantize=args.dequantize, size=args.size)
        for line in lines:
            print(line)
        print(path)
        return
    if args.name not in ("sface", "yunet", "tiny-resnet") or args.path:
        raise UserError(f"introspect model: {args.name!r} is not one of sface, yunet, tiny-resnet, prepare PATH")
    out = Path(args.out or "models")
    if args.name == "sface":
        path = nets.sface(out, dequantize=not args.int8)
    elif args.name == "yunet":
        path = nets.yunet(out)
    else:
        path = out / "tiny_resnet.onnx"
        out.mkdir(parents=True, exist_ok=True)
        write_bytes(path, nets.tiny_resnet(seed=0).SerializeToString())
    print(path)


def cmd_synth(args: argparse.Namespace) -> None:
    from . import synth

    s = _config(args, SYNTH_FLAGS)["synth"]
    if s["n"] < 1:
        raise UserError(f"--n {s['n']}: need at least 1 image")
    summary = synth.synthesize(s["n"], s["seed"], Path(s["root"]), Path(s["list"]), progress=not args.quiet)
    print(
        f"synth: {summary['n']} images in {summary['seconds']:.1f} s "
        f"({summary['images_per_s']:.0f} images/s) -> {summary['list']}"
    )


def cmd_layers(args: argparse.Namespace) -> None:
    from .engine import layers, nets

    model = nets.load(args.model, hint="give the path of an ONNX image net")
    size = tuple(args.size) if args.size else None
    maps = layers.feature_maps(model, size)
    if not maps:
        raise UserError(f"{args.model} has no 4-D feature map with a spatial extent (is it an image net?)")
    emb = layers.embedding_output(model, args.embedding)
    pick = layers.detect_layer(model, args.embedding, image_size=size)
    rows = [(m.name == pick, m.node_index, m.name, m.op, " x ".join(map(str, m.shape))) for m in maps]
    _table("feature maps (4-D), for --layer", rows)
    print(f"* auto-detected layer: {pick} (use --layer NAME or --layer node:<index> to choose another)")
    print()
    cands = layers.embedding_candidates(model, size)
    rows = [
        (c.name == emb, c.node_index, c.name, c.op, f"N x {c.dim}" + ("  (graph output)" if c.output else ""))
        for c in cands
    ]
    _table("embedding candidates (2-D, N x D), for --embedding", rows)
    how = "the first graph output" if args.embedding == "auto" else "as named"
    if any(c.name == emb for c in cands):
        print(f"* embedding: {emb} ({how}; use --embedding NAME to choose another)")
    else:
        shape = layers.infer_shapes(model, size).get(emb, ("?",))
        print(f"! embedding: {emb} ({how}) has shape {list(shape)}, not N x D: name one above with --embedding")


def _table(title: str, rows: list[tuple]) -> None:
    """`introspect layers`' listing: a title, then node, tensor, op and shape, the chosen row marked '*'."""
    print(f"{title}:")
    if not rows:
        print("  (none)")
        return
    width = max(len(r[2]) for r in rows)
    print(f"  {'node':>5}  {'tensor':<{width}}  {'op':<20}  shape")
    for chosen, index, name, op, shape in rows:
        print(f"{'*' if chosen else ' '} {index:>5}  {name:<{width}}  {op:<20}  {shape}")


def cmd_extract(args: argparse.Namespace) -> None:
    from .stages import extract

    cfg = _config(args, EXTRACT_FLAGS)
    if args.no_full:
        cfg["extract"]["full"] = False
    shard = Shard.parse(args.shard)
    summary = extract.run(cfg, shard, overwrite=args.overwrite, progress=not args.quiet)
    print(f"extract: {summary.line()}")
    for p in summary.outputs:
        print(f"  -> {p}")


CLUSTER_FLAGS = {
    "--out": EXTRACT_FLAGS["--out"],
    "--model": EXTRACT_FLAGS["--model"],
    "--backend": ("tsne.backend", str, "t-SNE backend: auto, opentsne, cuml, tsnecuda, sklearn"),
    "--perplexity": ("tsne.perplexity", float, "t-SNE perplexity"),
    "--n-iter": ("tsne.n_iter", int, "t-SNE iterations"),
    "--method": ("cluster.method", str, "knn-dbscan, dbscan, hdbscan, optics"),
    "--eps": ("cluster.eps", float, "DBSCAN radius in z-units of the map"),
    "--min-samples": ("cluster.min_samples", int, "DBSCAN density threshold"),
    "--class-weight": ("classifier.class_weight", str, "balanced or none"),
}


def cmd_cluster(args: argparse.Namespace) -> None:
    from .stages import cluster

    print(cluster.run(_config(args, CLUSTER_FLAGS)).text())


def _numbers(text: str) -> list[float]:
    """A comma-separated grid axis: `--eps 0.05,0.1`."""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers, e.g. 0.05,0.1") from None


SWEEP_FLAGS = {
    "--out": EXTRACT_FLAGS["--out"],
    "--backend": CLUSTER_FLAGS["--backend"],
    "--perplexity": ("sweep.perplexity", _numbers, "t-SNE perplexities, comma-separated"),
    "--eps": ("sweep.eps", _numbers, "DBSCAN radii, comma-separated"),
    "--min-samples": (
        "sweep.min_samples",
        lambda t: [int(v) for v in _numbers(t)],
        "DBSCAN densities, comma-separated",
    ),
    "--seeds": ("sweep.seeds", int, "t-SNE runs per perplexity (stability)"),
}


def cmd_sweep(args: argparse.Namespace) -> None:
    from .stages import sweep

    print(sweep.run(_config(args, SWEEP_FLAGS)).text())


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .stages import evaluate

    cfg = _config(args, {"--out": EXTRACT_FLAGS["--out"], "--list": EXTRACT_FLAGS["--list"]})
    if args.sweep:
        print(evaluate.format_sweep(evaluate.run_sweep(cfg, args.attrs)))
        return
    print(evaluate.run(cfg, args.attrs).text())


def _extract_flags(*names: str) -> dict:
    """Flags another stage shares with extract (same keys, same help)."""
    return {n: EXTRACT_FLAGS[n] for n in names}


LABEL_FLAGS = {
    **_extract_flags(
        "--list",
        "--root",
        "--format",
        "--out",
        "--batch-size",
        "--chunk-size",
        "--workers",
        "--device",
        "--engine",
        "--address",
    ),
    "--merged": ("label.model", str, "merged model (default <out>/merged.onnx)"),
}


def cmd_label(args: argparse.Namespace) -> None:
    from .stages import label

    if args.net is not None:
        raise UserError(
            f"label --model {args.net}: label's model is the merged model, given as --merged PATH "
            "(--model is the net elsewhere; label reads the net from the merged model)"
        )
    cfg = _config(args, LABEL_FLAGS)
    if args.all_scores:
        cfg["label"]["all_scores"] = True
    if args.no_fast:
        cfg["label"]["fast"] = False
    shard = Shard.parse(args.shard)
    print(label.run(cfg, shard, overwrite=args.overwrite, progress=not args.quiet, force=args.force).text())


MERGE_FLAGS = _extract_flags("--out", "--model", "--layer", "--list", "--root", "--format")
REPORT_FLAGS = {
    **_extract_flags("--out", "--list", "--root", "--format"),
    "--compare": ("report.compare", str, "another labels.h5 (new data, this run's merged model) drawn over the map"),
}


def cmd_merge(args: argparse.Namespace) -> None:
    from .stages import merge

    print(merge.run(_config(args, MERGE_FLAGS), force=args.force).text())


def cmd_report(args: argparse.Namespace) -> None:
    from .stages import report

    page = report.build(_config(args, REPORT_FLAGS))
    print(f"report: {page.resolve()}")


ALIGN_FLAGS = {
    "--list": ("data.list", str, "list of raw photos, one path per line"),
    "--root": ("data.root", str, "folder the photos' paths are relative to"),
    "--out": ("align.root", str, "folder for the aligned crops"),
    "--out-list": ("align.list", str, "aligned list to write (.faces.csv and .failures.csv beside it)"),
    "--faces": ("align.faces", str, "largest (one face per photo) or all"),
    "--score-threshold": ("align.score_threshold", float, "detector score below which there is no face"),
    "--workers": ("align.workers", int, "threads (0 = one per core)"),
}


def cmd_align(args: argparse.Namespace) -> None:
    from .stages import align

    print(align.run(_config(args, ALIGN_FLAGS), progress=not args.quiet).text())


def cmd_join(args: argparse.Namespace) -> None:
    from .stages import extract

    cfg = _config(args, {"--out": EXTRACT_FLAGS["--out"]})
    for kind, path in extract.join(cfg["extract"]["out"], overwrite=args.overwrite).items():
        print(f"join: {kind} -> {path}")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="introspect", description="What has my image network learned?")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars or info lines")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser = functools.partial(sub.add_parser, parents=[common])  # every stage takes --quiet

    p = sub.add_parser("model", help="fetch and prepare a net into models/, or prepare any ONNX net")
    p.add_argument("name", nargs="?", default="sface", help="sface, yunet, tiny-resnet, or prepare (then PATH)")
    p.add_argument("path", nargs="?", help="with prepare: the ONNX net to prepare")
    p.add_argument("--out", help="models folder (default models); with prepare: the prepared file")
    p.add_argument("--int8", action="store_true", help="keep SFace's int8 weights (slower on CPU)")
    p.add_argument("--dequantize", action="store_true", help="with prepare: fold int8 weights into float32")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="with prepare: size for a dynamic input")
    p.set_defaults(func=cmd_model)

    p = _add_stage(sub, "synth", "draw synthetic faces with planted attributes", SYNTH_FLAGS, cmd_synth)

    p = _add_stage(
        sub, "align", "detect and align the faces of raw photos: 112 x 112 crops and a new list", ALIGN_FLAGS, cmd_align
    )

    p = sub.add_parser(
        "layers", help="list a net's feature maps and embedding candidates, and the ones auto-detection picks"
    )
    p.add_argument("model")
    p.add_argument("--embedding", default="auto", help="the embedding the layer is detected from (auto = first output)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="input size, for nets with a dynamic one")
    p.set_defaults(func=cmd_layers)

    p = _add_stage(
        sub,
        "extract",
        "run the net, store center-pixel (and spatial-mean) activations and embeddings",
        EXTRACT_FLAGS,
        cmd_extract,
    )
    p.add_argument("--no-full", action="store_true", help="keep only the subset (runs the net on it alone)")
    p.add_argument("--shard", help="i/n: process every n-th chunk of the list, starting at chunk i")
    p.add_argument("--overwrite", action="store_true", help="discard earlier results and parts in --out")

    p = _add_stage(
        sub, "cluster", "t-SNE of the subset, clusters, and a validated classifier in ONNX", CLUSTER_FLAGS, cmd_cluster
    )
    _add_force(p)

    p = _add_stage(
        sub,
        "sweep",
        "score a grid of t-SNE / DBSCAN settings without ground truth, recommend one",
        SWEEP_FLAGS,
        cmd_sweep,
    )
    _add_force(p)

    p = _add_stage(
        sub,
        "evaluate",
        "score the clusters against planted attributes (synthetic data only)",
        {"--out": EXTRACT_FLAGS["--out"], "--list": EXTRACT_FLAGS["--list"]},
        cmd_evaluate,
    )
    p.add_argument("--attrs", help="ground-truth CSV (default: beside the list, x.txt -> x.attrs.csv)")
    p.add_argument(
        "--sweep", action="store_true", help="score every setting of the last sweep instead (judges its rule)"
    )
    _add_force(p)

    p = _add_stage(sub, "merge", "graft the cluster classifier into the net: one ONNX model", MERGE_FLAGS, cmd_merge)
    p.add_argument("--force", action="store_true", help="graft even if the clusters came from another net or layer")

    p = _add_stage(sub, "label", "label every image of a list with the merged model", LABEL_FLAGS, cmd_label)
    p.add_argument("--all-scores", action="store_true", help="also store every cluster's raw score")
    p.add_argument("--no-fast", action="store_true", help="run the merged model even when full.h5 could be used")
    p.add_argument("--shard", help="i/n: label every n-th chunk of the list, starting at chunk i")
    p.add_argument("--overwrite", action="store_true", help="discard earlier labels and parts in --out")
    p.add_argument(
        "--force", action="store_true", help="label with a merged model of another run's clustering or settings"
    )
    p.add_argument("--model", dest="net", help="not label's: the merged model is --merged")

    p = _add_stage(
        sub, "report", "write <out>/report/index.html: the map, the clusters and their images", REPORT_FLAGS, cmd_report
    )
    _add_force(p)

    p = _add_stage(
        sub,
        "join",
        "join shard files into full.h5, subset.h5 or labels.h5",
        {"--out": EXTRACT_FLAGS["--out"]},
        cmd_join,
    )
    p.add_argument("--overwrite", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # introspect's own info lines; libraries (openTSNE...) only when they warn
    logging.basicConfig(level=logging.WARNING, format="introspect: %(message)s")
    logging.getLogger("introspect").setLevel(logging.WARNING if args.quiet else logging.INFO)
    where = f"introspect {args.command}"
    try:
        args.func(args)
    except (ValueError, TypeError) as e:  # UserError, and a pure function's refusal: the user's to fix
        print(f"{where}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except SelfCheckFailed as e:
        print(f"{where}: self-check failed (a bug in introspect; please report it): {_one_line(e)}", file=sys.stderr)
        return 1
    except OSError as e:  # the machine's: a full disk, a folder without permission, a broken pipe
        if isinstance(e, BrokenPipeError):
            _quiet_stdout()
            return 0
        print(f"{where}: error: {e.strerror or e} ({e.filename or 'no file'})", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"{where}: out of memory; use a smaller subset or batch, or a larger machine", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{where}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _quiet_stdout() -> None:
    """Output piped to `head` that closed early: nothing more to say, and no error at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
