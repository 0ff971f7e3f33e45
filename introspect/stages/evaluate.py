"""The evaluate stage: score the clusters (or every sweep setting) against the planted attributes.

Only for synthetic data, whose ground truth lies beside the list (`x.attrs.csv`); the pipeline
itself never reads it. The measures are `science.planted`'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..engine import store
from ..engine.rundir import RunDir, write_bytes
from ..errors import UserError
from ..science.planted import evaluate, format_table
from ..science.planted_views import evaluate_views, format_views
from ..synth import attrs_path


@dataclass(frozen=True)
class EvaluateResult:
    record: dict  # what evaluation.json holds
    path: Path

    def text(self) -> str:
        views = f"\n{format_views(self.record['views'])}" if self.record.get("views") else ""
        return f"{format_table(self.record)}{views}\n  -> {self.path}"


def run(cfg: dict, attrs_csv: Path | str | None = None) -> EvaluateResult:
    """Score `<out>/clusters.h5` against the ground truth beside the list; writes `<out>/evaluation.json`."""
    run_dir = RunDir(cfg["extract"]["out"])
    csv_path = Path(attrs_csv) if attrs_csv else attrs_path(Path(cfg["data"]["list"]))
    with run_dir.stage("evaluate"):
        clusters = run_dir.require("clusters", "cluster")
        with store.open_h5(clusters) as f:
            index, labels = f["index"][:], f["label"][:]
            labelings = {name: g["label"][:] for name, g in f["views"].items()} if "views" in f else {}
        X = None
        subset = run_dir.path("subset")
        if subset.is_file():
            X = store.rows_at(subset, index)
            if X is None:
                raise UserError(
                    f"{clusters} does not match {subset} (extracted again since?); run `make cluster` again"
                )
        metrics = run_dir.read_json("metrics", "cluster") or {}
        facets = [f["clusters"] for f in metrics.get("facets") or []]
        result = evaluate(index, labels, X, csv_path, facets=facets)
        if len(labelings) > 1:  # every view, and the best view per attribute against best-of-views chance
            order = [v["name"] for v in metrics.get("views") or [] if v["name"] in labelings]
            result["views"] = evaluate_views(index, {v: labelings[v] for v in order or labelings}, csv_path)
        result["attrs"] = str(csv_path)
        write_bytes(run_dir.path("evaluation"), json.dumps(result, indent=1).encode())
    return EvaluateResult(result, run_dir.path("evaluation"))


#: The targets `sweep_table` shows, one per planted attribute.
SWEEP_TARGETS = ("glasses", "pose", "blur", "dark", "mask=medical", "gray")


def run_sweep(cfg: dict, attrs_csv: Path | str | None = None) -> list[dict]:
    """Score every row of `<out>/sweep` against the planted attributes: how good was the rule's choice?"""
    run_dir = RunDir(cfg["extract"]["out"])
    sweep = run_dir.read_json("sweep_json", "sweep", required=True)
    maps = run_dir.require("maps", "sweep")
    csv_path = Path(attrs_csv) if attrs_csv else attrs_path(Path(cfg["data"]["list"]))
    rec = sweep.get("recommended") or {}
    scored = []
    with store.open_h5(maps) as f:
        index = f["index"][:]
        for i, row in enumerate(sweep["rows"]):
            if f"labels/{i}" not in f:
                continue
            r = evaluate(index, f[f"labels/{i}"][:], None, csv_path, shuffles=1)
            by = {t["target"]: t["f1_union"] for t in r["targets"]}
            scored.append(
                {
                    **{k: row[k] for k in ("perplexity", "eps", "min_samples", "clusters")},
                    "recommended": all(row[k] == rec.get(k) for k in ("perplexity", "eps", "min_samples")),
                    "nmi": r["agreement"]["combination"]["nmi"],
                    "f1_union": {t: by.get(t) for t in SWEEP_TARGETS},
                }
            )
    return scored


def format_sweep(scored: list[dict]) -> str:
    head = f"  {'perplexity':>10} {'eps':>5} {'min_s':>5} {'clusters':>8}  {'NMI':>5}  " + " ".join(
        f"{t[:7]:>7}" for t in SWEEP_TARGETS
    )
    lines = ["every sweep setting against the planted attributes (F1 of the best union of clusters):", head]
    for r in scored:
        f1 = " ".join("      -" if v is None else f"{v:7.2f}" for v in r["f1_union"].values())
        mark = "*" if r["recommended"] else " "
        lines.append(
            f"{mark} {r['perplexity']:>10g} {r['eps']:>5g} {r['min_samples']:>5} {r['clusters']:>8}  "
            f"{r['nmi']:5.3f}  {f1}"
        )
    lines.append("* the sweep's choice (made without these labels)")
    return "\n".join(lines)
