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
inlined, so the page stays one file. This module renders the sections and builds the page;
`report_run` reads the run folder, `report_media` draws the thumbnails, sprites and figures,
`report_html` holds the HTML pieces the sections share, `report_views` the views' switch, table
and galleries (issue 17: several clusterings of the same points; a run of one view renders as before).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

import numpy as np

from ..engine.merged import UNKNOWN
from ..engine.rundir import RunDir, writing_dir
from . import report_views
from .report_colors import LABELLED_COLOR, NOISE_COLOR, SECOND_COLOR, color
from .report_html import (
    cluster_section,
    esc,
    figure,
    identity_short,
    json_for_html,
    legend_chips,
    normalization_section,
    pct,
    rule_table,
    table,
)
from .report_media import (
    HOVER,
    SHEET,
    figures,
    how,
    over_represented,
    planted_targets,
    write_gallery,
    write_sprites,
)
from .report_run import CENTER, load_run

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
            targets = planted_targets(run)
            planted = None if targets is None else over_represented(targets, run["label"], run["names"])
            for view in report_views.fitted(run["views"]):
                if view["name"] != CENTER and targets is not None:
                    view["planted"] = over_represented(targets, view["label"], view["names"])
            page = render(run, gallery, slots, figs, planted)
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


def _subset_rule(src: dict) -> str:
    """How the subset was drawn: the threshold, and the rule that set it when it was `auto`."""
    text = f"fraction {src.get('fraction', '?')}"
    if src.get("fraction_setting") == "auto":
        text += f" (auto: at least {src.get('min_subset', '?')} lines)"
    return text


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
        ["subset on the map", f"{n.n_map} points ({m['noise']} noise), {_subset_rule(src)}"],
        [
            "t-SNE",
            f"{tsne['backend']}: perplexity {tsne['perplexity']}, {tsne['n_iter']} iterations, "
            f"learning rate {tsne['learning_rate']}, PCA to {m['pca']['used']}",
        ],
        [
            "clusters",
            f"{len(names)}, {how(m)}",
        ],
        [
            "classifier (held out)",
            f"accuracy {c['accuracy']:.3f}, balanced {c['balanced_accuracy']:.3f}, "
            + ", ".join(f"AUC {k} {v:.3f}" for k, v in c.get("roc_auc", {}).items() if v is not None),
        ],
    ]
    if run.get("views"):
        rows.append(report_views.summary_row(run["views"]))
    labelled = run.get("labels")
    if labelled:
        rows.append(["labelled", f"{len(labelled['label'])} images, {labelled['failures']} failed"])
    unknown = m.get("unknown")
    if isinstance(unknown, dict) and unknown.get("threshold") is not None:
        text = f"top probability below {unknown['threshold']:.4g} (quantile {unknown.get('quantile', '?')})"
        if labelled:
            count = int((labelled["label"] == UNKNOWN).sum())
            text = f"{count} images ({pct(count / max(1, len(labelled['label'])))}) labelled unknown: " + text
        rows.append(["unknown", text])
    if run.get("facets"):
        rows.append(["facets", f"{len(run['facets'])}: " + ", ".join(f["name"] for f in run["facets"])])
    if run.get("identity"):
        rows.append(
            ["identity clusters", ", ".join(run["names"][k] for k in run["identity"] if k in run["names"]) or "-"]
        )
    for stage, t in run["timings"].items():
        rows.append([f"time: {stage}", f"{t['seconds']:.1f} s" + (f" ({t['images']} images)" if "images" in t else "")])
    return "<h2>Summary</h2>" + table(None, rows)


def _pca(metrics: dict, figs: dict) -> str:
    if "pca" not in figs:
        return ""
    return (
        f"<h2>PCA of prefacen</h2><p>{metrics['pca'].get('components_for_80pct')} components explain 80 % "
        f'of the variance.</p><img src="{figs["pca"]}" alt="">'
    )


def _map_words(placed, second) -> str:
    """What each colour on the map means, naming only what is drawn (grey is noise, never an overlay)."""
    words = (
        "Each coloured point is one image of the subset, placed by t-SNE of its activation; its colour is its "
        "cluster, and grey points are noise (no cluster)."
    )
    if placed is not None and len(placed):
        words += " Pale sand dots beneath are a sample of the labelled images, placed among their nearest subset rows."
    if second is not None and len(second):
        words += " Black dots on top are the new data (--compare)."
    return words


def _map(run: dict) -> str:
    """The canvas, its legend and the hover tip; the page's script draws the points from the JSON.

    With several views, a switch above: each view has its legend, shown with its colouring."""
    extra = ""
    placed = (run.get("labels") or {}).get("map")
    if placed is not None and len(placed):
        chip = f'<span class="dot" style="background:{LABELLED_COLOR}"></span>'
        extra += f'<span class="chip">{chip}labelled images (sample, {len(placed)})</span>'
    second = (run.get("compare") or {}).get("map")
    if second is not None and len(second):
        chip = f'<span class="dot" style="background:{SECOND_COLOR}"></span>'
        extra += f'<span class="chip">{chip}new data (sample, {len(second)})</span>'
    if run.get("views"):
        legend = report_views.switch(run["views"]) + report_views.legends(run["views"], extra)
    else:
        legend = f'<div id="legend">{legend_chips(run["names"], run["label"])}{extra}</div>'
    return (
        f"<h2>The map</h2><p>{_map_words(placed, second)} Hover a point to see its image, click to open its "
        "cluster.</p>"
        f'{legend}<div id="mapbox"><canvas id="map" width="900" height="640"></canvas>'
        '<div id="tip" hidden><div id="tipimg"></div><div id="tippath"></div><div id="tipcluster"></div></div></div>'
    )


def _compare(run: dict, figs: dict, n: Counts) -> str:
    per = n.per
    rows = [
        [
            name,
            f"{per[k]['precision']:.2f}",
            f"{per[k]['recall']:.2f}",
            pct(per[k]["true_share"]),
            pct(per[k]["predicted_share"]),
        ]
        for k, name in run["names"].items()
        if k in per
    ]
    return (
        "<h2>Classifier vs clustering</h2><p>The same map colored by the clusters (left) and by the classifier's "
        "prediction from the activations (right): where they agree, the merged model labels new images like the "
        f'clustering.</p><img class=wide src="{figs["compare"]}" alt="">'
        + table(["cluster", "precision", "recall", "held-out share", "predicted share"], rows)
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
                pct(n.sizes[k] / max(1, n.n_map)),
                n.labelled.get(k, "-"),
                pct(d.get("labelled_share")),
                "-" if ratio is None else f"{ratio:.2f}",
                identity_short(run["identity"][k]) if k in run.get("identity", {}) else "",
            ]
        )
        classes.append("drift" if d.get("flagged") else "")
    if UNKNOWN in n.dist:
        d = n.dist[UNKNOWN]
        rows.append(
            ["unknown (below the threshold)", "-", "-", d.get("images", "-"), pct(d.get("labelled_share")), "-", ""]
        )
        classes.append("")
    head = ["cluster", "map points", "map share", "labelled images", "labelled share", "ratio", "identity"]
    return (
        "<h2>Cluster distribution</h2><p>Share of each cluster on the map (subset) and in the full labelling; "
        "rows in red drifted by more than the configured factor; identity: mostly one or a few people.</p>"
        + table(head, rows, classes)
    )


def _rule(metrics: dict) -> str:
    """The stability rule's table: how the number of clusters was chosen, without labels."""
    rule = rule_table(metrics.get("discovery") or {})
    return f"<h2>How the clusters were chosen</h2>{rule}" if rule else ""


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
        + table(head, rows)
        + f"<p>NMI {agreement['combination']['nmi']:.3f} vs the attribute combination, "
        f"{agreement['identity']['nmi']:.3f} vs identity.</p>"
    )


def _disk(source: dict, scale: dict | None) -> str:
    """The disk full.h5 needs for every line of this run's list, from its own bytes per row, and bench/scale.py's
    bytes per row for each storage (`extract.dtype`, HDF5 filters) when measured."""
    out = ""
    rows, lines = source.get("rows") or 0, source.get("list_lines") or 0
    if source.get("kind") == "full" and rows and source.get("bytes"):
        per = source["bytes"] / rows
        dtype = source.get("dtype", "float32")
        half = "" if dtype == "float16" else ' (<code>extract.dtype = "float16"</code> halves it)'
        out += (
            f"<p>Disk: full.h5 holds {rows:,} rows in {source['bytes'] / 1e9:.2f} GB, {per:,.0f} bytes a row stored "
            f"as {esc(dtype)}; every line of the list ({lines:,}) needs about {per * lines / 1e9:,.1f} GB{half}.</p>"
        )
    d = (scale or {}).get("disk")
    if d:
        pools = sorted({p for gb in d["needed_gb"].values() for p in gb})
        out += f"<p>Bytes per row of full.h5 by storage, measured on {d['rows_measured']:,} real rows:</p>" + table(
            ["storage", *d["per_row"][next(iter(d["per_row"]))], *(f"{p} at {d['rows']:,} rows" for p in pools)],
            [
                [name, *(f"{b:,.0f} B" for b in per.values()), *(f"{d['needed_gb'][name][p]:,.1f} GB" for p in pools)]
                for name, per in d["per_row"].items()
            ],
        )
    return out


def _cost_model(scale: dict | None, source: dict | None = None) -> str:
    """bench/scale.py's measured table and its projection to the reference's job; the disk full.h5 needs."""
    disk = _disk(source or {}, scale)
    if not scale or "rows" not in scale:
        return f"<h2>Cost model</h2>{disk}" if disk else ""
    measured = table(
        ["stage", "size", "seconds", "peak MB"],
        [[r["stage"], f"{r['n']:,}", f"{r['seconds']:.2f}", f"{r['peak_mb']:.0f}"] for r in scale["rows"]],
    )
    fits = table(
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
        f"job on this machine.</p>{measured}{fits}{_gpu_table(scale.get('gpu'))}{disk}"
    )


def _gpu_table(g: dict | None) -> str:
    """bench/gpu.py's hours on one GPU and on eight, when it was run."""
    if not g:
        return ""
    return (
        f"<p>On {esc(g['gpu'])} with {g['cores']} CPU cores (<code>bench/gpu.py</code>), the same job "
        "on one machine and on eight (extract and label split by shards):</p>"
        + table(
            ["stage", "measured", "1 GPU", "8 GPUs"],
            [[r["stage"], r["measured"], f"{r['hours_1']:.2f} h", f"{r['hours_8']:.2f} h"] for r in g["rows"]],
        )
    )


def _cluster_section(run: dict, k: int, n: Counts, gallery: list[dict], planted: dict | None) -> str:
    """One cluster: its size, labelled share and classifier scores, planted attributes, gallery."""
    share = pct(n.sizes[k] / max(1, n.n_map))
    facts = [f"{n.sizes[k]} of {n.n_map} map points ({share})"]
    if k in n.labelled:
        facts.append(f"{n.labelled[k]} labelled images ({pct(n.dist.get(k, {}).get('labelled_share'))})")
    p = n.per.get(k, {})
    if p:
        facts.append(f"classifier precision {p['precision']:.2f}, recall {p['recall']:.2f}")
    identity = run.get("identity", {}).get(k)
    return cluster_section(k, run["names"][k], facts, gallery, identity, None if planted is None else planted[k])


def _facets_section(run: dict, gallery: dict) -> str:
    """Each facet: its name, its clusters, its share of the labelled images (else of the map), a gallery."""
    facets = run.get("facets") or []
    if not facets:
        return ""
    parts = []
    for f in facets:
        members = ", ".join(f"{run['names'][k]} (id {k})" for k in f["clusters"])
        share = pct(len(f["rows"]) / max(1, f["total"]))
        facts = f"clusters: {members} - {len(f['rows'])} of {f['total']} images ({share}; {f['of']})"
        parts.append(
            f'<section class="facet-section" id="facet-{int(f["id"])}"><h3>{esc(f["name"])} '
            f"<small>(facet {int(f['id'])})</small></h3><p>{esc(facts)}</p>"
            f'<div class="gallery">{"".join(figure(g) for g in gallery.get(("facet", f["id"]), []))}</div></section>'
        )
    return (
        "<h2>Facets</h2><p>A facet is a set of clusters named once; an image belongs to it when the merged model "
        "gives its clusters together a probability of at least 0.5 (the lists in facets/).</p>" + "".join(parts)
    )


def _clusters(run: dict, n: Counts, gallery: dict, planted: dict | None) -> str:
    """Every cluster's section; with several views, the chosen view's (the switch shows one view at a time)."""
    center = "".join(_cluster_section(run, k, n, gallery.get(k, []), planted) for k in run["names"])
    if not run.get("views"):
        return "<h2>Clusters</h2>" + center
    return "<h2>Clusters</h2>" + report_views.galleries(run, center, gallery)


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
        rows.append([name, pct(a), pct(b), "-" if ratio is None else f"{ratio:.2f}"])
        classes.append("drift" if ratio is None and b > 0 or ratio is not None and not 0.67 <= ratio <= 1.5 else "")
    drawn = "not on the map (see below)" if second.get("unplaced") else "drawn over the map in black"
    note = f'<p class="note">{esc(second["unplaced"])}</p>' if second.get("unplaced") else ""
    return (
        f"<h2>New data: {esc(second['list'])}</h2><p>A second labelling, made with this run's merged model "
        f"({esc(second['path'])}), {drawn}; in red, clusters whose share changed by more "
        "than 1.5 times: where the new data drifts.</p>"
        + note
        + table(["cluster", "labelled share", "new data share", "ratio"], rows, classes)
    )


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
    } | ({"views": report_views.map_data(run["views"])} if run.get("views") else {})


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
        normalization_section(run["source"].get("sanity")),
        _pca(run["metrics"], figs),
        _map(run),
        report_views.section(run) if run.get("views") else "",
        _compare(run, figs, n),
        _distribution_table(run, n),
        _drift(run),
        _rule(run["metrics"]),
        _sweep(figs),
        _planted_table(run["evaluation"]),
        report_views.planted_table(run["evaluation"]) if run.get("views") else "",
        _cost_model(run.get("scale"), run.get("source")),
        _facets_section(run, gallery),
        _clusters(run, n, gallery, planted),
    ]
    return page("\n".join(b for b in blocks if b), _map_data(run, slots))
