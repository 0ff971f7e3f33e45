"""The small HTML pieces every section of the report is made of: escaping, tables, colour dots,
legend chips, a gallery figure, one cluster's section, the identity note.

Every text that comes from data goes through `esc` (HTML) or `json_for_html` (the page's JSON).
"""

from __future__ import annotations

import html
import json

import numpy as np

from .report_colors import color


def esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def json_for_html(data: object) -> str:
    """JSON safe inside <script>: no `</script>`, no `<!--` can end or bend it."""
    return (
        json.dumps(data, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    )


def table(head: list[str] | None, rows: list[list[object]], classes: list[str] | None = None) -> str:
    th = "".join(f"<th>{esc(h)}</th>" for h in head or [])
    trs = "".join(
        f"<tr{' class=' + chr(34) + esc(classes[i]) + chr(34) if classes and classes[i] else ''}>"
        + "".join(f"<td>{esc(c)}</td>" for c in row)
        + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table>{f'<thead><tr>{th}</tr></thead>' if head else ''}<tbody>{trs}</tbody></table>"


def pct(x: object) -> str:
    try:
        return f"{float(x):.2%}"
    except (TypeError, ValueError):
        return "-"


def num(x: object, fmt: str = ".2f") -> str:
    """A number as `fmt`, or "-" where the file had none (or not a number)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "-"
    return format(x, fmt)


def rule_table(d: dict) -> str:
    """The stability rule's table from a `discovery` record (the pick highlighted), or "" when there is none."""
    if not d.get("table"):
        return ""
    rows = [
        [r["method"], r["k"], r.get("stable_sized", r["stable"]), pct(r["stable_share"]), f"{r['ari']:.2f}"]
        for r in d["table"]
    ]
    pick = [i for i, r in enumerate(d["table"]) if (r["method"], r["k"]) == (d["method"], d["k"])]
    classes = ["pick" if i in pick else "" for i in range(len(rows))]
    edge = " The pick is at the edge of the grid: widen cluster.k_grid." if d.get("boundary") else ""
    return f"<p>{esc(d['rule'])}, over subsample refits (highlighted: the pick).{edge}</p>" + table(
        ["method", "k", "stable clusters (>= 2 % of rows)", "rows in stable clusters", "ARI"], rows, classes
    )


def dot(k: int) -> str:
    return f'<span class="dot" style="background:{color(k)}"></span>'


def legend_chips(names: dict[int, str], label: np.ndarray, anchor: str = "") -> str:
    """One chip per cluster (a link to its section, `#<anchor>cluster-<k>`), then the noise count."""
    chips = "".join(f'<a class="chip" href="#{esc(anchor)}cluster-{k}">{dot(k)}{esc(names[k])}</a>' for k in names)
    noise = int((label < 0).sum())
    if noise:
        chips += f'<span class="chip">{dot(-1)}noise ({noise})</span>'
    return chips


def figure(g: dict) -> str:
    """One gallery image with its name as caption (an aligned crop's source photo, else its path), the path in
    its title; an unreadable one as a blank."""
    name, path = g.get("name") or g["path"], g["path"]
    title = esc(path if name == path else f"{name} (crop {path})")
    name = esc(name)
    if not g["src"]:
        return f'<figure class="missing"><div class="blank"></div><figcaption>{name} (unreadable)</figcaption></figure>'
    return f'<figure><img src="{esc(g["src"])}" alt="" title="{title}"><figcaption>{name}</figcaption></figure>'


def identity_text(row: dict) -> str:
    """What the cluster stage measured of a flagged cluster's people, from the keys its identity row has."""
    parts = []
    pairs = row.get("same_person_pairs")
    if isinstance(pairs, (int, float)) and not isinstance(pairs, bool):
        parts.append(f"{pairs:.0%} of member pairs look like one person")
    people = row.get("people")
    if isinstance(people, int) and not isinstance(people, bool):
        parts.append(f"{people} {'person' if people == 1 else 'people'}")
    largest = row.get("largest_share")
    if isinstance(largest, (int, float)) and not isinstance(largest, bool):
        parts.append(f"the largest holds {largest:.0%}")
    top = row.get("top_share")  # what the flag is decided on: the 3 largest people's share
    if isinstance(top, (int, float)) and not isinstance(top, bool):
        parts.append(f"the 3 largest hold {top:.0%}")
    return "; ".join(parts) or "flagged"


def identity_short(row: dict) -> str:
    """The distribution table's identity cell: the pair share and, when counted, the people."""
    cells = [f"pairs {num(row.get('same_person_pairs'))}"] if "same_person_pairs" in row else []
    if isinstance(row.get("people"), int):
        cells.append(f"{row['people']} people")
    return f"yes ({', '.join(cells)})" if cells else "yes"


def cluster_section(
    k: int,
    name: str,
    facts: list[str],
    gallery: list[dict],
    identity: dict | None = None,
    planted: list[str] | None = None,
    anchor: str = "",
) -> str:
    """One cluster: its name and id, its facts in a line, the identity and planted notes, its gallery."""
    attrs = ""
    if identity is not None:
        attrs += (
            f'<p class="identity">mostly one or a few people (identity: {esc(identity_text(identity))}): '
            "it says little about attributes</p>"
        )
    if planted is not None:
        attrs += f"<p class=planted>planted: {esc('; '.join(planted)) if planted else 'no attribute stands out'}</p>"
    return (
        f'<section class="cluster-section" id="{esc(anchor)}cluster-{k}"><h3>{dot(k)}'
        f"{esc(name)} <small>(id {k})</small></h3><p>{esc(' - '.join(facts))}</p>{attrs}"
        f'<div class="gallery">{"".join(figure(g) for g in gallery)}</div></section>'
    )


def normalization_section(sanity: object) -> str:
    """extract's normalization check (the `sanity` attribute's "normalization"): each setting's figures, the verdict."""
    try:
        fig = json.loads(sanity)["normalization"] if isinstance(sanity, str) else None
        conf, alts = fig["configured"], fig["alternatives"]
    except (ValueError, KeyError, TypeError):
        return ""  # an older run, or the check was off

    def setting(r: dict) -> str:
        return f"mean {r.get('mean', '?')}, std {r.get('std', '?')}, rgb {str(r.get('rgb', '?')).lower()}"

    rows = [["configured", setting(conf), num(conf.get("mean_cosine"), ".3f"), num(conf.get("effective_rank")), ""]]
    classes = [""]
    for name, r in alts.items():
        if r.get("configured"):
            continue
        rows.append(
            [name, setting(r), num(r.get("mean_cosine"), ".3f"), num(r.get("effective_rank")), r.get("flags", "")]
        )
        classes.append("pick" if name == fig.get("better") else "")
    better = fig.get("better")
    verdict = (
        f"<b>{esc(better)} spreads the embeddings clearly more than the configured normalization</b> (highlighted): "
        "the run was probably extracted with the wrong mean/std/rgb."
        if better
        else "No standard normalization spreads the embeddings clearly more than the configured one."
    )
    return (
        f"<h2>Normalization check</h2><p>The net's embeddings of the first {esc(fig.get('images', '?'))} images "
        f"under the configured normalization and the standard ones (clearly better: {esc(fig.get('rule', '?'))}). "
        f"{verdict}</p>"
        + table(
            ["normalization", "setting", "mean cosine (lower: more spread)", "effective rank", "flags"], rows, classes
        )
    )
