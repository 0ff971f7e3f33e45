"""The report stage: one offline page that shows what the net learned.

Built from the run folder alone (`extract` ... `label` artifacts, each optional past the
cluster stage) into `<out>/report/`: `index.html` with figures and thumbnails beside it, no
CDN and no server. Sections: summary, PCA curve, the interactive t-SNE map (canvas; hover shows
the image and its path, a click jumps to the cluster), classifier vs clustering, distribution,
the sweep's contact sheet, the planted-attribute table when ground truth exists, and one
section per cluster with a gallery.

Every text that comes from data (paths, names, reasons) is escaped: into HTML with
`html.escape`, into the page's JSON with `<`, `>` and `&` as `\\u003c`..., and the page's
script only ever writes it with `textContent`.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np

from .. import synth
from ..engine import store
from ..engine.images import read_image
from ..errors import UserError
from . import evaluate, merge

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
    with open(list_path, encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        for i, line in enumerate(f):
            if i in want:
                got[i] = line.rstrip("\r\n").encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            if i >= last:
                break
    return got


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def load_run(cfg: dict) -> dict:
    """Everything the page shows, from the run folder; only the cluster stage's files are required."""
    out = Path(cfg["extract"]["out"])
    clusters = out / "clusters.h5"
    if not clusters.is_file() or not (out / "metrics.json").is_file():
        raise UserError(
            f"{clusters} or metrics.json is missing; run `make cluster` first (then `make merge label` for the rest)"
        )
    run: dict = {
        "out": out,
        "metrics": _json(out / "metrics.json"),
        "timings": _json(out / "timings.json") or {},
        "evaluation": _json(out / "evaluation.json"),
        "sweep": _json(out / "sweep" / "sweep.json"),
        "scale": _json(out / "scale.json"),
    }
    with h5py.File(clusters, "r") as f:
        run["tsne"], run["index"], run["label"] = f["tsne"][:], f["index"][:], f["label"][:]
    ids = sorted(int(k) for k in np.unique(run["label"][run["label"] >= 0]))
    names_path = out / merge.NAMES_FILE
    run["names"] = merge.load_names(names_path, ids, create=False) if names_path.is_file() else merge.default_names(ids)
    src = next((out / n for n in ("full.h5", "subset.h5") if (out / n).is_file()), None)
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
    labels = out / "labels.h5"
    if labels.is_file():
        with h5py.File(labels, "r") as f:
            run["labels"] = {"index": f["index"][:], "label": f["label"][:], "failures": len(f["failures/index"])}
    run["distribution"] = _distribution(out / "distribution.csv")
    run["list"] = Path(run["source"].get("list_path") or cfg["data"]["list"])
    run["root"] = Path(run["source"].get("data_root") or cfg["data"]["root"])
    return run


def _predicted(out: Path, index: np.ndarray) -> np.ndarray | None:
    """The classifier's cluster for each map point (from subset.h5's activations), for the side-by-side view."""
    from ..engine import runtime

    subset, clf = out / "subset.h5", out / "classifier.onnx"
    if not subset.is_file() or not clf.is_file():
        return None
    import onnx

    X = store.rows_at(subset, index)
    if X is None:
        return None
    sess = runtime.session(onnx.load(clf), "cpu")
    return sess.run(None, {sess.get_inputs()[0].name: X})[0].ravel().astype(np.int64)


def _distribution(path: Path) -> list[dict] | None:
    if not path.is_file():
        return None
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- images


def thumbnail(path: str, size: int) -> np.ndarray | None:
    img, _ = read_image(path, (size, size))
    return img


def thumbnails(root: Path, lines: list[str], size: int) -> list[np.ndarray | None]:
    """Decode and shrink on a thread pool (OpenCV releases the GIL): 100,000 hover images in a minute or two."""
    from concurrent.futures import ThreadPoolExecutor

    paths = [os.path.join(str(root), ln) if ln else "" for ln in lines]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(lambda p: thumbnail(p, size) if p else None, paths, chunksize=64))


def write_gallery(run: dict, folder: Path, per_cluster: int, seed: int) -> dict[int, list[dict]]:
    """Up to `per_cluster` images per cluster, drawn reproducibly from the labelling (else the subset)."""
    src = run.get("labels") or {"index": run["index"], "label": run["label"]}
    rng = np.random.default_rng(seed)
    picks = {}
    for k in run["names"]:
        rows = np.flatnonzero(src["label"] == k)
        picks[k] = (
            np.sort(src["index"][rng.choice(rows, min(per_cluster, len(rows)), replace=False)]) if len(rows) else []
        )
    lines = read_lines(
        run["list"], np.concatenate([np.asarray(p, np.int64) for p in picks.values()] or [np.zeros(0, np.int64)])
    )
    folder.mkdir(parents=True, exist_ok=True)
    gallery: dict[int, list[dict]] = {}
    for k, idx in picks.items():
        gallery[k] = []
        texts = [lines.get(int(i), "") for i in idx]
        for i, line, img in zip(idx, texts, thumbnails(run["root"], texts, THUMB)):
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
        for j, img in enumerate(thumbnails(run["root"], texts, HOVER)):
            if img is not None:
                r, c = divmod(j, SHEET)
                canvas[r * HOVER : (r + 1) * HOVER, c * HOVER : (c + 1) * HOVER] = img
        cv2.imwrite(str(folder / f"sheet{sheet}.jpg"), canvas, [cv2.IMWRITE_JPEG_QUALITY, 80])
    run["hover_lines"] = lines
    return slot


# --------------------------------------------------------------------------- figures


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
    panels = [("clustering (KNN-DBSCAN on the map)", lab)] + (
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
    contact = run["out"] / "sweep" / "contact.png"
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
    targets = evaluate.binary_targets(evaluate.read_attrs(csv_path, run["index"]))
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
    run = load_run(cfg)
    r = cfg["report"]
    folder = run["out"] / "report"
    tmp = folder.with_name(".report.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    gallery = write_gallery(run, tmp / "thumbs", int(r["gallery"]), int(r["seed"]))
    slots = write_sprites(run, tmp / "sprites", int(r["hover_max"]), int(r["seed"]))
    figs = figures(run, tmp)
    page = render(run, gallery, slots, figs, planted_by_cluster(run))
    (tmp / "index.html").write_text(page, encoding="utf-8")
    old = folder.with_name(".report.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder / "index.html"


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


def _cost_model(scale: dict) -> str:
    """bench/scale.py's measured table and its projection to the reference's job."""
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
    gpu = ""
    if scale.get("gpu"):
        g = scale["gpu"]
        gpu = (
            f"<p>On {esc(g['gpu'])} with {g['cores']} CPU cores (<code>bench/gpu.py</code>), the same job "
            "on one machine and on eight (extract and label split by shards):</p>"
            + _table(
                ["stage", "measured", "1 GPU", "8 GPUs"],
                [[r["stage"], r["measured"], f"{r['hours_1']:.2f} h", f"{r['hours_8']:.2f} h"] for r in g["rows"]],
            )
        )
    return (
        f"<h2>Cost model</h2><p>Measured by <code>bench/scale.py</code> on {scale['cores']} CPU cores, "
        "growth read as N<sup>b</sup>, projected as a start-up cost plus a cost per item to the reference's "
        f"job on this machine.</p>{measured}{fits}{gpu}"
    )


def render(run: dict, gallery: dict, slots: np.ndarray, figs: dict, planted: dict | None) -> str:
    m, names, src = run["metrics"], run["names"], run["source"]
    c = m["classifier"]
    per = {p["cluster"]: p for p in c.get("per_cluster", [])}
    sizes = {k: int((run["label"] == k).sum()) for k in names}
    n_map = len(run["label"])
    labelled = run.get("labels")
    lab_counts = {k: int((labelled["label"] == k).sum()) for k in names} if labelled else {}
    dist = {int(d["cluster"]): d for d in run["distribution"] or []}

    summary_rows = [
        ["net", f"{src.get('model_path', '?')} (sha256 {str(src.get('model_sha256', '?'))[:12]}...)"],
        ["layer (prefacen)", f"{src.get('layer', '?')}, center pixel; embedding (facen): {src.get('embedding', '?')}"],
        ["list", f"{src.get('list_path', '?')}: {src.get('list_lines', '?')} lines"],
        [
            "images seen / failed",
            f"{src.get('rows', '?')} / {src.get('failures', '?')} ({Path(src.get('file', '')).name})",
        ],
        ["subset on the map", f"{n_map} points ({m['noise']} noise), fraction {src.get('fraction', '?')}"],
        [
            "t-SNE",
            f"{m['tsne']['backend']}: perplexity {m['tsne']['perplexity']}, {m['tsne']['n_iter']} iterations, "
            f"learning rate {m['tsne']['learning_rate']}, PCA to {m['pca']['used']}",
        ],
        [
            "clusters",
            f"{len(names)} by {m['cluster']['method']} (eps {m['cluster'].get('eps')}, "
            f"min_samples {m['cluster'].get('min_samples')})",
        ],
        [
            "classifier (held out)",
            f"accuracy {c['accuracy']:.3f}, balanced {c['balanced_accuracy']:.3f}, "
            + ", ".join(f"AUC {k} {v:.3f}" for k, v in c.get("roc_auc", {}).items() if v is not None),
        ],
    ]
    if labelled:
        summary_rows.append(["labelled", f"{len(labelled['label'])} images, {labelled['failures']} failed"])
    for stage, t in run["timings"].items():
        summary_rows.append(
            [f"time: {stage}", f"{t['seconds']:.1f} s" + (f" ({t['images']} images)" if "images" in t else "")]
        )

    legend = "".join(
        f'<a class="chip" href="#cluster-{k}"><span class="dot" style="background:{color(k)}"></span>{esc(names[k])}</a>'
        for k in names
    )
    noise = int((run["label"] < 0).sum())
    if noise:
        legend += f'<span class="chip"><span class="dot" style="background:{NOISE_COLOR}"></span>noise ({noise})</span>'
    dist_rows, dist_cls = [], []
    for k in names:
        d = dist.get(k, {})
        dist_rows.append(
            [
                names[k],
                sizes[k],
                _pct(sizes[k] / max(1, n_map)),
                lab_counts.get(k, "-"),
                _pct(d.get("labelled_share")),
                d.get("ratio") and f"{float(d['ratio']):.2f}" or "-",
            ]
        )
        dist_cls.append("drift" if d.get("flagged") == "True" else "")
    per_rows = [
        [
            names[k],
            f"{per[k]['precision']:.2f}",
            f"{per[k]['recall']:.2f}",
            _pct(per[k]["true_share"]),
            _pct(per[k]["predicted_share"]),
        ]
        for k in names
        if k in per
    ]

    sections = []
    for k in names:
        p = per.get(k, {})
        facts = [f"{sizes[k]} of {n_map} map points ({_pct(sizes[k] / max(1, n_map))})"]
        if k in lab_counts:
            facts.append(f"{lab_counts[k]} labelled images ({_pct(dist.get(k, {}).get('labelled_share'))})")
        if p:
            facts.append(f"classifier precision {p['precision']:.2f}, recall {p['recall']:.2f}")
        attrs = ""
        if planted is not None:
            attrs = (
                "<p class=planted>planted: "
                + (esc("; ".join(planted[k])) if planted[k] else "no attribute stands out")
                + "</p>"
            )
        figs_html = "".join(
            f'<figure><img src="{esc(g["src"])}" alt="" title="{esc(g["path"])}"><figcaption>{esc(g["path"])}</figcaption></figure>'
            if g["src"]
            else f'<figure class="missing"><div class="blank"></div><figcaption>{esc(g["path"])} (unreadable)</figcaption></figure>'
            for g in gallery.get(k, [])
        )
        sections.append(
            f'<section class="cluster-section" id="cluster-{k}"><h3><span class="dot" style="background:{color(k)}"></span>'
            f"{esc(names[k])} <small>(id {k})</small></h3><p>{esc(' - '.join(facts))}</p>{attrs}"
            f'<div class="gallery">{figs_html}</div></section>'
        )

    ev = run["evaluation"]
    planted_table = ""
    if ev:
        planted_table = (
            "<h2>Planted attributes (synthetic ground truth)</h2>"
            + _table(
                ["target", "positives", "F1 one cluster", "chance", "F1 union", "chance", "probe AUC", "probe F1"],
                [
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
                ],
            )
            + (
                f"<p>NMI {ev['agreement']['combination']['nmi']:.3f} vs the attribute combination, "
                f"{ev['agreement']['identity']['nmi']:.3f} vs identity.</p>"
            )
        )

    Y = run["tsne"]
    lines = run.get("hover_lines", {})
    data = {
        "x": np.round(Y[:, 0], 3).tolist(),
        "y": np.round(Y[:, 1], 3).tolist(),
        "c": run["label"].astype(int).tolist(),
        "s": slots.astype(int).tolist(),
        "p": [lines.get(int(i), f"line {int(i)}") for i in run["index"]],
        "names": {str(k): v for k, v in names.items()},
        "colors": {str(k): color(k) for k in names},
        "noise": NOISE_COLOR,
        "sheet": SHEET,
        "thumb": HOVER,
    }
    blocks = [
        "<h2>Summary</h2>" + _table(None, summary_rows),
        "<h2>The map</h2><p>Each point is one image of the subset, placed by t-SNE of its activation; colors are "
        "clusters, grey is noise. Hover a point to see its image, click to open its cluster.</p>"
        f'<div id="legend">{legend}</div><div id="mapbox"><canvas id="map" width="900" height="640"></canvas>'
        '<div id="tip" hidden><div id="tipimg"></div><div id="tippath"></div><div id="tipcluster"></div></div></div>',
        "<h2>Classifier vs clustering</h2><p>The same map colored by the clusters (left) and by the classifier's "
        "prediction from the activations (right): where they agree, the merged model labels new images like the "
        f'clustering.</p><img class=wide src="{figs["compare"]}" alt="">'
        + _table(["cluster", "precision", "recall", "held-out share", "predicted share"], per_rows),
        "<h2>Cluster distribution</h2><p>Share of each cluster on the map (subset) and in the full labelling; "
        "rows in red drifted by more than the configured factor.</p>"
        + _table(
            ["cluster", "map points", "map share", "labelled images", "labelled share", "ratio"], dist_rows, dist_cls
        ),
    ]
    if "pca" in figs:
        blocks.insert(
            1,
            f"<h2>PCA of prefacen</h2><p>{m['pca'].get('components_for_80pct')} components explain 80 % "
            f'of the variance.</p><img src="{figs["pca"]}" alt="">',
        )
    if "contact" in figs:
        blocks.append(
            "<h2>Sweep</h2><p>Every setting the sweep tried (red: its choice).</p>"
            f'<img class=wide src="{figs["contact"]}" alt="">'
        )
    if planted_table:
        blocks.append(planted_table)
    if run.get("scale"):
        blocks.append(_cost_model(run["scale"]))
    blocks.append("<h2>Clusters</h2>" + "".join(sections))
    return PAGE.replace("__BODY__", "\n".join(blocks)).replace("__DATA__", json_for_html(data))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>introspect report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:0 16px 48px;color:#222}
h1{margin:18px 0 4px}h2{margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
tr.drift td{color:#b00020;font-weight:600}img.wide{max-width:100%}
#mapbox{position:relative;display:inline-block;border:1px solid #ddd}canvas{display:block;cursor:crosshair}
#tip{position:absolute;pointer-events:none;background:#fff;border:1px solid #888;padding:4px;max-width:260px;
box-shadow:0 2px 6px rgba(0,0,0,.2);font-size:12px;word-break:break-all}
#tipimg{width:48px;height:48px;background-color:#eee}
.chip{display:inline-block;margin:2px 10px 2px 0;text-decoration:none;color:#222}
.dot{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:5px}
.gallery{display:flex;flex-wrap:wrap;gap:6px}figure{margin:0;width:96px;font-size:10px;word-break:break-all}
figure img,.blank{width:64px;height:64px;display:block;background:#eee}.planted{color:#555}
</style></head><body>
<h1>introspect report</h1><p>What the net's activations separate, found without labels.</p>
__BODY__
<script type="application/json" id="data">__DATA__</script>
<script>
(function(){
  "use strict";
  var d = JSON.parse(document.getElementById("data").textContent);
  var cv = document.getElementById("map"), ctx = cv.getContext("2d"), n = d.x.length;
  var pad = 12, W = cv.width, H = cv.height;
  var x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;  // a loop: spreading 10^5 arguments overflows the stack
  for (var m = 0; m < n; m++) { x0 = Math.min(x0, d.x[m]); x1 = Math.max(x1, d.x[m]); y0 = Math.min(y0, d.y[m]); y1 = Math.max(y1, d.y[m]); }
  var sc = Math.min((W - 2 * pad) / ((x1 - x0) || 1), (H - 2 * pad) / ((y1 - y0) || 1));
  var sx = new Float32Array(n), sy = new Float32Array(n);
  for (var i = 0; i < n; i++) { sx[i] = pad + (d.x[i] - x0) * sc; sy[i] = H - pad - (d.y[i] - y0) * sc; }
  function colorOf(c) { return c < 0 ? d.noise : d.colors[String(c)]; }
  function draw() {
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, H);
    var order = [-1].concat(Object.keys(d.colors).map(Number));
    for (var o = 0; o < order.length; o++) {
      ctx.fillStyle = colorOf(order[o]);
      for (var j = 0; j < n; j++) if (d.c[j] === order[o]) ctx.fillRect(sx[j] - 1, sy[j] - 1, 2.5, 2.5);
    }
  }
  var G = 24, cols = Math.ceil(W / G), rows = Math.ceil(H / G), grid = new Array(cols * rows);
  for (var g = 0; g < grid.length; g++) grid[g] = [];
  for (var k = 0; k < n; k++) grid[Math.min(rows - 1, Math.floor(sy[k] / G)) * cols + Math.min(cols - 1, Math.floor(sx[k] / G))].push(k);
  function nearest(px, py) {
    var best = -1, bd = 64, gx = Math.floor(px / G), gy = Math.floor(py / G);
    for (var a = gx - 1; a <= gx + 1; a++) for (var b = gy - 1; b <= gy + 1; b++) {
      if (a < 0 || b < 0 || a >= cols || b >= rows) continue;
      var cell = grid[b * cols + a];
      for (var q = 0; q < cell.length; q++) { var p = cell[q], dd = (sx[p] - px) * (sx[p] - px) + (sy[p] - py) * (sy[p] - py); if (dd < bd) { bd = dd; best = p; } }
    }
    return best;
  }
  var tip = document.getElementById("tip"), tipimg = document.getElementById("tipimg");
  function show(p) {
    if (p < 0) { tip.hidden = true; return; }
    var s = d.s[p];
    if (s >= 0) {
      var per = d.sheet * d.sheet, sheet = Math.floor(s / per), r = s % per;
      tipimg.style.backgroundImage = "url(sprites/sheet" + sheet + ".jpg)";
      tipimg.style.backgroundPosition = (-(r % d.sheet) * d.thumb) + "px " + (-Math.floor(r / d.sheet) * d.thumb) + "px";
    } else { tipimg.style.backgroundImage = "none"; }
    document.getElementById("tippath").textContent = d.p[p];
    document.getElementById("tipcluster").textContent = d.c[p] < 0 ? "noise" : d.names[String(d.c[p])];
    tip.hidden = false;
    tip.style.left = Math.min(sx[p] + 12, W - 200) + "px"; tip.style.top = Math.min(sy[p] + 12, H - 90) + "px";
  }
  function at(e) { var r = cv.getBoundingClientRect(); return nearest((e.clientX - r.left) * W / r.width, (e.clientY - r.top) * H / r.height); }
  cv.addEventListener("mousemove", function (e) { show(at(e)); });
  cv.addEventListener("mouseleave", function () { tip.hidden = true; });
  cv.addEventListener("click", function (e) { var p = at(e); if (p >= 0 && d.c[p] >= 0) location.hash = "cluster-" + d.c[p]; });
  draw();
  window.introspectMap = { n: n, screen: function (i) { var r = cv.getBoundingClientRect(); return [r.left + sx[i] * r.width / W, r.top + sy[i] * r.height / H]; } };
})();
</script></body></html>
"""
