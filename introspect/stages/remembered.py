"""The run folder remembers: what extract recorded is every later stage's default.

`introspect extract --model nets/face.onnx --list photos.txt --root photos --out run ...` writes
into full.h5 / subset.h5 which net (path and sha256), layer, embedding, preprocessing, pooling,
list, root and format made the rows. Every later stage (`cluster --out run`, `merge --out run`,
`report --out run`...) starts from those instead of the built-in defaults, so nothing is restated:

    config.DEFAULTS  <  the run's records  <  pipeline file, --set, flags

A key the user set that contradicts the records (another net by sha256, another layer,
embedding, pooling or preprocessing; for report and evaluate, whose rows are lines of the run's
list, another list or format) is refused in one line unless `--force`. Keys equal to the records
are fine. `label` into a folder with no run (new data) takes the records from the merged model's
metadata (and from the run folder beside it, when that is the run it was merged from).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..engine import nets, records, store, stream
from ..engine.rundir import RunDir
from ..errors import UserError

#: The stages that read a run folder extract made.
STAGES = ("cluster", "sweep", "evaluate", "merge", "label", "report", "join")
#: Stages that load the net itself: its recorded file must be there (and be the same net).
NEEDS_NET = ("cluster", "merge")
#: Stages whose rows are lines of the run's list: another list would put other images on them.
LIST_IS_THE_RUNS = ("report", "evaluate")
#: Keys whose "auto" asks for whatever the net gives: the record is that answer, never a contradiction.
AUTO = ("model.layer", "model.embedding")


@dataclass(frozen=True)
class Records:
    """What a run recorded: `values` are config keys ('section.key'), the rest what is checked by content."""

    source: str  # where they were read, for messages
    values: dict = field(default_factory=dict)
    net_sha: str | None = None
    net_paths: list[Path] = field(default_factory=list)
    list_sha: str | None = None
    list_path: Path | None = None
    root: Path | None = None

    @classmethod
    def from_attrs(cls, source: Path, a: dict) -> Records:
        """From full.h5 / subset.h5 attributes (what `extract.identity` and its provenance write)."""
        values = {"model.layer": a.get("layer"), "model.embedding": a.get("embedding")}
        values["model.pool"] = _json(a.get("pool"))
        values["data.format"] = a.get("format", "files") if "list_sha256" in a else None
        for k, v in (_json(a.get("preprocess")) or {}).items():
            values[f"preprocess.{k}"] = v
        return cls(
            str(source),
            {k: v for k, v in values.items() if v is not None},
            a.get("model_sha256"),
            records.candidates(a, "model_path"),
            a.get("list_sha256"),
            records.best(a, "list_path"),
            records.best(a, "data_root"),
        )


def _json(text: object) -> object:
    try:
        return json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None


def read(out: Path | str) -> Records | None:
    """The records of the run in `out` (subset.h5, else full.h5); None when extract has not written there."""
    run_dir = RunDir(out)
    for name in ("subset", "full"):
        path = run_dir.path(name)
        if path.is_file():
            return Records.from_attrs(path, store.read_attrs(path))
    return None


def of_merged(path: Path) -> Records:
    """A merged model's records (net sha256, layer, embedding, preprocessing), for labelling into a new folder.

    The run it was merged from, when it still lies beside it, adds the net's path, the root and the format.
    """
    from ..engine.merged import load_merged

    _, meta = load_merged(path)
    values = {"model.layer": meta["layer"], "model.embedding": meta.get("embedding")}
    values |= {f"preprocess.{k}": v for k, v in meta["preprocess"].items()}
    beside = read(path.parent)
    if beside is None or beside.net_sha != meta["net_sha256"]:
        return Records(f"merged model {path}", {k: v for k, v in values.items() if v is not None}, meta["net_sha256"])
    if "data.format" in beside.values:
        values["data.format"] = beside.values["data.format"]
    values = {k: v for k, v in values.items() if v is not None}
    return Records(f"merged model {path}", values, beside.net_sha, beside.net_paths, root=beside.root)


def apply(cfg: dict, explicit: set[str], stage: str, force: bool = False) -> dict:
    """`cfg` with the run's records as the defaults of `stage`; a contradiction is refused unless `force`."""
    if stage not in STAGES:
        return cfg
    out = cfg["extract"]["out"]
    rec, new = read(out), False
    if rec is None and stage == "label" and cfg["label"]["model"]:
        rec, new = of_merged(Path(cfg["label"]["model"])), True
    if rec is None:
        return cfg  # nothing recorded: the stage says what is missing
    explicit = {k for k in explicit if not (k in AUTO and _get(cfg, k) == "auto")}
    if not force:
        _refuse_contradictions(cfg, explicit, rec, stage)
    for key, value in rec.values.items():
        if key not in explicit and _has(cfg, key):
            _put(cfg, key, value)
    if "model.path" not in explicit and (stage in NEEDS_NET or rec.net_paths):
        cfg["model"]["path"] = str(locate_net(rec) if stage in NEEDS_NET else rec.net_paths[0])
    if "data.root" not in explicit and rec.root is not None:
        cfg["data"]["root"] = str(rec.root)
    if "data.list" not in explicit:
        if new:
            raise UserError(
                f"{out} holds no run yet: give --list (and --root) of the images to label with {cfg['label']['model']}"
            )
        if rec.list_path is not None:
            cfg["data"]["list"] = str(rec.list_path)
    return cfg


def locate_net(rec: Records) -> Path:
    """The run's net: the recorded file whose sha256 is the recorded one, or one line saying it moved."""
    for p in rec.net_paths:
        if p.is_file() and (rec.net_sha is None or nets.sha256_file(p) == rec.net_sha):
            return p
    if not rec.net_paths:
        raise UserError(f"{rec.source} does not record where its net is; pass --model PATH (the net it was made with)")
    where = rec.net_paths[0]
    what = "is not the same file any more (another sha256)" if where.is_file() else "does not exist any more"
    raise UserError(
        f"the net this run was extracted with ({where}) {what}; pass --model PATH to point at it "
        f"(sha256 {str(rec.net_sha)[:12]}...)"
    )


def _refuse_contradictions(cfg: dict, explicit: set[str], rec: Records, stage: str) -> None:
    """One line for the first key set explicitly to something else than the run recorded."""
    tail = "drop it (the run's own is the default) or pass --force if you mean it"
    if "model.path" in explicit and stage in NEEDS_NET and rec.net_sha:
        p = Path(cfg["model"]["path"])
        if p.is_file() and (sha := nets.sha256_file(p)) != rec.net_sha:
            raise UserError(
                f"{rec.source} was made with another model sha256 ({rec.net_sha[:12]}...) than model.path {p} "
                f"({sha[:12]}...); {tail}"
            )
    for key, recorded in rec.values.items():
        if key.startswith("data.") and (stage not in LIST_IS_THE_RUNS or key != "data.format"):
            continue
        if key in explicit and _has(cfg, key) and not _same(_get(cfg, key), recorded):
            if key == "model.layer" and str(_get(cfg, key)).startswith("node:"):
                continue  # a node index: merge compares the tensor it names with the record
            raise UserError(f"{key} = {_get(cfg, key)!r} but {rec.source} was made with {recorded!r}; {tail}")
    if "data.list" in explicit and stage in LIST_IS_THE_RUNS and rec.list_sha and cfg["data"]["list"]:
        p = Path(cfg["data"]["list"])
        if p.is_file() and stream.scan_list(p).sha256 != rec.list_sha:
            raise UserError(
                f"data.list {p} is another list than {rec.source}'s rows are lines of ({rec.list_path}); {tail}"
            )


def _same(a: object, b: object) -> bool:
    """Config value vs recorded value: numbers by value (a TOML 0 is a recorded 0.0), lists item by item."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b and type(a) is type(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def _has(cfg: dict, key: str) -> bool:
    section, _, k = key.partition(".")
    return k in cfg.get(section, {})


def _get(cfg: dict, key: str) -> object:
    section, _, k = key.partition(".")
    return cfg[section][k]


def _put(cfg: dict, key: str, value: object) -> None:
    section, _, k = key.partition(".")
    default = cfg[section][k]
    cfg[section][k] = float(value) if isinstance(default, float) and isinstance(value, int) else value
