"""The report's reading of the run folder: everything the page shows, loaded once into a dict.

Only the cluster stage's files are required; the rest (labels, distribution, evaluation, sweep,
a second labelling to compare) are read when present. Text from data is made printable here and
escaped where it is written (`report`).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import h5py
import numpy as np

from .. import config
from ..engine import labelling, nets, records, remote, sources, store
from ..engine.merged import default_names, load_facet_names, load_merged, load_names, views_of
from ..engine.rundir import RunDir
from ..engine.stream import open_list
from ..errors import UserError

log = logging.getLogger(__name__)


def read_lines(list_path: Path, wanted: np.ndarray) -> dict[int, str]:
    """The list's lines at `wanted` (0-based), streamed: a 17 M-line list costs only the kept lines."""
    want = set(int(i) for i in wanted)
    got: dict[int, str] = {}
    if not want:
        return got
    last = max(want)
    with open_list(list_path) as f:
        for i, line in enumerate(f):
            if i in want:
                got[i] = store.printable(line.rstrip("\r\n"))
            if i >= last:
                break
    return got


def load_run(cfg: dict) -> dict:
    """Everything the page shows, from the run folder; only the cluster stage's files are required."""
    run_dir = RunDir(cfg["extract"]["out"])
    out = run_dir.root
    clusters = run_dir.require("clusters", "cluster")
    run: dict = {
        "out": out,
        "metrics": run_dir.read_json("metrics", "cluster", required=True),
        "timings": run_dir.read_json("timings", "any stage") or {},
        "evaluation": run_dir.read_json("evaluation", "evaluate"),
        "sweep": run_dir.read_json("sweep_json", "sweep"),
        "scale": run_dir.read_json("scale", "bench/scale.py"),
    }
    with store.open_h5(clusters) as f:
        run["tsne"], run["index"], run["label"] = f["tsne"][:], f["index"][:], f["label"][:]
    ids = sorted(int(k) for k in np.unique(run["label"][run["label"] >= 0]))
    run["names"] = _names(run_dir, ids)
    src = next((run_dir.path(n) for n in ("full", "subset") if run_dir.path(n).is_file()), None)
    run["source"] = (
        {
            "file": str(src),
            **store.read_attrs(src),
            "rows": store.count_rows(src),
            "bytes": src.stat().st_size,
            "failures": len(store.read_failures(src)),
        }
        if src
        else {}
    )
    run["predicted"] = _predicted(out, run["index"])
    run["list"], run["root"], run["format"] = _where(cfg["data"], run["source"], run_dir)
    run["images"] = _images(run["format"], run["root"], cfg["data"])
    labels = run_dir.path("labels")
    current = _current_model(run_dir, ids, _views_on_map(clusters))
    run["labels"] = _own_labelling(cfg, run, labels, current)
    run["compare"] = _second_labelling(cfg.get("report") or {}, run.get("labels"), labels, current)
    run["distribution"] = _distribution(out, current.ids) if run.get("labels") else None
    run["facets"] = _facets(run_dir, run)
    run["identity"] = identity_flags(run["metrics"])
    run["views"] = load_views(run_dir, run)
    return run


@dataclass(frozen=True)
class Current:
    """The run's merged model as far as it vouches for a labelling: its sha256, its clusters, each further view's."""

    sha: str | None
    ids: list[int]
    views: dict[str, list[int]]
    why: str  # why it cannot vouch for a labelling; "" when it can


def _views_on_map(clusters: Path) -> dict[str, list[int]]:
    """Each further view's cluster ids in clusters.h5 (`views/V/label`): {} for a run of one view."""
    with store.open_h5(clusters) as f:
        group = f["views"] if isinstance(f.get("views"), h5py.Group) else {}
        return {
            k: sorted(int(c) for c in np.unique(g["label"][:]) if c >= 0)
            for k, g in group.items()
            if k != CENTER and isinstance(g, h5py.Group) and isinstance(g.get("label"), h5py.Dataset)
        }


def _current_model(run_dir: RunDir, ids: list[int], on_map: dict[str, list[int]]) -> Current:
    """The run's merged model (`Current`): the run's current one only while it grafts the current classifier.onnx.

    A view's clusters are the model's where it carries the view, else the clustering's (`on_map`).
    """
    merged, clf = run_dir.path("merged"), run_dir.path("classifier")
    if not merged.is_file():
        return Current(None, ids, {}, f"there is no merged model ({merged}) to check it against")
    try:
        _, meta = load_merged(merged)
    except UserError as e:
        return Current(None, ids, {}, f"the merged model cannot be read ({e})")
    if clf.is_file() and nets.sha256_file(clf) != meta.get("classifier_sha256"):
        why = f"{merged} grafts an older classifier than {clf}: run `introspect merge` and `label` again"
        return Current(None, ids, {}, why)
    views = on_map | {v["name"]: [c["id"] for c in v["clusters"]] for v in views_of(meta)[1:]}
    return Current(nets.sha256_file(merged), [c["id"] for c in meta["clusters"]], views, "")


def _own_labelling(cfg: dict, run: dict, path: Path, current: Current) -> dict | None:
    """labels.h5 as the page uses it, or None (one warning line) when the run's current merged model did not make it.

    Counts from another model's labelling would sit beside this clustering's names and shares.
    Checked (`labelling.read`): its labels, and each view's `label_V`, are the model's clusters.
    """
    if not path.exists():
        return None
    why = current.why
    got = labelling.read(path, None, "labels.h5")
    if not why and not labelling.made_with(got, current.sha):
        why = "it was labelled with another merged model than this run's: run `introspect label` again"
    if why:
        log.warning("report: leaving out %s (no labelled counts): %s", path, why)
        return None
    labelling.check_ids(got, current.ids, current.views)
    r = cfg.get("report") or {}
    made = got.attrs  # the galleries show the images of the list that was labelled
    own = {"index": got.index, "label": got.label, "failures": got.failures, "views": got.views}
    if got.map is not None:
        own["map"] = _map_sample(got.map, int(r.get("hover_max", 100_000)), int(r.get("seed", 0)))
    own["list"] = records.best(made, "list_path") or run["list"]
    own["root"] = records.best(made, "data_root") or run["root"]
    fmt = made.get("format") or run["format"]
    same = (fmt, own["root"]) == (run["format"], run["root"])
    own["images"] = run["images"] if same else _images(fmt, own["root"], cfg["data"])
    return own


def _facets(run_dir: RunDir, run: dict) -> list[dict]:
    """The clustering's facets ({id, name, clusters}), named from the names file, with which images each holds.

    `rows` are positions in the labelling when there is one (else on the map, as the galleries):
    the images whose facet probability is >= 0.5 (as label's lists) when labels.h5 has facets, else
    those labelled with one of the facet's clusters; `of` says which.
    """
    facets = run["metrics"].get("facets") or []
    if not isinstance(facets, list):
        return []
    facets = [
        {"id": int(f["id"]), "clusters": [int(k) for k in f["clusters"] if int(k) in run["names"]]}
        for f in facets
        if isinstance(f, dict) and isinstance(f.get("id"), int) and isinstance(f.get("clusters"), list)
    ]
    if not facets:
        return []
    names = load_facet_names(run_dir.path("names"), [f["id"] for f in facets], run["names"])
    stored = None
    labels = run_dir.path("labels")
    if run.get("labels") and labels.is_file():
        with store.open_h5(labels) as f:
            if "facets" in f and f["facets"].shape[1:] == (len(facets),):
                d = f["facets"]
                stored = np.concatenate(
                    [d[lo : lo + (1 << 16)] >= 0.5 for lo in range(0, len(d), 1 << 16)]
                    or [np.zeros((0, len(facets)), bool)]
                )
    label = run["labels"]["label"] if run.get("labels") else run["label"]
    for j, f in enumerate(facets):
        f["name"] = names[f["id"]]
        if stored is not None:
            f["rows"], f["of"] = np.flatnonzero(stored[:, j]), "facet probability >= 0.5"
        else:
            f["rows"] = np.flatnonzero(np.isin(label, f["clusters"]))
            f["of"] = "labelled in its clusters" if run.get("labels") else "map points in its clusters"
        f["total"] = len(label)
    return facets


def identity_flags(metrics: dict) -> dict[int, dict]:
    """Clusters the clustering flagged as mostly one or a few people: {cluster id: its identity row}.

    A row is what the cluster stage measured (`same_person_pairs`, and `people`, `largest_share`
    where it counted people); the page shows whichever it has."""
    rows = metrics.get("identity") or []
    return {
        int(r["cluster"]): r
        for r in rows
        if isinstance(r, dict) and r.get("flagged") is True and isinstance(r.get("cluster"), int)
    }


def _where(data: dict, src: dict, run_dir: RunDir) -> tuple[Path, Path | str, str]:
    """The run's list, root and format: the configuration's where it says (a flag, or the run's records that
    `remembered` made the defaults), else what the run's file recorded (a stage called without the CLI)."""
    d = config.DEFAULTS["data"]
    if data["list"] != d["list"]:
        lst = _list(data, run_dir)
    else:
        lst = records.best(src, "list_path") or _list(data, run_dir)
    given = remote.as_root(data["root"])
    root = given if data["root"] != d["root"] else records.best(src, "data_root") or given
    fmt = data["format"] if data["format"] != d["format"] else src.get("format") or data["format"]
    return lst, root, fmt


def _list(data: dict, run_dir: RunDir) -> Path:
    try:
        return sources.resolve_list(data, run_dir)
    except UserError:
        return Path(data["list"])


class _Unreadable:
    """Where the images cannot be opened here (another machine's mount): the report goes on without them."""

    def __init__(self, why: str) -> None:
        self.why = why

    def read(self, line: str, max_bytes: int) -> tuple[None, str]:
        return None, self.why


def _images(fmt: str, root: Path | str, data: dict) -> sources.Source:
    """The images' source for thumbnails (a URL root read with [data]'s storage options)."""
    try:
        return sources.open_source(fmt, root, remote.Storage.from_config(data))
    except ValueError as e:
        log.warning("report: no thumbnails: %s", e)
        return _Unreadable(str(e))


def _names(run_dir: RunDir, ids: list[int]) -> dict[int, str]:
    """The user's names file (edit, then `make report`), else the merged model's names, else the defaults."""
    if run_dir.path("names").is_file():
        return load_names(run_dir.path("names"), ids, create=False)
    if run_dir.path("merged").is_file():
        _, meta = load_merged(run_dir.path("merged"))
        names = {c["id"]: c["name"] for c in meta["clusters"]}
        if set(ids) <= set(names):
            return {k: names[k] for k in ids}
    return default_names(ids)


def _predicted(out: Path, index: np.ndarray) -> np.ndarray | None:
    """The classifier's cluster for each map point (from subset.h5's activations), for the side-by-side view."""
    from ..engine import runtime

    run_dir = RunDir(out)
    subset, clf = run_dir.path("subset"), run_dir.path("classifier")
    if not subset.is_file() or not clf.is_file():
        return None

    X = store.rows_at(subset, index)
    if X is None:
        return None
    sess = runtime.session(nets.load(clf, "classifier", "run `make cluster` again"), "cpu")
    return sess.run(None, {sess.get_inputs()[0].name: X})[0].ravel().astype(np.int64)


def _distribution(out: Path, ids: list[int] | None = None) -> list[dict] | None:
    """label's per-cluster distribution, typed: from `distribution.json`, else from the CSV (older runs).

    With `ids` (the model's clusters), one that names other clusters is left out (a warning): it
    came from another model's labelling.
    """
    run_dir = RunDir(out)
    if run_dir.path("distribution_json").is_file():
        rows = run_dir.read_json_rows("distribution_json", "label")
    elif run_dir.path("distribution").is_file():
        with open(store.regular_file(run_dir.path("distribution"), "distribution.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        return None
    try:
        typed = [_distribution_row(r) for r in rows]
    except (KeyError, TypeError, ValueError):
        log.warning("report: leaving out %s: not the table `introspect label` writes", run_dir.path("distribution"))
        return None
    stray = sorted({d["cluster"] for d in typed} - set(ids or []) - {-1})
    if ids is not None and stray:
        log.warning("report: leaving out the distribution: it has clusters %s this model does not have", stray[:8])
        return None
    return typed


def _share(v: object) -> float | None:
    return None if v is None or v == "" else float(v)


def _distribution_row(r: dict) -> dict:
    """One row with its types whichever file it came from: the CSV has `""` for None and `"True"`/`"False"`."""
    return {
        "cluster": int(r["cluster"]),
        "name": str(r.get("name", "")),
        "subset_share": _share(r.get("subset_share")),
        "labelled_share": _share(r.get("labelled_share")),
        "difference": _share(r.get("difference")),
        "ratio": _share(r.get("ratio")),
        "images": int(r.get("images") or 0),
        "flagged": r.get("flagged") in (True, "True"),
    }


def _second_labelling(r: dict, first: dict | None, first_path: Path, current: Current) -> dict | None:
    """`report.compare`: another labelling made with this run's merged model (new data, say), to draw over the first.

    Checked like labels.h5 (`labelling.read`); refused in one line when it was made with another
    model: its clusters would not be these.
    """
    path = Path(r.get("compare") or "")
    if not str(r.get("compare") or ""):
        return None
    if first is None:
        raise UserError(
            f"report.compare = {path}: this run has no labels.h5 made with its merged model to compare with; "
            "run `introspect label`"
        )
    theirs = labelling.read(path, None, "report.compare")
    if not labelling.made_with(theirs, current.sha):
        raise UserError(
            f"{path} was labelled with another merged model than {first_path}; label the new data with this run's"
        )
    labelling.check_ids(theirs, current.ids, current.views)
    placed, unplaced = None, ""
    if theirs.map is not None:
        placed = _map_sample(theirs.map, int(r.get("hover_max", 100_000)), int(r.get("seed", 0)))
    else:
        unplaced = _unplaced(path, theirs.attrs)
        log.warning("report: %s", unplaced)
    second = {"path": path, "label": theirs.label, "map": placed, "list": theirs.attrs.get("list_path", "?")}
    return second | {"unplaced": unplaced}


def _unplaced(path: Path, attrs: dict) -> str:
    """One line: the compared labelling has no map positions, why (label records it), and what to do."""
    why = str(attrs.get("unplaced") or "") or "it was labelled where the run's clusters.h5 could not be found"
    return (
        f"{path} has no map positions, so its images are not drawn on the map ({why}); "
        "label it again with this run's merged model while the run's clusters.h5 is in place"
    )


def _map_sample(ds, most: int, seed: int) -> np.ndarray:
    """A seeded sample of at most `most` labelled images' map positions (rows that could not be placed left out)."""
    Y = ds[:]
    Y = Y[np.isfinite(Y).all(axis=1)]
    if len(Y) > most:
        Y = Y[np.sort(np.random.default_rng(seed).choice(len(Y), most, replace=False))]
    return Y


# --------------------------------------------------------------------------- views


#: The view whose clusters are the top-level ones (clusters.h5 `label`, labels.h5 `label`, the names file's `[names]`).
CENTER = "center"


def load_views(run_dir: RunDir, run: dict) -> list[dict]:
    """metrics.json's `views` (center first), each with its clusters on the map and, when labelled, in the labelling.

    [] for a run of one view or none (older runs, the reference pipeline): the page is then as it
    was. A view is {"name", "summary" (its metrics.json entry), "skipped" (None or why)}, and when
    fitted also "label" (per map point, -1 none), "names", "identity" (flagged rows) and
    "labelled" (labels.h5 `label_<name>`, or None when the labelling has no such column).
    """
    listed = [v for v in run["metrics"].get("views") or [] if isinstance(v, dict) and isinstance(v.get("name"), str)]
    if len(listed) < 2 or not any(v["name"] == CENTER for v in listed):
        return []
    n = len(run["label"])
    with store.open_h5(run_dir.path("clusters")) as f:
        group = f["views"] if isinstance(f.get("views"), h5py.Group) else {}
        on_map = {k: g["label"][:] for k, g in group.items() if isinstance(g, h5py.Group) and "label" in g}
    own = run.get("labels")
    labelled: dict[str, np.ndarray] = (own or {}).get("views") or {}  # each checked against its view's clusters
    views = []
    for v in listed:
        name = v["name"]
        view = {"name": name, "summary": v, "skipped": None if v.get("skipped") is None else str(v["skipped"])}
        label = run["label"] if name == CENTER else on_map.get(name)
        if view["skipped"] is None and (label is None or label.shape != (n,)):
            view["skipped"] = f"clusters.h5 has no views/{name}/label for the map's {n} points"
        if view["skipped"] is None:
            ids = sorted(int(k) for k in np.unique(label[label >= 0]))
            view["label"] = label.astype(np.int64)
            view["names"] = run["names"] if name == CENTER else _view_names(run_dir, name, ids)
            view["identity"] = run["identity"] if name == CENTER else identity_flags(v)
            view["labelled"] = own["label"] if name == CENTER and own else labelled.get(name)
        views.append(view)
    return views


def _view_names(run_dir: RunDir, view: str, ids: list[int]) -> dict[int, str]:
    """A further view's cluster names: the names file's `[views.<view>.clusters]`, else the merged model's, else
    `<view>-<id>`. Read leniently: the page shows what there is; label and merge check the file."""
    names: dict[int, str] = {}
    path = run_dir.path("names")
    if path.is_file():
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            doc = {}
        table = _table_at(doc, "views", view, "clusters")
        names.update({int(k): v for k, v in table.items() if k.isdigit() and isinstance(v, str) and v.strip()})
    if set(ids) - set(names) and run_dir.path("merged").is_file():
        try:
            _, meta = load_merged(run_dir.path("merged"))
        except UserError:
            meta = {}
        listed = meta.get("views") if isinstance(meta.get("views"), list) else []
        for entry in listed:
            if isinstance(entry, dict) and entry.get("name") == view:
                for c in entry.get("clusters") or []:
                    if isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str):
                        names.setdefault(c["id"], c["name"])
    return {k: names.get(k) or f"{view}-{k:02d}" for k in ids}


def _table_at(doc: dict, *keys: str) -> dict:
    """doc[k1][k2]... when every step is a table, else {}."""
    for key in keys:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc if isinstance(doc, dict) else {}
