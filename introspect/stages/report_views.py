"""The report's views (issue 17): a clustering is one view of the subset; the page shows each.

metrics.json's `views` (center first) says what each view is and what it found; clusters.h5
`views/<name>/label` holds its clusters on the map's points and labels.h5 `label_<name>` its
labelling (`report_run.load_views` reads them). The page then gets a switch that recolours the
map and shows the chosen view's legend and galleries, a table of the views (a skipped one with
its reason, an approximate one with its held-out accuracy) and, when evaluate scored them, each
view's union F1 per planted attribute beside chance. A run of one view or none (older runs, the
reference pipeline) has no `run["views"]`, and nothing here is called: its page is as before.
"""

from __future__ import annotations

import numpy as np

from .report_colors import color
from .report_html import cluster_section, esc, legend_chips, num, pct, rule_table, table
from .report_run import CENTER

#: A view's metrics.json keys the table shows in their own columns; any other scalar goes to its notes.
SHOWN = {
    "name",
    "feature",
    "transform",
    "grafted",
    "skipped",
    "clusters",
    "sizes",
    "shares",
    "noise",
    "discovery",
    "facets",
    "identity",
    "unknown",
    "classifier",
    "onnx_check",
    "classifier_file",
    "seconds",
}


def fitted(views: list[dict]) -> list[dict]:
    return [v for v in views if v["skipped"] is None]


def anchor(view: str) -> str:
    """The prefix of a view's cluster anchors: `cluster-<k>` for the center (as before), `view-<name>-cluster-<k>`."""
    return "" if view == CENTER else f"view-{view}-"


def switch(views: list[dict], label: str = "Colour by view:") -> str:
    """Buttons that pick the view the map is coloured by and whose galleries show (the page's script acts on them)."""
    buttons = "".join(
        f'<button type="button" class="viewbtn" data-show="{esc(v["name"])}" '
        f'aria-pressed="{"true" if v["name"] == CENTER else "false"}">{esc(v["name"])}</button>'
        for v in fitted(views)
    )
    return f'<div class="views" role="group" aria-label="view">{esc(label)} {buttons}</div>'


def legends(views: list[dict], extra: str) -> str:
    """One legend per fitted view, only the center's shown at first; `extra`: the chips every view shares."""
    parts = []
    for v in fitted(views):
        chips = legend_chips(v["names"], v["label"], anchor(v["name"])) + extra
        if v["name"] == CENTER:
            parts.append(f'<div id="legend" data-view="{CENTER}">{chips}</div>')
        else:
            parts.append(f'<div class="legend" data-view="{esc(v["name"])}" hidden>{chips}</div>')
    return "".join(parts)


def summary_row(views: list[dict]) -> list[str]:
    """The summary's line: each view with its clusters, or why it was skipped."""
    text = "; ".join(
        f"{v['name']}: skipped ({v['skipped']})"
        if v["skipped"] is not None
        else f"{v['name']}: {len(v['names'])} clusters"
        for v in views
    )
    return ["views", text]


def _merged(s: dict) -> str:
    """How the view is in the merged model: an exact head, an approximating one with its held-out accuracy, or not."""
    acc = (s.get("classifier") or {}).get("accuracy") if isinstance(s.get("classifier"), dict) else None
    if s.get("grafted") == "exact":
        return f"exact linear head (held-out accuracy {num(acc, '.3f')})"
    if s.get("grafted") == "approximate":
        return f"approximate: a linear head learns it at held-out accuracy {num(acc, '.3f')}"
    return "not in the merged model"


def _how(s: dict) -> str:
    d = s.get("discovery") if isinstance(s.get("discovery"), dict) else {}
    how = d.get("method", "?")
    if "k" in d:
        how += f", k = {d['k']}" + (" by stability" if d.get("rule") else "")
    if "components" in d:
        how += f", {d['components']} components"
    facets = s.get("facets")
    if isinstance(facets, list) and facets:
        how += f", {len(facets)} facets"
    return how


def _notes(s: dict) -> str:
    """What else the cluster stage said of the view (scalars only), so a new key shows without a change here."""
    notes = [
        f"{k.replace('_', ' ')}: {v}"
        for k, v in s.items()
        if k not in SHOWN and isinstance(v, (str, int, float)) and not isinstance(v, bool)
    ]
    if isinstance(s.get("seconds"), (int, float)):
        notes.append(f"fitted in {s['seconds']:.1f} s")
    return "; ".join(notes)


def section(run: dict) -> str:
    """The views table: what each view clusters, what it found, how it is in the merged model; skipped ones why."""
    rows, classes = [], []
    n_map = len(run["label"])
    for v in run["views"]:
        s = v["summary"]
        if v["skipped"] is not None:
            rows.append([v["name"], s.get("feature", "?"), s.get("transform", "?"), "-", "-", "-", "-", v["skipped"]])
            classes.append("skipped")
            continue
        noise = int((v["label"] < 0).sum())
        rows.append(
            [
                v["name"],
                s.get("feature", "?"),
                s.get("transform", "?"),
                f"{len(v['names'])} ({_how(s)})",
                f"{noise} ({pct(noise / max(1, n_map))})",
                len(v["identity"]),
                _merged(s),
                _notes(s),
            ]
        )
        classes.append("")
    head = ["view", "feature", "transform", "clusters", "no cluster", "identity clusters", "merged model", "notes"]
    return (
        "<h2>Views</h2><p>Each view is one clustering of the subset: a feature of the same layer (the centre "
        "pixel, or the spatial mean), transformed, then clustered with the same stability rule. The switch above "
        "the map colours it by one view and shows that view's galleries. A view that could not be built is listed "
        "with the reason.</p>" + table(head, rows, classes)
    )


def galleries(run: dict, center: str, gallery: dict) -> str:
    """The switch, then each fitted view's cluster sections (`center`: the center's); one view shown at a time."""
    blocks = [switch(run["views"], "Galleries of view:")]
    for v in fitted(run["views"]):
        name = v["name"]
        if name == CENTER:
            blocks.append(f'<div data-view="{CENTER}">{center}</div>')
            continue
        s = v["summary"]
        per = (s.get("classifier") or {}).get("per_cluster") if isinstance(s.get("classifier"), dict) else None
        per = {p["cluster"]: p for p in per or [] if isinstance(p, dict) and "cluster" in p}
        lab = v["labelled"]
        parts = []
        for k, cname in v["names"].items():
            size = int((v["label"] == k).sum())
            facts = [f"{size} of {len(v['label'])} map points ({pct(size / max(1, len(v['label'])))})"]
            if lab is not None:
                got = int((lab == k).sum())
                facts.append(f"{got} labelled images ({pct(got / max(1, len(lab)))})")
            p = per.get(k, {})
            if "precision" in p and "recall" in p:
                facts.append(f"classifier precision {num(p['precision'])}, recall {num(p['recall'])}")
            planted = (v.get("planted") or {}).get(k) if v.get("planted") is not None else None
            parts.append(
                cluster_section(
                    k,
                    cname,
                    facts,
                    gallery.get(("view", name, k), []),
                    v["identity"].get(k),
                    planted,
                    anchor(name),
                )
            )
        whence = "labelled images" if lab is not None else "map points (the labelling has no column for this view)"
        intro = f"View {name}: {s.get('transform', '?')}; galleries drawn from its {whence}"
        if lab is not None:
            unknown = int((lab < 0).sum())
            intro += (
                f"; {unknown} of {len(lab)} labelled images ({pct(unknown / max(1, len(lab)))}) in none of its clusters"
            )
        d = s.get("discovery") if isinstance(s.get("discovery"), dict) else {}
        rule = rule_table(d) if d.get("table") and d.get("rule") else ""
        rule = f"<details><summary>How this view's clusters were chosen</summary>{rule}</details>" if rule else ""
        blocks.append(f'<div data-view="{esc(name)}" hidden><p>{esc(intro)}.</p>{rule}{"".join(parts)}</div>')
    return "".join(blocks)


def planted_table(ev: dict | None) -> str:
    """evaluate's `views`: each view's union F1 per planted attribute (its chance beside), the best view against
    chance taken the same way (the best of views under shuffled targets), and the mean lift."""
    pv = (ev or {}).get("views")
    if not isinstance(pv, dict) or not isinstance(pv.get("targets"), list) or not pv["targets"]:
        return ""
    names = [str(v) for v in pv.get("views") or []]
    rows = []
    for t in pv["targets"]:
        if not isinstance(t, dict):
            continue
        per = t.get("views") if isinstance(t.get("views"), dict) else {}
        cells = [
            f"{num(per[v].get('f1_union'))} ({num(per[v].get('f1_union_chance'))})"
            if isinstance(per.get(v), dict)
            else "-"
            for v in names
        ]
        best = f"{t.get('best', '-')}: {num(t.get('f1'))} ({num(t.get('f1_chance'))})"
        rows.append([t.get("target", "?"), t.get("positives", "-")] + cells + [best])
    lift = pv.get("lift") if isinstance(pv.get("lift"), dict) else {}
    if lift:
        rows.append(
            ["mean F1 - chance", ""]
            + [num(lift.get(v), "+.3f") for v in names]
            + [num(lift.get("best_of_views"), "+.3f")]
        )
    head = ["target", "positives"] + [f"{v}: F1 union (chance)" for v in names] + ["best view: F1 (chance)"]
    return (
        "<h2>Planted attributes by view</h2><p>Each view's best union of clusters per attribute (chance: the same "
        "on shuffled targets); the best view's against the best of the views on the same shuffles, since "
        "reading several views lifts chance too.</p>"
        + table(head, rows, ["lift" if r[0] == "mean F1 - chance" else "" for r in rows])
    )


def map_data(views: list[dict]) -> list[dict]:
    """The page's script's views: the center's colouring is the data's own (`c`, `names`, `colors`), the others'
    here; `a` is the prefix of their cluster anchors."""
    out = []
    for v in fitted(views):
        if v["name"] == CENTER:
            out.append({"name": CENTER, "a": ""})
            continue
        out.append(
            {
                "name": v["name"],
                "a": anchor(v["name"]),
                "c": np.asarray(v["label"]).astype(int).tolist(),
                "names": {str(k): n for k, n in v["names"].items()},
                "colors": {str(k): color(k) for k in v["names"]},
            }
        )
    return out
