"""A labelling file (`labels.h5`, or another one given to `report --compare`) read back and checked.

The report draws and counts whatever such a file holds, so it is checked first, in one place,
whoever wrote it: `index` and `label` integer, 1-D, of equal length and not empty; every label
one of the model's clusters or -1 (unknown); `map`, when there, N x 2 with each row placed
(finite) or not placed (both NaN); `facets`, when there, N x F. A further view V's columns
(`label_V` integers, `score_V` floats, `facets_V` N x F) are checked the same way, `label_V`
against that view's clusters. Each violation is one line.
"""

from __future__ import annotations

import re
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
    views: dict[str, np.ndarray] = field(default_factory=dict)  # a further view V's `label_V`


def _bad(path: Path, what: str) -> UserError:
    return UserError(f"{path} is not a labelling `introspect label` writes: {what}; label again")


def _vector(f, name: str, path: Path, kinds: str = "iu") -> np.ndarray:
    if name not in f or not hasattr(f[name], "shape"):
        raise _bad(path, f"it has no `{name}` dataset")
    d = f[name]
    if d.ndim != 1 or d.dtype.kind not in kinds:
        what = "integers" if kinds == "iu" else "numbers"
        raise _bad(path, f"`{name}` is {d.dtype} of shape {tuple(d.shape)}, not {what} in one column")
    return d[:].astype(np.int64) if kinds == "iu" else d[:]


def _matrix(f, name: str, n: int, path: Path) -> int:
    """Columns of the N x F float dataset `name` (facet probabilities)."""
    d = f[name]
    if not hasattr(d, "shape") or d.ndim != 2 or d.shape[0] != n or d.dtype.kind != "f":
        raise _bad(path, f"`{name}` should be {n} x F floats")
    return int(d.shape[1])


#: A further view's columns in labels.h5 (`label.py` writes them): label_V, score_V, facets_V.
_VIEW_COLUMN = re.compile(r"^(label|score|facets)_([a-z][a-z0-9_]{0,31})$")


def _views(f, n: int, path: Path) -> dict[str, np.ndarray]:
    """Each further view's `label_V`, `score_V` and `facets_V` checked; a score or facets without a label refused."""
    cols: dict[str, set[str]] = {}
    for key in f:
        m = _VIEW_COLUMN.match(key)
        if m:
            cols.setdefault(m.group(2), set()).add(m.group(1))
    views = {}
    for view, kinds in sorted(cols.items()):
        if "label" not in kinds:
            raise _bad(path, f"it has {sorted(f'{k}_{view}' for k in kinds)} but no `label_{view}`")
        views[view] = _vector(f, f"label_{view}", path)
        if "score" in kinds:
            score = _vector(f, f"score_{view}", path, "f")
            if len(score) != n:
                raise _bad(path, f"`score_{view}` has {len(score)} rows but `label` {n}")
        if len(views[view]) != n:
            raise _bad(path, f"`label_{view}` has {len(views[view])} rows but `label` {n}")
        if "facets" in kinds:
            _matrix(f, f"facets_{view}", n, path)
    return views


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
            got.facets = _matrix(f, "facets", len(label), path)
        got.views = _views(f, len(label), path)
    if ids is not None:
        check_ids(got, ids)
    return got


def check_ids(got: Labelling, ids: list[int], views: dict[str, list[int]] | None = None) -> None:
    """Every label is one of the model's clusters `ids` or -1 (unknown), and with `views` (a further view's
    name: its cluster ids) every `label_V` one of view V's, for a view the model has; else one line."""
    _check(got.path, got.label, ids, "")
    if views is None:
        return
    for view, label in got.views.items():
        if view not in views:
            raise UserError(
                f"{got.path} has labels of view {view!r}, which the model does not have (its views: "
                f"{sorted(views) or 'none but the center'}); it was made with another model: label again"
            )
        _check(got.path, label, views[view], f" of view {view!r}")


def _check(path: Path, label: np.ndarray, ids: list[int], what: str) -> None:
    stray = np.setdiff1d(np.unique(label), np.asarray(sorted(set(ids)) + [-1], np.int64))
    if len(stray):
        raise UserError(
            f"{path} labels images with clusters{what} {stray[:8].tolist()} the model does not have "
            f"(its clusters{what}: {sorted(ids)}, and -1 unknown); it was made with another model: label again"
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
