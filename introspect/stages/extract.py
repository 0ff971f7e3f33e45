"""The extract stage: run the net over a list of images, keep the layer's center pixel and the embedding.

One pass writes `full.h5` (every readable image) and `subset.h5` (the reference's random 2 %,
at least `extract.min_subset` lines with `extract.fraction = "auto"`: `stream.subset_threshold`),
with `prefacen` (the center pixel) and `facen` (the embedding) per image, and `prefacen_mean`
(the layer's spatial mean) when `model.pool` has "mean" (the default; the reference's is
["center"]). The streaming, resuming and sharding are `stream`'s; this module says what to fetch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..engine import nets, records, remote, source_names, sources, store, stream
from ..engine.extractor import MEAN, Extractor, check_pool, check_preprocessing
from ..engine.images import Preprocess
from ..engine.rundir import RunDir, Shard
from ..engine.stream import Inputs, StreamSettings, Summary

log = logging.getLogger(__name__)


def identity(
    model_sha: str,
    ex: Extractor,
    info: stream.ListInfo,
    pre: Preprocess,
    s: StreamSettings,
    fmt: str = "files",
    dtype: str = "float32",
) -> dict:
    """Everything that decides the rows: a resume or join only mixes files that agree on all of it.

    Paths are not part of it (a moved list or model is the same run); they are recorded beside.
    """
    return {
        "model_sha256": model_sha,
        "layer": ex.layer.name,
        "embedding": ex.embedding,
        "preprocess": store.dumps(pre.as_dict()),
        "list_sha256": info.sha256,
        "list_lines": info.lines,
        "fraction": float(s.fraction),
        "seed": int(s.seed),
        "chunk_size": int(s.chunk_size),
        "full": bool(s.full),
        "format": fmt,
        "pool": store.dumps(list(ex.pool)),  # JSON list: a resume with another pool must not mix chunks
    } | ({} if dtype == "float32" else {"dtype": dtype})  # float16 must not mix with float32 chunks; float32 stays
    # unrecorded, as in runs made before the key existed, so those still resume and join


def job(
    ex: Extractor, pre: Preprocess, s: StreamSettings, ident: dict, provenance: dict, dtype: str = "float32"
) -> stream.Job:
    """The stream for this net: (center pixel, embedding[, spatial mean]) into full.h5 and/or subset.h5,
    stored as `dtype` (`extract.dtype`: float16 halves the files; readers widen to float32)."""
    results = ({"full": False} if s.full else {}) | {"subset": True}
    fetch = ex.outputs
    widths = {"prefacen": ex.layer.channels, "facen": ex.dim, MEAN: ex.layer.channels}
    schema = {name: ((widths[name],), store.check_dtype(dtype)) for name in fetch}
    return stream.Job(
        "extract", ex.model, ex.input, fetch, schema, ident, results, pre, provenance, removes=("full", "subset")
    )


def run(cfg: dict, shard: Shard = Shard(), overwrite: bool = False, progress: bool = True) -> Summary:
    """Extract per the pipeline config; resumes a killed run, refuses to mix with another run."""
    settings = StreamSettings.from_config(cfg["extract"])
    dtype = cfg["extract"]["dtype"]
    store.check_dtype(dtype)
    pre = Preprocess.from_config(cfg["preprocess"])
    model_path = Path(cfg["model"]["path"])
    net = nets.load(model_path, hint="pass --model PATH (an ONNX net) or set model.path")
    pool = check_pool(cfg["model"]["pool"])
    ex = Extractor.build(net, cfg["model"]["layer"], cfg["model"]["embedding"], pre, pool)
    root, fmt = remote.as_root(cfg["data"]["root"]), cfg["data"]["format"]
    # the first images under this and the standard normalizations, before the run folder is touched:
    # preprocess.check = "strict" refuses here
    source = sources.from_config(cfg["data"])
    limits = Inputs.limits_from_config(cfg["data"])
    with first_lines(cfg["data"], source) as lines:
        mode = cfg["preprocess"]["check"]
        sanity = check_preprocessing(ex, pre, lines, source, limits, mode=mode)
    run_dir = RunDir(cfg["extract"]["out"])
    inputs = Inputs.from_config(cfg["data"], run_dir, enumerate=True, source=source)
    info = inputs.list
    nominal, settings = settings.fraction, settings.for_list(info.lines)
    if settings.fraction != nominal:
        least = settings.min_subset
        log.info(
            "extract: the subset keeps %s: %g of %d lines is under extract.min_subset = %d (a --fraction: just that)",
            "every line" if info.lines <= least else f"{least} lines",
            nominal,
            info.lines,
            least,
        )
    provenance = records.paths(model_path, info.path, root)
    provenance |= source_names.record(info.path)  # the photos aligned crops came from, for lists and the report
    provenance |= {"fraction_setting": str(cfg["extract"]["fraction"]), "min_subset": int(settings.min_subset)}
    provenance["sanity"] = store.dumps(sanity)
    ident = identity(nets.sha256_file(model_path), ex, info, pre, settings, fmt, dtype)
    with run_dir.stage("extract", shard) as timing:
        summary = stream.run(
            job(ex, pre, settings, ident, provenance, dtype),
            inputs,
            settings,
            run_dir,
            shard,
            overwrite=overwrite,
            progress=progress,
        )
        timing.extra["images"] = summary.processed
        timing.record &= summary.processed > 0
    return summary


@contextlib.contextmanager
def first_lines(data: dict, source: sources.Source) -> Iterator[Iterable[str]]:
    """The list's lines as read lazily (data.list), or the container's keys (an empty list enumerates them);
    nothing when neither can be read: the stage's own checks then say why."""
    lst = Path(data["list"]) if data["list"] else None
    if lst is not None and lst.is_file():
        with stream.open_list(lst) as f:
            yield (ln.rstrip("\r\n") for ln in f)
    elif lst is None:
        try:
            keys = source.keys()
        except ValueError:  # a folder of files has no keys
            keys = iter(())
        yield keys
    else:
        yield iter(())


def join(out: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """`introspect join`: the shards' files into the run folder's results."""
    run_dir = RunDir(out)
    with run_dir.lock("join"):
        return stream.join(run_dir, overwrite=overwrite)
