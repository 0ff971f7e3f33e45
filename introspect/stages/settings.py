"""The stages' own settings as checked values, and `check`: every key of a pipeline, before any work.

Each stage turns its section of the pipeline config into a frozen object here (or in the
engine and science modules it drives: `StreamSettings`, `Preprocess`, `TSNEParams`,
`ClusterSettings`), so a mistake costs one line at the start, never an hour into t-SNE.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..engine import store
from ..engine.align import DetectorSettings
from ..engine.extractor import check_pool
from ..engine.images import Preprocess
from ..engine.normcheck import check_mode
from ..engine.remote import Storage, check_root, is_url
from ..engine.stream import Inputs, StreamSettings
from ..errors import UserError, refuse_unless
from ..science.clustering import ClusterSettings
from ..science.tsne import TSNEParams


@dataclass(frozen=True)
class ClassifierSettings:
    """The pipeline's [classifier], checked before any t-SNE runs."""

    class_weight: str = "balanced"
    test_size: float = 0.2
    max_iter: int = 1000
    cv: int = 5
    seed: int = 0
    pca: int = 64
    cv_rows: int = 50_000

    def __post_init__(self) -> None:
        checks = [
            (self.cv_rows == 0 or self.cv_rows >= 100, f"cv_rows = {self.cv_rows}: 0 (every row) or >= 100"),
            (self.class_weight in ("balanced", "none"), f"class_weight = {self.class_weight!r}: balanced or none"),
            (self.pca >= 0, f"pca = {self.pca} must be at least 0 (0: the raw activations)"),
            (0 < self.test_size < 1, f"test_size = {self.test_size} must be in (0, 1)"),
            (self.max_iter >= 1, f"max_iter = {self.max_iter} must be at least 1"),
            (self.cv >= 2, f"cv = {self.cv} must be at least 2"),
            (0 <= self.seed < 2**32, f"seed = {self.seed} must be in 0 .. 2**32 - 1"),
        ]
        refuse_unless("classifier", checks)

    @classmethod
    def from_config(cls, k: dict) -> ClassifierSettings:
        return cls(
            k["class_weight"],
            float(k["test_size"]),
            int(k["max_iter"]),
            int(k["cv"]),
            int(k["seed"]),
            int(k["pca"]),
            int(k["cv_rows"]),
        )


@dataclass(frozen=True)
class LabelSettings:
    """The pipeline's [label], checked before any image is read."""

    model: str = ""
    all_scores: bool = False
    fast: bool = True
    drift: float = 1.5

    def __post_init__(self) -> None:
        if not self.drift >= 1:
            raise UserError(f"label.drift = {self.drift} must be at least 1 (a factor, e.g. 1.5)")

    @classmethod
    def from_config(cls, lab: dict) -> LabelSettings:
        return cls(str(lab["model"]), bool(lab["all_scores"]), bool(lab["fast"]), float(lab["drift"]))


def check_pca(t: dict) -> int:
    if isinstance(t["pca"], bool) or not isinstance(t["pca"], int) or t["pca"] < 0:
        raise UserError(f"tsne.pca = {t['pca']!r} must be a whole number >= 0 (0: no PCA before t-SNE)")
    return int(t["pca"])


@dataclass(frozen=True)
class AlignSettings:
    """The pipeline's [align], checked before any photo is read."""

    root: Path
    list: Path
    model: Path
    detector: DetectorSettings
    faces: str = "largest"
    quality: int = 95
    workers: int = 0

    @classmethod
    def from_config(cls, a: dict) -> AlignSettings:
        if a["faces"] not in ("largest", "all"):
            raise UserError(f"align.faces = {a['faces']!r}: largest or all")
        if not 1 <= a["quality"] <= 100:
            raise UserError(f"align.quality = {a['quality']} must be in 1 .. 100")
        if a["workers"] < 0:
            raise UserError(f"align.workers = {a['workers']} must be at least 0 (0: one per core)")
        det = DetectorSettings(
            float(a["score_threshold"]), float(a["nms_threshold"]), int(a["max_side"]), rotations=a["rotations"]
        )
        return cls(Path(a["root"]), Path(a["list"]), Path(a["model"]), det, a["faces"], a["quality"], a["workers"])

    @property
    def threads(self) -> int:
        return self.workers if self.workers > 0 else (os.cpu_count() or 2)


def check(cfg: dict) -> None:
    """Build every stage's settings from `cfg`, so a wrong key fails now, whichever stage runs."""
    StreamSettings.from_config(cfg["extract"])
    store.check_dtype(cfg["extract"]["dtype"])
    check_pool(cfg["model"]["pool"])
    Inputs.limits_from_config(cfg["data"])
    try:
        storage = Storage.from_config(cfg["data"])
        if is_url(cfg["data"]["root"]):
            check_root(cfg["data"]["root"], storage)
    except ValueError as e:
        raise UserError(str(e)) from None
    pre = cfg["preprocess"]
    for key in ("mean", "std"):
        if any(isinstance(v, float) and not math.isfinite(v) for v in pre[key]):
            raise UserError(f"preprocess.{key} = {pre[key]!r} must be finite numbers")
    Preprocess.from_config(pre)
    check_mode(pre["check"])
    TSNEParams.from_config(cfg["tsne"])
    check_pca(cfg["tsne"])
    ClusterSettings.from_config(cfg["cluster"])
    ClassifierSettings.from_config(cfg["classifier"])
    LabelSettings.from_config(cfg["label"])
    AlignSettings.from_config(cfg["align"])
    for key in ("sample",):
        if cfg["merge"][key] < 1:
            raise UserError(f"merge.{key} = {cfg['merge'][key]} must be at least 1")
    for key in ("gallery", "hover_max"):
        if cfg["report"][key] < 0:
            raise UserError(f"report.{key} = {cfg['report'][key]} must be at least 0")
