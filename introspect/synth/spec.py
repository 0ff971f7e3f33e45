"""What synth promises to its callers: crop size, attribute columns and rates, the alignment template.

Kept apart from the drawing code so the scoring side (`stages/evaluate.py`) and the argument
checks can read the contract without caring how faces are painted."""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Real
from pathlib import Path
from types import MappingProxyType

import numpy as np

from introspect.errors import UserError

SIZE = 112
CANVAS = 128  # faces are laid out in a larger frame, then mapped into the SIZE crop by the alignment

COLUMNS = ("path", "identity", "glasses", "mask", "pose", "dark", "gray", "blur", "occluder")

RateTable = tuple[tuple[str, float], ...]

# (value, probability) per attribute column; documented in the package docstring.  The order of
# the values matters: a uniform picks a value through the cumulative probabilities in this order.
RATES: Mapping[str, RateTable] = MappingProxyType(
    {
        "glasses": (("none", 0.85), ("clear", 0.10), ("sun", 0.05)),
        "mask": (("none", 0.92), ("medical", 0.08)),
        "pose": (("frontal", 0.84), ("left", 0.08), ("right", 0.08)),
        "dark": (("0", 0.92), ("1", 0.08)),
        "gray": (("0", 0.94), ("1", 0.06)),
        "blur": (("0", 0.92), ("1", 0.08)),
        "occluder": (("none", 0.985), ("hand", 0.005), ("phone", 0.004), ("mic", 0.003), ("bar", 0.003)),
    }
)

# ArcFace / SFace 112 x 112 five-point template: eyes, nose tip, mouth corners.
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
TEMPLATE.setflags(write=False)

_SUM_TOLERANCE = 1e-6


class SynthError(UserError, ValueError):
    """Bad synthesize() arguments: a ValueError that the CLI shows as one line."""


def attrs_path(list_path: Path) -> Path:
    """Ground truth lives beside the list so the pair cannot drift apart: x.txt -> x.attrs.csv."""
    list_path = Path(list_path)
    return list_path.with_name(list_path.stem + ".attrs.csv")


def resolve_rates(rates: Mapping[str, RateTable] | None) -> dict[str, RateTable]:
    """The rate tables to draw from: RATES, with the columns in `rates` replaced after checking them.

    Columns left out keep their documented rates; values with probability 0 are dropped, so they
    can never be drawn.  Any mistake raises SynthError with a one-line message."""
    tables = dict(RATES)
    if rates is None:
        return tables
    if not isinstance(rates, Mapping):
        raise SynthError(f"synth: rates must map columns to ((value, probability), ...) tables, got {rates!r}")
    for col, table in rates.items():
        if col not in RATES:
            raise SynthError(f"synth: rates: unknown column {col!r}; known: {', '.join(RATES)}")
        tables[col] = _checked_table(col, table)
    return tables


def _checked_table(col: str, table: object) -> RateTable:
    """One column's override: known values, each once, probabilities >= 0 that sum to 1."""
    where = f"synth: rates[{col!r}]"
    known = [value for value, _ in RATES[col]]
    try:
        pairs = [(value, p) for value, p in table]  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise SynthError(f"{where} must be ((value, probability), ...), got {table!r}") from None
    for value, p in pairs:
        if not isinstance(value, str) or value not in known:
            raise SynthError(f"{where}: unknown value {value!r}; known: {', '.join(known)}")
        if isinstance(p, bool) or not isinstance(p, Real) or not math.isfinite(p) or p < 0:
            raise SynthError(f"{where}: probability of {value!r} must be a number >= 0, got {p!r}")
    values = [value for value, _ in pairs]
    if len(set(values)) != len(values):
        raise SynthError(f"{where}: a value is listed twice: {', '.join(values)}")
    total = math.fsum(float(p) for _, p in pairs)
    if abs(total - 1.0) > _SUM_TOLERANCE:
        raise SynthError(f"{where}: probabilities sum to {total:.6g}, not 1")
    return tuple((value, float(p)) for value, p in pairs if p > 0)
