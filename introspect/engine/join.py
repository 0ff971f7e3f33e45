"""`introspect join`: shard files into the results one run would write, each shard checked against its record.

Split from `stream` (which re-exports `join`): joining reads finished files only.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import records, store
from .lists import chunk_masks
from .rundir import RunDir, Shard

#: Attributes that may differ between shards of one job (machines mount data differently).
LOCAL_ATTRS = ("model_path", "list_path", "data_root", *records.ABS.values(), "shard", "sanity", "faces_csv")
SHARD_FILE = re.compile(r"^(?P<kind>[A-Za-z_]+)\.shard-(?P<i>\d+)-of-(?P<n>\d+)\.h5$")


def join(run_dir: RunDir, overwrite: bool = False) -> dict[str, Path]:
    """Shards' files -> `full.h5`, `subset.h5`, `labels.h5`..., row for row what one run would write.

    Each shard is checked against its own record first: the shard id it was made as (a file
    copied over another's name is refused), every row in a chunk that shard owns, and exactly
    the lines those chunks hold, once each. A copy, not an HDF5 virtual dataset: the result
    stands alone (shards can be deleted or live on other machines' disks), reads at full
    speed, and is the same file a single run makes; the price is one sequential pass.
    """
    folder = run_dir.root / "shards"
    found: dict[str, dict[int, tuple[Path, int]]] = {}
    for p in sorted(folder.glob("*.shard-*.h5")) if folder.is_dir() else []:
        m = SHARD_FILE.match(p.name)
        if m is None:
            raise UserError(f"{p} is not named <kind>.shard-<i>-of-<n>.h5; move it out of {folder}")
        found.setdefault(m["kind"], {})[int(m["i"])] = (p, int(m["n"]))
    if not found:
        raise UserError(
            f"no shard files in {folder}; run `introspect extract` (or `label`) `--shard i/n` for every i first"
        )
    plans = {kind: _check_shards(folder, kind, shards) for kind, shards in sorted(found.items())}
    exist = [run_dir.result(kind) for kind in plans if run_dir.result(kind).exists()]
    if exist and not overwrite:
        done = {
            k
            for k, (files, attrs) in plans.items()
            if run_dir.result(k).exists() and _joined_from(run_dir.result(k), files, attrs)
        }
        if len(exist) == len(plans) or {p.name.removesuffix(".h5") for p in exist} != done:
            raise UserError(f"{exist[0]} exists; pass --overwrite to replace it")
        plans = {k: v for k, v in plans.items() if k not in done}  # an earlier join was stopped between files
    joined = {}
    for kind, (files, attrs) in plans.items():
        dest = run_dir.result(kind)
        store.concat(store.merge_sources(files), files, dest, dict(attrs, shard=""), store.schema_of(files[0]))
        joined[kind] = dest
    return joined


def _joined_from(dest: Path, files: list[Path], attrs: dict) -> bool:
    """Whether `dest` is already these shards joined (same settings, as many rows)."""
    mine = {k: v for k, v in store.read_attrs(dest).items() if k not in LOCAL_ATTRS}
    theirs = {k: v for k, v in attrs.items() if k not in LOCAL_ATTRS}
    return mine == theirs and store.count_rows(dest) == sum(store.count_rows(p) for p in files)


def _check_shards(folder: Path, kind: str, shards: dict[int, tuple[Path, int]]) -> tuple[list[Path], dict]:
    counts = sorted({n for _, n in shards.values()})
    if len(counts) != 1:
        raise UserError(f"{folder} mixes {kind} shard counts {counts}; keep the files of one split only")
    n = counts[0]
    missing = sorted(set(range(n)) - set(shards))
    if missing or max(shards) >= n:
        raise UserError(f"{kind}: shards {missing} of {n} are missing; run `introspect extract --shard i/{n}` for them")
    files = [shards[i][0] for i in range(n)]
    attrs = [store.read_attrs(p) for p in files]
    ident = {k: v for k, v in attrs[0].items() if k not in LOCAL_ATTRS}
    for i, (p, a) in enumerate(zip(files, attrs)):
        theirs = {k: v for k, v in a.items() if k not in LOCAL_ATTRS}
        if theirs != ident:
            raise UserError(
                f"{p} was made with other settings than {files[0].name} ({settings_diff(theirs, ident)}); "
                "re-run that shard"
            )
        if a.get("shard") != f"{i}/{n}":
            raise UserError(f"{p} was made as shard {a.get('shard')!r}, not {i}/{n}; re-run shard {i}/{n}")
        _check_rows(p, a, Shard(i, n))
    return files, attrs[0]


def _check_rows(path: Path, attrs: dict, shard: Shard) -> None:
    """Every row and failure in a chunk the shard owns, once, and as many as those chunks hold."""
    try:
        lines, cs = int(attrs["list_lines"]), int(attrs["chunk_size"])
        subset_only = attrs.get("kind") == "subset"
        fraction, seed = float(attrs.get("fraction", 1.0)), int(attrs.get("seed", 0))
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path} does not record its list and chunk size; re-run that shard") from None
    expected = 0
    for cid, mask in enumerate(chunk_masks(lines, cs, fraction, seed)):
        if shard.owns(cid):
            expected += int(mask.sum()) if subset_only else len(mask)
    index = store.read_index(path)
    fails = np.array([i for i, _, _ in store.read_failures(path)], np.int64)
    seen = np.sort(np.concatenate([index, fails]))
    owned = (seen // cs) % shard.count == shard.index
    if len(seen) != expected or not owned.all() or (np.diff(seen) <= 0).any() or (len(seen) and seen[-1] >= lines):
        raise UserError(
            f"{path} holds {len(seen)} rows and failures where shard {shard.text} of the list has {expected} "
            "(or rows of other shards, or twice); re-run that shard"
        )


def settings_diff(a: dict, b: dict) -> str:
    """The first three settings two runs differ in, for a refusal's one line."""
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:3])
