"""The report stage: one offline page that shows what the net learned.

Built from the run folder alone (`extract` ... `label` artifacts, each optional past the
cluster stage) into `<out>/report/`: `index.html` with figures and thumbnails beside it, no
CDN and no server. Sections: summary, PCA curve, the interactive t-SNE map (canvas; hover shows
the image and its path, a click jumps to the cluster), classifier vs clustering, distribution,
the sweep's contact sheet, the planted-attribute table when ground truth exists, the facets
(sets of clusters named once, each with its share and a gallery) when the clustering made
some, and one section per cluster with a gallery (marked when the cluster is mostly one or a
few people). The summary shows the share of images labelled unknown when the threshold is on.

Every text that comes from data (paths, names, reasons) is escaped: into HTML with
`html.escape`, into the page's JSON with `<`, `>` and `&` as `\\u003c`..., and the page's
script only ever writes it with `textContent`.

The page's template, style and script are package files beside this module
(`report_page.html`, `.css`, `.js`, filled in with `string.Template`); the style and script are
inlined, so the page stays one file.
"""

from __future__ import annotations

import csv
import functools
import html
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

import cv2
import numpy as np

from .. import synth
from ..engine import labelling, nets, sources, store
from ..engine.images import MAX_BYTES, decode
from ..engine.merged import UNKNOWN, default_names, load_facet_names, load_merged, load_names
from ..engine.rundir import RunDir, writing_dir
from ..engine.stream import open_list
from ..errors import UserError
from ..science import planted

log = logging.getLogger(__name__)

THUMB = 64  # px, gallery
HOVER = 48  # px, map hover thumbnails, packed in sprite sheets
SHEET = 32  # thumbnails per sheet side (32 x 32 = 1024 per sheet)
COLORS = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#9edae5",
]
NOISE_COLOR = "#c8c8c8"
#: The labelled images' sample under the subset's points on the map.
LABELLED_COLOR = "#e4e4e4"
SECOND_COLOR = "#111111"  # a second labelling (new data), drawn over the first


def color(k: int) -> str:
    return NOISE_COLOR if k < 0 else COLORS[k % len(COLORS)]


def esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def json_for_html(data: object) -> str:
    """JSON safe inside <script>: no `</script>`, no `<!--` can end or bend it."""
    return (
        json.dumps(data, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    )


# --------------------------------------------------------------------------- reading the run


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
            "failures": len(store.read_failures(src)),
        }
        if src
        else {}
    )
    run["predicted"] = _predicted(out, run["index"])
    run["list"] = Path(run["source"].get("list_path") or _list(cfg["data"], run_dir))
    run["root"] = Path(run["source"].get("data_root") or cfg["data"]["root"])
    run["format"] = run["source"].get("format") or cfg["data"]["format"]
    run["images"] = _images(run["format"], run["root"])
    labels = run_dir.path("labels")
    current = _current_model(run_dir, ids)
    run["labels"] = _own_labelling(cfg, run, labels, current)
    run["compare"] = _second_labelling(cfg.get("report") or {}, run.get("labels"), labels, current)
    run["distribution"] = _distribution(out, current[1]) if run.get("labels") else None
    run["facets"] = _facets(run_dir, run)
    run["identity"] = _identity(run["metrics"])
    return run


def _current_model(run_dir: RunDir, ids: list[int]) -> tuple[str | None, list[int], str]:
    """(sha256 of the run's merged model, its cluster ids, why it cannot vouch for a labelling: "" when it can).

    The merged model is the run's current one only while it grafts the current classifier.onnx.
    """
    merged, clf = run_dir.path("merged"), run_dir.path("classifier")
    if not merged.is_file():
        return None, ids, f"there is no merged model ({merged}) to check it against"
    try:
        _, meta = load_merged(merged)
    except UserError as e:
        return None, ids, f"the merged model cannot be read ({e})"
    if clf.is_file() and nets.sha256_file(clf) != meta.get("classifier_sha256"):
        return None, ids, f"{merged} grafts an older classifier than {clf}: run `introspect merge` and `label` again"
    return nets.sha256_file(merged), [c["id"] for c in meta["clusters"]], ""


def _own_labelling(cfg: dict, run: dict, path: Path, current: tuple) -> dict | None:
    """labels.h5 as the page uses it, or None (one warning line) when the run's current merged model did not make it.

    Counts from another model's labelling would sit beside this clustering's names and shares.
    """
    if not path.exists():
        return None
    sha, ids, why = current
    got = labelling.read(path, None, "labels.h5")
    if not why and not labelling.made_with(got, sha):
        why = "it was labelled with another merged model than this run's: run `introspect label` again"
    if not why:
        labelling.check_ids(got, ids)
    if why:
        log.warning("report: leaving out %s (no labelled counts): %s", path, why)
        return None
    r = cfg.get("report") or {}
    made = got.attrs  # the galleries show the images of the list that was labelled
    own = {"index": got.index, "label": got.label, "failures": got.failures}
    if got.map is not None:
        own["map"] = _map_sample(got.map, int(r.get("hover_max", 100_000)), int(r.get("seed", 0)))
    own["list"] = Path(made.get("list_path") or run["list"])
    own["root"] = Path(made.get("data_root") or run["root"])
    fmt = made.get("format") or run["format"]
    same = (fmt, own["root"]) == (run["format"], run["root"])
    own["images"] = run["images"] if same else _images(fmt, own["root"])
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


def _identity(metrics: dict) -> dict[int, float]:
    """Clusters the clustering flagged as mostly one or a few people: {cluster id: score}."""
    rows = metrics.get("identity") or []
    return {
        int(r["cluster"]): float(r.get("score") or 0.0)
        for r in rows
        if isinstance(r, dict) and r.get("flagged") is True and isinstance(r.get("cluster"), int)
    }


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


def _images(fmt: str, root: Path) -> sources.Source:
    try:
        return sources.open_source(fmt, root)
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


# --------------------------------------------------------------------------- images


def thumbnail(source: sources.Source, line: str, size: int) -> np.ndarray | None:
    data, _ = source.read(line, MAX_BYTES)
    return None if data is None else decode(data, (size, size))[0]


def thumbnails(source: sources.Source | Path, lines: list[str], size: int) -> list[np.ndarray | None]:
    """Decode and shrink on a thread pool (OpenCV releases the GIL): 100,000 hover images in a minute or two.

    Read through `source` (a folder: loose files under it)."""
    from concurrent.futures import ThreadPoolExecutor

    if isinstance(source, (str, Path)):
        source = sources.FileSource(source)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(lambda ln: thumbnail(source, ln, size) if ln else None, lines, chunksize=64))


def write_gallery(run: dict, folder: Path, per_cluster: int, seed: int) -> dict[int, list[dict]]:
    """Up to `per_cluster` images per cluster, drawn reproducibly from the labelling (else the subset)."""
    src = run.get("labels") or {
        "index": run["index"],
        "label": run["label"],
        "list": run["list"],
        "root": run["root"],
        "images": run["images"],
    }
    rng = np.random.default_rng(seed)
    picks = {}
    for k in run["names"]:
        rows = np.flatnonzero(src["label"] == k)
        picks[k] = (
            np.sort(src["index"][rng.choice(rows, min(per_cluster, len(rows)), replace=False)]) if len(rows) else []
        )
    for f in run.get("facets") or []:  # keyed ("facet", id); rows index the same source as the clusters'
        rows = f["rows"]
        picks[("facet", f["id"])] = (
            np.sort(src["index"][rng.choice(rows, min(per_cluster, len(rows)), replace=False)]) if len(rows) else []
        )
    wanted = np.concatenate([np.asarray(p, np.int64) for p in picks.values()] or [np.zeros(0, np.int64)])
    lines = read_lines(src["list"], wanted)
    folder.mkdir(parents=True, exist_ok=True)
    gallery: dict[int, list[dict]] = {}
    for k, idx in picks.items():
        gallery[k] = []
        texts = [lines.get(int(i), "") for i in idx]
        for i, line, img in zip(idx, texts, thumbnails(src["images"], texts, THUMB)):
            name = f"{int(i)}.jpg"
            if img is not None:
                cv2.imwrite(str(folder / name), img, [cv2.IMWRITE_JPEG_QUALITY, 85])
            gallery[k].append({"src": f"thumbs/{name}" if img is not None else None, "path": line, "index": int(i)})
    return gallery


def write_sprites(run: dict, folder: Path, limit: int, seed: int) -> np.ndarray:
    """Hover thumbnails for up to `limit` map points (a seeded sample beyond), in sheets; -1 = none."""
    n = len(run["index"])
    chosen = np.arange(n) if n <= limit else np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
    slot = np.full(n, -1, np.int64)
    slot[chosen] = np.arange(len(chosen))
    lines = read_lines(run["list"], run["index"][chosen])
    folder.mkdir(parents=True, exist_ok=True)
    per = SHEET * SHEET
    for sheet in range(math.ceil(len(chosen) / per)):
        part = chosen[sheet * per : (sheet + 1) * per]
        rows = math.ceil(len(part) / SHEET)
        canvas = np.full((rows * HOVER, SHEET * HOVER, 3), 255, np.uint8)
        texts = [lines.get(int(run["index"][p]), "") for p in part]
        for j, img in enumerate(thumbnails(run["images"], texts, HOVER)):
            if img is not None:
                r, c = divmod(j, SHEET)
                canvas[r * HOVER : (r + 1) * HOVER, c * HOVER : (c + 1) * HOVER] = img
        cv2.imwrite(str(folder / f"sheet{sheet}.jpg"), canvas, [cv2.IMWRITE_JPEG_QUALITY, 80])
    run["hover_lines"] = lines
    return slot


# --------------------------------------------------------------------------- figures


def _how(metrics: dict) -> str:
    """How the clusters were found, in a few words (runs from before the pca space say map)."""
    d = metrics.get("discovery") or {"space": "map", "method": metrics.get("cluster", {}).get("method", "?")}
    if d["space"] == "pca":
        rule = (
            ", k chosen by stability" + (" (at the grid's edge)" if d.get("boundary") else "") if d.get("rule") else ""
        )
        return f"{d['method']} in the whitened PCA space ({d.get('components', '?')} components){rule}"
    c = metrics.get("cluster", {})
    return f"{d['method']} on the map (eps {c.get('eps')}, min_samples {c.get('min_samples')})"


def figures(run: dict, folder: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = {}
    curve = np.asarray(run["metrics"]["pca"]["curve"])
    if len(curve):
        fig, ax = plt.subplots(figsize=(5, 3))
        cum = np.cumsum(curve)
        ax.plot(np.arange(1, len(cum) + 1), cum)
        ax.axhline(0.8, color="grey", lw=0.8, ls="--")
        k = run["metrics"]["pca"].get("components_for_80pct")
        if k:
            ax.axvline(k, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("principal components")
        ax.set_ylabel("explained variance (cumulative)")
        fig.tight_layout()
        fig.savefig(folder / "pca.png", dpi=90)
        plt.close(fig)
        made["pca"] = "pca.png"
    Y, lab, pred = run["tsne"], run["label"], run["predicted"]
    panels = [(f"clustering ({_how(run['metrics'])})", lab)] + (
        [("classifier on the activations", pred)] if pred is not None else []
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), squeeze=False)
    for ax, (title, c) in zip(axes[0], panels):
        noise = c < 0
        ax.scatter(Y[noise, 0], Y[noise, 1], s=1, c=NOISE_COLOR, rasterized=True)
        ax.scatter(Y[~noise, 0], Y[~noise, 1], s=1, c=[color(int(k)) for k in c[~noise]], rasterized=True)
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(folder / "compare.png", dpi=80)
    plt.close(fig)
    made["compare"] = "compare.png"
    contact = RunDir(run["out"]).path("contact")
    if contact.is_file():
        shutil.copy(contact, folder / "contact.png")
        made["contact"] = "contact.png"
    return made


# --------------------------------------------------------------------------- planted attributes


def planted_by_cluster(run: dict, top: int = 3) -> dict[int, list[str]] | None:
    """Per cluster, the planted attribute values most over-represented in it (ground truth only)."""
    csv_path = synth.attrs_path(run["list"])
    if not csv_path.is_file():
        return None
    targets = planted.binary_targets(planted.read_attrs(csv_path, run["index"]))
    out = {}
    for k in run["names"]:
        members = run["label"] == k
        scored = []
        for name, y in targets.items():
            inside, overall = float(y[members].mean()) if members.any() else 0.0, float(y.mean())
            if inside >= 0.2 and overall > 0 and inside / overall >= 1.5:
                scored.append((inside / overall, f"{name} {inside:.0%} (all: {overall:.0%})"))
        out[k] = [t for _, t in sorted(scored, reverse=True)[:top]]
    return out


# --------------------------------------------------------------------------- the page


def build(cfg: dict) -> Path:
    """Write `<out>/report/` and return the page's path."""
    r = cfg["report"]
    run_dir = RunDir(cfg["extract"]["out"])
    with run_dir.stage("report"):
        run = load_run(cfg)
        with writing_dir(run_dir.path("report")) as tmp:
            gallery = write_gallery(run, tmp / "thumbs", int(r["gallery"]), int(r["seed"]))
            slots = write_sprites(run, tmp / "sprites", int(r["hover_max"]), int(r["seed"]))
            figs = figures(run, tmp)
            page = render(run, gallery, slots, figs, planted_by_cluster(run))
            (tmp / "index.html").write_text(page, encoding="utf-8")
    return run_dir.path("report") / "index.html"


@dataclass(frozen=True)
class Counts:
    """What several sections share: map points per cluster, labelled images, the distribution, the classifier."""

    n_map: int
    sizes: dict[int, int]
    labelled: dict[int, int]
    dist: dict[int, dict]
    per: dict[int, dict]


def _counts(run: dict) -> Counts:
    names, labelled = run["names"], run.get("labels")
    return Counts(
        n_map=len(run["label"]),
        sizes={k: int((run["label"] == k).sum()) for k in names},
        labelled={k: int((labelled["label"] == k).sum()) for k in names} if labelled else {},
        dist={d["cluster"]: d for d in run["distribution"] or []},
        per={p["cluster"]: p for p in run["metrics"]["classifier"].get("per_cluster", [])},
    )


def _table(head: list[str] | None, rows: list[list[object]], classes: list[str] | None = None) -> str:
    th = "".join(f"<th>{esc(h)}</th>" for h in head or [])
    trs = "".join(
        f"<tr{' class=' + chr(34) + esc(classes[i]) + chr(34) if classes and classes[i] else ''}>"
        + "".join(f"<td>{esc(c)}</td>" for c in row)
        + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table>{f'<thead><tr>{th}</tr></thead>' if head else ''}<tbody>{trs}</tbody></table>"


def _pct(x: object) -> str:
    try:
        return f"{float(x):.2%}"
    except (TypeError, ValueError):
        return "-"


def _dot(k: int) -> str:
    return f'<span class="dot" style="background:{color(k)}"></span>'


def _summary(run: dict, n: Counts) -> str:
    m, src, names = run["metrics"], run["source"], run["names"]
    c, tsne = m["classifier"], m["tsne"]
    rows = [
        ["net", f"{src.get('model_path', '?')} (sha256 {str(src.get('model_sha256', '?'))[:12]}...)"],
        ["layer (prefacen)", f"{src.get('layer', '?')}, center pixel; embedding (facen): {src.get('embedding', '?')}"],
        ["list", f"{src.get('list_path', '?')}: {src.get('list_lines', '?')} lines"],
        [
            "images seen / failed",
            f"{src.get('rows', '?')} / {src.get('failures', '?')} ({Path(src.get('file', '')).name})",
        ],
        ["subset on the map", f"{n.n_map} points ({m['noise']} noise), fraction {src.get('fraction', '?')}"],
        [
            "t-SNE",
            f"{tsne['backend']}: perplexity {tsne['perplexity']}, {tsne['n_iter']} iterations, "
            f"learning rate {tsne['learning_rate']}, PCA to {m['pca']['used']}",
        ],
        [
            "clusters",
            f"{len(names)}, {_how(m)}",
        ],
        [
            "classifier (held out)",
            f"accuracy {c['accuracy']:.3f}, balanced {c['balanced_accuracy']:.3f}, "
            + ", ".join(f"AUC {k} {v:.3f}" for k, v in c.get("roc_auc", {}).items() if v is not None),
        ],
    ]
    labelled = run.get("labels")
    if labelled:
        rows.append(["labelled", f"{len(labelled['label'])} images, {labelled['failures']} failed"])
    unknown = m.get("unknown")
    if isinstance(unknown, dict) and unknown.get("threshold") is not None:
        text = f"top probability below {unknown['threshold']:.4g} (quantile {unknown.get('quantile', '?')})"
        if labelled:
            count = int((labelled["label"] == UNKNOWN).sum())
            text = f"{count} images ({_pct(count / max(1, len(labelled['label'])))}) labelled unknown: " + text
        rows.append(["unknown", text])
    if run.get("facets"):
        rows.append(["facets", f"{len(run['facets'])}: " + ", ".join(f["name"] for f in run["facets"])])
    if run.get("identity"):
        rows.append(
            ["identity clusters", ", ".join(run["names"][k] for k in run["identity"] if k in run["names"]) or "-"]
        )
    for stage, t in run["timings"].items():
        rows.append([f"time: {stage}", f"{t['seconds']:.1f} s" + (f" ({t['images']} images)" if "images" in t else "")])
    return "<h2>Summary</h2>" + _table(None, rows)


def _pca(metrics: dict, figs: dict) -> str:
    if "pca" not in figs:
        return ""
    return (
        f"<h2>PCA of prefacen</h2><p>{metrics['pca'].get('components_for_80pct')} components explain 80 % "
        f'of the variance.</p><img src="{figs["pca"]}" alt="">'
    )


def _map(run: dict) -> str:
    """The canvas, its legend and the hover tip; the page's script draws the points from the JSON."""
    names = run["names"]
    legend = "".join(f'<a class="chip" href="#cluster-{k}">{_dot(k)}{esc(names[k])}</a>' for k in names)
    noise = int((run["label"] < 0).sum())
    if noise:
        legend += f'<span class="chip">{_dot(-1)}noise ({noise})</span>'
    placed = (run.get("labels") or {}).get("map")
    if placed is not None and len(placed):
        dot = f'<span class="dot" style="background:{LABELLED_COLOR}"></span>'
        legend += f'<span class="chip">{dot}labelled images (sample, {len(placed)})</span>'
    second = (run.get("compare") or {}).get("map")
    if second is not None and len(second):
        dot = f'<span class="dot" style="background:{SECOND_COLOR}"></span>'
        legend += f'<span class="chip">{dot}new data (sample, {len(second)})</span>'
    return (
        "<h2>The map</h2><p>Each point is one image of the subset, placed by t-SNE of its activation; colors are "
        "clusters, grey is noise. Hover a point to see its image, click to open its cluster.</p>"
        f'<div id="legend">{legend}</div><div id="mapbox"><canvas id="map" width="900" height="640"></canvas>'
        '<div id="tip" hidden><div id="tipimg"></div><div id="tippath"></div><div id="tipcluster"></div></div></div>'
    )


def _compare(run: dict, figs: dict, n: Counts) -> str:
    per = n.per
    rows = [
        [
            name,
            f"{per[k]['precision']:.2f}",
            f"{per[k]['recall']:.2f}",
            _pct(per[k]["true_share"]),
            _pct(per[k]["predicted_share"]),
        ]
        for k, name in run["names"].items()
        if k in per
    ]
    return (
        "<h2>Classifier vs clustering</h2><p>The same map colored by the clusters (left) and by the classifier's "
        "prediction from the activations (right): where they agree, the merged model labels new images like the "
        f'clustering.</p><img class=wide src="{figs["compare"]}" alt="">'
        + _table(["cluster", "precision", "recall", "held-out share", "predicted share"], rows)
    )


def _distribution_table(run: dict, n: Counts) -> str:
    """Map share vs labelled share per cluster; label's flagged rows in red."""
    rows, classes = [], []
    for k, name in run["names"].items():
        d = n.dist.get(k, {})
        ratio = d.get("ratio")
        rows.append(
            [
                name,
                n.sizes[k],
                _pct(n.sizes[k] / max(1, n.n_map)),
                n.labelled.get(k, "-"),
                _pct(d.get("labelled_share")),
                "-" if ratio is None else f"{ratio:.2f}",
                f"yes ({run['identity'][k]:.2f})" if k in run.get("identity", {}) else "",
            ]
        )
        classes.append("drift" if d.get("flagged") else "")
    if UNKNOWN in n.dist:
        d = n.dist[UNKNOWN]
        rows.append(
            ["unknown (below the threshold)", "-", "-", d.get("images", "-"), _pct(d.get("labelled_share")), "-", ""]
        )
        classes.append("")
    head = ["cluster", "map points", "map share", "labelled images", "labelled share", "ratio", "identity"]
    return (
        "<h2>Cluster distribution</h2><p>Share of each cluster on the map (subset) and in the full labelling; "
        "rows in red drifted by more than the configured factor; identity: mostly one or a few people.</p>"
        + _table(head, rows, classes)
    )


def _rule(metrics: dict) -> str:
    """The stability rule's table: how the number of clusters was chosen, without labels."""
    d = metrics.get("discovery") or {}
    if not d.get("table"):
        return ""
    rows = [
        [r["method"], r["k"], r.get("stable_sized", r["stable"]), _pct(r["stable_share"]), f"{r['ari']:.2f}"]
        for r in d["table"]
    ]
    pick = [i for i, r in enumerate(d["table"]) if (r["method"], r["k"]) == (d["method"], d["k"])]
    classes = ["pick" if i in pick else "" for i in range(len(rows))]
    edge = " The pick is at the edge of the grid: widen cluster.k_grid." if d.get("boundary") else ""
    return (
        "<h2>How the clusters were chosen</h2>"
        f"<p>{html.escape(d['rule'])}, over subsample refits (highlighted: the pick).{edge}</p>"
        + _table(["method", "k", "stable clusters (>= 2 % of rows)", "rows in stable clusters", "ARI"], rows, classes)
    )


def _sweep(figs: dict) -> str:
    if "contact" not in figs:
        return ""
    return (
        "<h2>Sweep</h2><p>Every setting the sweep tried (red: its choice).</p>"
        f'<img class=wide src="{figs["contact"]}" alt="">'
    )


def _planted_table(ev: dict | None) -> str:
    """evaluate's scores per planted attribute (synthetic runs only)."""
    if not ev:
        return ""
    rows = [
        [
            t["target"],
            t["positives"],
            f"{t['f1_cluster']:.2f}",
            f"{t['f1_cluster_chance']:.2f}",
            f"{t['f1_union']:.2f}",
            f"{t['f1_union_chance']:.2f}",
            "-" if t["probe_auc"] is None else f"{t['probe_auc']:.3f}",
            "-" if t.get("probe_f1") is None else f"{t['probe_f1']:.2f}",
        ]
        for t in ev["targets"]
    ]
    head = ["target", "positives", "F1 one cluster", "chance", "F1 union", "chance", "probe AUC", "probe F1"]
    agreement = ev["agreement"]
    return (
        "<h2>Planted attributes (synthetic ground truth)</h2>"
        + _table(head, rows)
        + f"<p>NMI {agreement['combination']['nmi']:.3f} vs the attribute combination, "
        f"{agreement['identity']['nmi']:.3f} vs identity.</p>"
    )


def _cost_model(scale: dict | None) -> str:
    """bench/scale.py's measured table and its projection to the reference's job."""
    if not scale:
        return ""
    measured = _table(
        ["stage", "size", "seconds", "peak MB"],
        [[r["stage"], f"{r['n']:,}", f"{r['seconds']:.2f}", f"{r['peak_mb']:.0f}"] for r in scale["rows"]],
    )
    fits = _table(
        ["stage", "time grows as", "memory grows as", "reference size", "projected time", "projected peak"],
        [
            [
                stage,
                f"N^{f['b']:.2f}",
                f"N^{f['memory_b']:.2f}",
                f"{f['reference_n']:,}",
                f"{f['projected_seconds'] / 3600:.2f} h",
                f"{f['projected_peak_mb']:.0f} MB",
            ]
            for stage, f in scale["fits"].items()
        ],
    )
    return (
        f"<h2>Cost model</h2><p>Measured by <code>bench/scale.py</code> on {scale['cores']} CPU cores, "
        "growth read as N<sup>b</sup>, projected as a start-up cost plus a cost per item to the reference's "
        f"job on this machine.</p>{measured}{fits}{_gpu_table(scale.get('gpu'))}"
    )


def _gpu_table(g: dict | None) -> str:
    """bench/gpu.py's hours on one GPU and on eight, when it was run."""
    if not g:
        return ""
    return (
        f"<p>On {esc(g['gpu'])} with {g['cores']} CPU cores (<code>bench/gpu.py</code>), the same job "
        "on one machine and on eight (extract and label split by shards):</p>"
        + _table(
            ["stage", "measured", "1 GPU", "8 GPUs"],
            [[r["stage"], r["measured"], f"{r['hours_1']:.2f} h", f"{r['hours_8']:.2f} h"] for r in g["rows"]],
        )
    )


def _figure(g: dict) -> str:
    """One gallery image with its path as caption; an unreadable one as a blank."""
    path = esc(g["path"])
    if not g["src"]:
        return f'<figure class="missing"><div class="blank"></div><figcaption>{path} (unreadable)</figcaption></figure>'
    return f'<figure><img src="{esc(g["src"])}" alt="" title="{path}"><figcaption>{path}</figcaption></figure>'


def _cluster_section(run: dict, k: int, n: Counts, gallery: list[dict], planted: dict | None) -> str:
    """One cluster: its size, labelled share and classifier scores, planted attributes, gallery."""
    share = _pct(n.sizes[k] / max(1, n.n_map))
    facts = [f"{n.sizes[k]} of {n.n_map} map points ({share})"]
    if k in n.labelled:
        facts.append(f"{n.labelled[k]} labelled images ({_pct(n.dist.get(k, {}).get('labelled_share'))})")
    p = n.per.get(k, {})
    if p:
        facts.append(f"classifier precision {p['precision']:.2f}, recall {p['recall']:.2f}")
    attrs = ""
    if k in run.get("identity", {}):
        attrs += (
            f'<p class="identity">mostly one or a few people (identity; score {run["identity"][k]:.2f}): '
            "it says little about attributes</p>"
        )
    if planted is not None:
        attrs += (
            f"<p class=planted>planted: {esc('; '.join(planted[k])) if planted[k] else 'no attribute stands out'}</p>"
        )
    return (
        f'<section class="cluster-section" id="cluster-{k}"><h3>{_dot(k)}'
        f"{esc(run['names'][k])} <small>(id {k})</small></h3><p>{esc(' - '.join(facts))}</p>{attrs}"
        f'<div class="gallery">{"".join(_figure(g) for g in gallery)}</div></section>'
    )


def _facets_section(run: dict, gallery: dict) -> str:
    """Each facet: its name, its clusters, its share of the labelled images (else of the map), a gallery."""
    facets = run.get("facets") or []
    if not facets:
        return ""
    parts = []
    for f in facets:
        members = ", ".join(f"{run['names'][k]} (id {k})" for k in f["clusters"])
        share = _pct(len(f["rows"]) / max(1, f["total"]))
        facts = f"clusters: {members} - {len(f['rows'])} of {f['total']} images ({share}; {f['of']})"
        parts.append(
            f'<section class="facet-section" id="facet-{int(f["id"])}"><h3>{esc(f["name"])} '
            f"<small>(facet {int(f['id'])})</small></h3><p>{esc(facts)}</p>"
            f'<div class="gallery">{"".join(_figure(g) for g in gallery.get(("facet", f["id"]), []))}</div></section>'
        )
    return (
        "<h2>Facets</h2><p>A facet is a set of clusters named once; an image belongs to it when the merged model "
        "gives its clusters together a probability of at least 0.5 (the lists in facets/).</p>" + "".join(parts)
    )


def _clusters(run: dict, n: Counts, gallery: dict, planted: dict | None) -> str:
    return "<h2>Clusters</h2>" + "".join(_cluster_section(run, k, n, gallery.get(k, []), planted) for k in run["names"])


def _second_labelling(r: dict, first: dict | None, first_path: Path, current: tuple) -> dict | None:
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
    if not labelling.made_with(theirs, current[0]):
        raise UserError(
            f"{path} was labelled with another merged model than {first_path}; label the new data with this run's"
        )
    labelling.check_ids(theirs, current[1])
    placed = None
    if theirs.map is not None:
        placed = _map_sample(theirs.map, int(r.get("hover_max", 100_000)), int(r.get("seed", 0)))
    return {"path": path, "label": theirs.label, "map": placed, "list": theirs.attrs.get("list_path", "?")}


def _drift(run: dict) -> str:
    """Where new data falls: each cluster's share in the labelling vs in the compared one."""
    second = run.get("compare")
    if second is None:
        return ""
    first = run["labels"]["label"]
    rows, classes = [], []
    for k, name in list(run["names"].items()) + [(-1, "unknown")]:
        a, b = float(np.mean(first == k)), float(np.mean(second["label"] == k))
        if k == -1 and a == 0 and b == 0:
            continue
        ratio = b / a if a else None
        rows.append([name, _pct(a), _pct(b), "-" if ratio is None else f"{ratio:.2f}"])
        classes.append("drift" if ratio is None and b > 0 or ratio is not None and not 0.67 <= ratio <= 1.5 else "")
    return (
        f"<h2>New data: {esc(second['list'])}</h2><p>A second labelling, made with this run's merged model "
        f"({esc(second['path'])}), drawn over the map in black; in red, clusters whose share changed by more "
        "than 1.5 times: where the new data drifts.</p>"
        + _table(["cluster", "labelled share", "new data share", "ratio"], rows, classes)
    )


def _map_sample(ds, most: int, seed: int) -> np.ndarray:
    """A seeded sample of at most `most` labelled images' map positions (rows that could not be placed left out)."""
    Y = ds[:]
    Y = Y[np.isfinite(Y).all(axis=1)]
    if len(Y) > most:
        Y = Y[np.sort(np.random.default_rng(seed).choice(len(Y), most, replace=False))]
    return Y


def _map_data(run: dict, slots: np.ndarray) -> dict:
    """What the page's script reads: map coordinates, clusters, hover slots and paths, names and colors."""
    Y, names, lines = run["tsne"], run["names"], run.get("hover_lines", {})
    L = (run.get("labels") or {}).get("map", np.zeros((0, 2), np.float32))
    N = (run.get("compare") or {}).get("map")
    N = np.zeros((0, 2), np.float32) if N is None else N
    return {
        "x": np.round(Y[:, 0], 3).tolist(),
        "y": np.round(Y[:, 1], 3).tolist(),
        "c": run["label"].astype(int).tolist(),
        "s": slots.astype(int).tolist(),
        "p": [lines.get(int(i), f"line {int(i)}") for i in run["index"]],
        "lx": np.round(L[:, 0], 3).tolist(),
        "ly": np.round(L[:, 1], 3).tolist(),
        "labelled": LABELLED_COLOR,
        "nx": np.round(N[:, 0], 3).tolist(),
        "ny": np.round(N[:, 1], 3).tolist(),
        "second": SECOND_COLOR,
        "names": {str(k): v for k, v in names.items()},
        "colors": {str(k): color(k) for k in names},
        "noise": NOISE_COLOR,
        "sheet": SHEET,
        "thumb": HOVER,
    }


@functools.cache
def _resource(name: str) -> str:
    """A file of the page shipped in this package (`report_page.html`, `.css`, `.js`)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def page(body: str, data: dict) -> str:
    """The page's template with its style and script inlined (one offline file), `body` and `data` filled in."""
    return Template(_resource("report_page.html")).substitute(
        css=_resource("report_page.css"), script=_resource("report_page.js"), body=body, data=json_for_html(data)
    )


def render(run: dict, gallery: dict, slots: np.ndarray, figs: dict, planted: dict | None) -> str:
    """The page: one HTML fragment per section, in order; sections without data are left out."""
    n = _counts(run)
    blocks = [
        _summary(run, n),
        _pca(run["metrics"], figs),
        _map(run),
        _compare(run, figs, n),
        _distribution_table(run, n),
        _drift(run),
        _rule(run["metrics"]),
        _sweep(figs),
        _planted_table(run["evaluation"]),
        _cost_model(run.get("scale")),
        _facets_section(run, gallery),
        _clusters(run, n, gallery, planted),
    ]
    return page("\n".join(b for b in blocks if b), _map_data(run, slots))
