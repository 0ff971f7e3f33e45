"""Planted attributes against several views at once: is the best view better than the best of chance?

`planted` scores one clustering; a person reads every view, so the figure that matters is the best
view per attribute, and its chance must be taken the same way (the best view under a shuffled
target), or several views would look better than one by the number of tries alone.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from .planted import (
    _agreement,
    _as_index,
    _best_union,
    _codes,
    _contingency,
    best_union,
    binary_targets,
    chance_f1,
    read_attrs,
)

__all__ = ["best_of_views", "evaluate_views", "format_views"]


def best_of_views(
    labelings: dict[str, np.ndarray], y: np.ndarray, seed: int = 0, shuffles: int = 5
) -> tuple[float, str | None, float]:
    """(best union F1 over the views, which view, chance the same way): a person reads every view.

    Chance is the best over the views of each view's union F1 against the *same* shuffled target,
    averaged over `shuffles`: taking the best of several clusterings lifts chance too, and the
    lift over chance is only honest when both sides take the best."""
    y = np.asarray(y, dtype=bool)
    if not labelings:
        return 0.0, None, 0.0
    prepared = {name: _codes(labels) for name, labels in labelings.items()}
    positives = int(y.sum())

    def union(name: str, target: np.ndarray) -> float:
        codes, ids = prepared[name]
        return _best_union(*_contingency(codes, ids.size, target), positives)[0]

    scores = {name: union(name, y) for name in prepared}
    best = max(scores, key=scores.get)
    rng = np.random.default_rng(seed)
    chance = [max(union(name, t) for name in prepared) for t in (rng.permutation(y) for _ in range(max(1, shuffles)))]
    return float(scores[best]), best, float(np.mean(chance))


def evaluate_views(
    index: np.ndarray,
    labelings: dict[str, np.ndarray],
    csv_path: Path | str,
    seed: int = 0,
    *,
    shuffles: int = 5,
    min_positives: int = 5,
) -> dict:
    """Per attribute: each view's union F1 and chance, and the best view's against best-of-views chance.

    `labelings`: view name -> labels in `index` order (-1: no label in that view, left out like noise).
    The summary `lift` is the mean over attributes of (best-of-views union F1 - its chance)."""
    index = _as_index(index)
    attrs = read_attrs(csv_path, index)
    targets = binary_targets(attrs)
    rows, skipped = [], []
    for name, y in targets.items():
        positives = int(y.sum())
        if min(positives, y.size - positives) < min_positives:
            skipped.append({"target": name, "positives": positives})
            continue
        shuffle_seed = zlib.crc32(f"{seed}:{name}".encode())
        per_view = {}
        for view, labels in labelings.items():
            f1, union = best_union(labels, y)
            per_view[view] = {
                "f1_union": f1,
                "f1_union_chance": chance_f1(labels, y, seed=shuffle_seed, shuffles=shuffles)[1],
                "union": union,
            }
        f1, best, chance = best_of_views(labelings, y, seed=shuffle_seed, shuffles=shuffles)
        rows.append(
            {"target": name, "positives": positives, "views": per_view, "best": best, "f1": f1, "f1_chance": chance}
        )

    def lift(view: str | None) -> float | None:
        if not rows:
            return None
        if view is None:
            return float(np.mean([r["f1"] - r["f1_chance"] for r in rows]))
        return float(np.mean([r["views"][view]["f1_union"] - r["views"][view]["f1_union_chance"] for r in rows]))

    return {
        "views": list(labelings),
        "targets": rows,
        "skipped": skipped,
        "lift": {**{v: lift(v) for v in labelings}, "best_of_views": lift(None)},
        "agreement": {v: _agreement(labels, attrs["identity"]) for v, labels in labelings.items()},
    }


def format_views(result: dict) -> str:
    """One screen: per attribute each view's union F1 (chance) and the best view against best-of-views chance."""
    views = result["views"]
    head = f"{'target':<16} " + " ".join(f"{v:>13}" for v in views) + f"  {'best view (chance)':>24}"
    lines = ["union F1 (chance) per view; best: the best view, chance = best of views on shuffled targets", head]
    for r in result["targets"]:
        cells = " ".join(f"{r['views'][v]['f1_union']:5.2f} ({r['views'][v]['f1_union_chance']:4.2f})" for v in views)
        lines.append(f"{r['target']:<16} {cells}  {r['best']:>8} {r['f1']:5.2f} ({r['f1_chance']:4.2f})")
    lift = result["lift"]
    if lift["best_of_views"] is not None:
        lines.append(
            "mean F1 - chance: "
            + ", ".join(f"{v} {lift[v]:+.3f}" for v in views)
            + f", best of views {lift['best_of_views']:+.3f}"
        )
    lines.append("NMI vs identity: " + ", ".join(f"{v} {a['nmi']:.3f}" for v, a in result["agreement"].items()))
    return "\n".join(lines)
