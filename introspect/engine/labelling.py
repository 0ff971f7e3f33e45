"""A labelling file (`labels.h5`, or another one given to `report --compare`) read back and checked.

The report draws and counts whatever such a file holds, so it is checked first, in one place,
whoever wrote it: `index` and `label` integer, 1-D, of equal length and not empty; every label
one of the model's clusters or -1 (unknown); `map`, when there, N x 2 with each row placed
(finite) or not placed (both NaN); `facets`, when there, N x F. Each violation is one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import store


@dataclass
class Labelling:
    """What the report uses of a labelling file."""

    path: Path
    index: np.ndarray
    label: np.ndarray
    failures: int
    attrs: dict = field(default_factory=dict)
    map: np.ndarray | None = None  # N x 2, NaN rows = not placed
    facets: int = 0  # columns of `facets`, 0 when absent


def _bad(path: Path, what: str) -> UserError:
    return UserError(f"{path} is not a labelling `introspect label` writes: {what}; label again")


def _vector(f, name: str, path: Path) -> np.ndarray:
    if name not in f or not hasattr(f[name], "shape"):
        raise _bad(path, f"it has no `{name}` dataset")
    d = f[name]
    if d.ndim != 1 or d.dtype.kind not in "iu":
        raise _bad(path, f"`{name}` is {d.dtype} of shape {tuple(d.shape)}, not integers in one column")
    return d[:].astype(np.int64)


def read(path: Path, ids: list[int] | None, what: str = "labelling") -> Labelling:
    """The checked labelling at `path`; `ids` are the model's clusters (None: not checked)."""
    path = store.regular_file(Path(path), what)
    with store.open_h5(path) as f:
        index, label = _vector(f, "index", path), _vector(f, "label", path)
        if len(index) != len(label):
            raise _bad(path, f"`index` has {len(index)} rows but `label` {len(label)}")
        if not len(label):
            raise _bad(path, "it labels no image")
        if index.min() < 0:
            raise _bad(path, "`index` has negative line numbers")
        got = Labelling(path, index, label, _failures(f), store.read_attrs(path))
        if "map" in f:
            got.map = _map(f["map"], len(label), path)
        if "facets" in f:
            d = f["facets"]
            if not hasattr(d, "shape") or d.ndim != 2 or d.shape[0] != len(label) or d.dtype.kind != "f":
                raise _bad(path, f"`facets` should be {len(label)} x F floats")
            got.facets = int(d.shape[1])
    if ids is not None:
        check_ids(got, ids)
    return got


def check_ids(got: Labelling, ids: list[int]) -> None:
    """Every label is one of the model's clusters `ids` or -1 (unknown); else one line."""
    stray = np.setdiff1d(np.unique(got.label), np.asarray(sorted(set(ids)) + [-1], np.int64))
    if len(stray):
        raise UserError(
            f"{got.path} labels images with clusters {stray[:8].tolist()} the model does not have "
            f"(its clusters: {sorted(ids)}, and -1 unknown); it was made with another model: label again"
        )


def _failures(f) -> int:
    d = f.get("failures/index") if "failures" in f and hasattr(f["failures"], "keys") else None
    return int(d.shape[0]) if d is not None and hasattr(d, "shape") and d.ndim == 1 else 0


def _map(d, n: int, path: Path) -> np.ndarray:
    if not hasattr(d, "shape") or d.shape != (n, 2) or d.dtype.kind != "f":
        raise _bad(path, f"`map` is {getattr(d, 'dtype', '?')} of shape {getattr(d, 'shape', '?')}, not {n} x 2 floats")
    Y = d[:]
    placed, unplaced = np.isfinite(Y).all(axis=1), np.isnan(Y).all(axis=1)
    if not (placed | unplaced).all():
        raise _bad(path, "`map` has infinite or half-placed positions")
    if not placed.any():
        raise _bad(path, "`map` places no image")
    return Y


def made_with(labelling: Labelling, model_sha256: str | None) -> bool:
    """Whether the labelling was made by the merged model with this sha256."""
    return bool(model_sha256) and labelling.attrs.get("model_sha256") == model_sha256
