"""The report's pictures: gallery thumbnails, the map's hover sprites, the matplotlib figures, and
the planted attributes that stand out per cluster (synthetic runs).

Images are read through the run's source (`engine.sources`), decoded and shrunk on a thread pool;
an unreadable image becomes a blank, never an error.
"""

from __future__ import annotations

import math
import os
import shutil
import textwrap
from pathlib import Path

import cv2
import numpy as np

from .. import synth
from ..engine import source_names, sources
from ..engine.images import MAX_BYTES, decode
from ..engine.rundir import RunDir
from ..science import planted
from .report_colors import NOISE_COLOR, color
from .report_run import CENTER, read_lines

THUMB = 64  # px, gallery
HOVER = 48  # px, map hover thumbnails, packed in sprite sheets
SHEET = 32  # thumbnails per sheet side (32 x 32 = 1024 per sheet)


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

    def batch(part: list[str]) -> list[np.ndarray | None]:  # a remote source fetches the part's images together
        read = sources.batch_reader(source, part, MAX_BYTES)
        out = []
        for ln in part:
            data = read(ln)[0]  # every line, in order ("" is no image)
            out.append(None if data is None else decode(data, (size, size))[0])
        return out

    parts = [lines[i : i + 64] for i in range(0, len(lines), 64)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return [t for got in pool.map(batch, parts) for t in got]


def _map_source(run: dict) -> dict:
    """The map's points as a gallery source: the subset's rows, in the list that was extracted."""
    faces_sha = (run.get("source") or {}).get("faces_sha256")
    return {"index": run["index"], "label": run["label"], "list": run["list"], "images": run["images"]} | (
        {"faces_sha256": faces_sha} if faces_sha else {}
    )


def write_gallery(run: dict, folder: Path, per_cluster: int, seed: int) -> dict[object, list[dict]]:
    """Up to `per_cluster` images per cluster, drawn reproducibly from the labelling (else the subset).

    Keys: cluster id; ("facet", id); ("view", name, id) for a further view's clusters, drawn from
    its labelling (labels.h5 `label_<name>`) or, when the labelling has none, from the map's
    points (their thumbnails named `m<line>.jpg`: the lists may differ). The center's draws come
    first, so a run's galleries do not change when views are added.
    """
    main = run.get("labels") or _map_source(run)
    mapped = _map_source(run) if run.get("labels") else main
    rng = np.random.default_rng(seed)
    picks: dict[object, tuple[dict, np.ndarray]] = {}

    def pick(key: object, source: dict, rows: np.ndarray) -> None:
        drawn = rng.choice(rows, min(per_cluster, len(rows)), replace=False) if len(rows) else rows
        picks[key] = (source, np.sort(source["index"][drawn]).astype(np.int64))

    for k in run["names"]:
        pick(k, main, np.flatnonzero(main["label"] == k))
    for f in run.get("facets") or []:  # rows index the same source as the clusters'
        pick(("facet", f["id"]), main, np.asarray(f["rows"], np.int64))
    for view in run.get("views") or []:
        if view["name"] == CENTER or view["skipped"] is not None:
            continue
        own = view["labelled"] is not None
        source, label = (main, view["labelled"]) if own else (mapped, view["label"])
        for k in view["names"]:
            pick(("view", view["name"], k), source, np.flatnonzero(label == k))
    folder.mkdir(parents=True, exist_ok=True)
    gallery: dict[object, list[dict]] = {}
    for source, prefix in [(main, "")] + ([(mapped, "m")] if mapped is not main else []):
        keys = [key for key, (s, _) in picks.items() if s is source]
        wanted = np.concatenate([picks[key][1] for key in keys] or [np.zeros(0, np.int64)])
        lines = read_lines(source["list"], wanted)
        shown = source_names.shown_names(source["list"], wanted, source.get("faces_sha256"))  # aligned crops' photos
        for key in keys:
            idx = picks[key][1]
            gallery[key] = []
            texts = [lines.get(int(i), "") for i in idx]
            for i, line, img in zip(idx, texts, thumbnails(source["images"], texts, THUMB)):
                name = f"{prefix}{int(i)}.jpg"
                if img is not None:
                    cv2.imwrite(str(folder / name), img, [cv2.IMWRITE_JPEG_QUALITY, 85])
                src = f"thumbs/{name}" if img is not None else None
                gallery[key].append({"src": src, "path": line, "index": int(i), "name": shown.get(int(i), line)})
    return {key: gallery[key] for key in picks}


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
    shown = source_names.shown_names(run["list"], run["index"][chosen], (run.get("source") or {}).get("faces_sha256"))
    run["hover_lines"] = lines | shown  # an aligned crop is shown by its source photo's name
    return slot


# --------------------------------------------------------------------------- figures


def how(metrics: dict) -> str:
    """How the clusters were found, in a few words (runs from before the pca space say map)."""
    d = metrics.get("discovery") or {"space": "map", "method": metrics.get("cluster", {}).get("method", "?")}
    if d["space"] == "pca":
        rule = (
            ", k chosen by stability" + (" (at the grid's edge)" if d.get("boundary") else "") if d.get("rule") else ""
        )
        return f"{d['method']} in the whitened PCA space ({d.get('components', '?')} components){rule}"
    c = metrics.get("cluster", {})
    return f"{d['method']} on the map (eps {c.get('eps')}, min_samples {c.get('min_samples')})"


def panel_title(title: str, width: int = 50) -> str:
    """A panel's title wrapped to lines that fit its 5-inch panel: matplotlib clips a long one at the figure's
    edge (the pca space's "kmeans in the whitened PCA space (50 components), k chosen by stability" lost both ends)."""
    return textwrap.fill(title, width)


def compare_figure(Y: np.ndarray, panels: list[tuple[str, np.ndarray]]):
    """The map once per labelling, side by side (5 inches a panel), each point in its cluster's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), squeeze=False)
    for ax, (title, c) in zip(axes[0], panels):
        noise = c < 0
        ax.scatter(Y[noise, 0], Y[noise, 1], s=1, c=NOISE_COLOR, rasterized=True)
        ax.scatter(Y[~noise, 0], Y[~noise, 1], s=1, c=[color(int(k)) for k in c[~noise]], rasterized=True)
        ax.set_title(panel_title(title), fontsize=10)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


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
    panels = [(f"clustering ({how(run['metrics'])})", lab)] + (
        [("classifier on the activations", pred)] if pred is not None else []
    )
    fig = compare_figure(Y, panels)
    fig.savefig(folder / "compare.png", dpi=80)
    plt.close(fig)
    made["compare"] = "compare.png"
    contact = RunDir(run["out"]).path("contact")
    if contact.is_file():
        shutil.copy(contact, folder / "contact.png")
        made["contact"] = "contact.png"
    return made


# --------------------------------------------------------------------------- planted attributes


def planted_targets(run: dict) -> dict[str, np.ndarray] | None:
    """The planted attributes of the map's points as binary targets, or None when the run has no ground truth."""
    csv_path = synth.attrs_path(run["list"])
    if not csv_path.is_file():
        return None
    return planted.binary_targets(planted.read_attrs(csv_path, run["index"]))


def over_represented(
    targets: dict[str, np.ndarray], label: np.ndarray, names: dict[int, str], top: int = 3
) -> dict[int, list[str]]:
    """Per cluster, the planted attribute values most over-represented in it."""
    out = {}
    for k in names:
        members = label == k
        scored = []
        for name, y in targets.items():
            inside, overall = float(y[members].mean()) if members.any() else 0.0, float(y.mean())
            if inside >= 0.2 and overall > 0 and inside / overall >= 1.5:
                scored.append((inside / overall, f"{name} {inside:.0%} (all: {overall:.0%})"))
        out[k] = [t for _, t in sorted(scored, reverse=True)[:top]]
    return out
