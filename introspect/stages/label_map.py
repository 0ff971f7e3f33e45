"""Where `label` puts new rows: the clusters.h5 its merged model was made from, found from any folder.

The map positions (`science.placement`) and the subset's cluster shares (the drift table) come
from the run's clusters.h5. `merge` records that file's absolute path and sha256 in the merged
model (`introspect.clusters_path`, `introspect.clusters_sha256`), so labelling new data into a
new folder still finds it; the sha256 decides, so a re-clustered run is never mixed with a model
merged from the earlier clustering. Looked for in the label folder, beside the model, then at the
recorded path (a run folder moved with its model is found). When none matches, label says so in
one line and writes labels without map positions or subset shares.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..engine import nets, store
from ..engine.merged import UNKNOWN
from ..engine.rundir import RunDir
from ..science import placement

log = logging.getLogger(__name__)

#: clusters.h5 datasets that place new rows on the map (written by the cluster stage).
PLACEMENT = ("map_pca_mean", "map_pca_components", "map_pca_rows", "tsne")


def find_clusters(run_dir: RunDir, model_path: Path, meta: dict) -> tuple[Path | None, str]:
    """The clusters.h5 the merged model was made from, or (None, why not: one clause naming the file)."""
    here = run_dir.path("clusters")
    sha = meta.get("clusters_sha256")
    if not sha:  # merged before the model recorded it: the label folder's own, as before
        if here.is_file():
            return here, ""
        return None, f"{model_path} records no clusters.h5 (its run had none, or an older version merged it)"
    recorded = Path(meta.get("clusters_path") or "clusters.h5")
    seen: list[Path] = []
    for path in (here, model_path.parent / "clusters.h5", recorded):
        if not path.is_file() or path.resolve() in seen:
            continue
        seen.append(path.resolve())
        if nets.sha256_file(path) == sha:
            return path, ""
    if seen:  # the run's file is there, but not as it was at the merge
        return None, f"{seen[-1]} changed since {model_path.name} was merged from it (clustered again?)"
    return None, f"{recorded}, which {model_path.name} was merged from, is not there any more"


def map_placer(clusters_h5: Path | None, channels: int | None = None) -> placement.PlaceOnMap | None:
    """What places labelled rows on the subset's map, from clusters.h5; None when it lacks the datasets."""
    if clusters_h5 is None or not clusters_h5.is_file():
        return None
    with store.open_h5(clusters_h5) as f:
        if not all(k in f for k in PLACEMENT):
            log.info("label: %s has no map projection (made before it was saved); no map positions", clusters_h5)
            return None
        mean, comps, rows, Y = (f[k][:] for k in PLACEMENT)
    if len(rows) != len(Y) or comps.shape[0] != rows.shape[1] or (channels and comps.shape[1] != channels):
        log.warning("label: %s's map projection does not fit the model; no map positions", clusters_h5)
        return None
    return placement.PlaceOnMap(placement.MapPlacer().fit(rows, Y), mean, comps)


def distribution(
    clusters_h5: Path | None, counts: dict[int, int], names: dict[int, str], drift: float, key: str = "label"
) -> list[dict]:
    """Each cluster's share of the clustered subset (noise left out, as in training) vs of the labelling.

    `labelled_share` is of every labelled image (with an `unknown` row, the rows sum to 1);
    `difference`, `ratio` and the drift flag compare the share among the images that got a
    cluster (unknown left out, as noise is on the subset's side), so a threshold is not drift.
    """
    subset = {}
    lab = None
    if clusters_h5 is not None and clusters_h5.is_file():
        with store.open_h5(clusters_h5) as f:
            lab = f[key][:] if key in f else None
    if lab is not None:  # the subset's labels in this view (`key`: `label`, or `views/V/label`)
        lab = lab[lab >= 0]
        subset = {k: float(np.mean(lab == k)) if len(lab) else 0.0 for k in names if k != UNKNOWN}
    total = max(1, sum(counts.values()))
    known = max(1, total - counts.get(UNKNOWN, 0))
    rows = []
    for k, name in names.items():
        share = counts[k] / total
        before = subset.get(k)
        ratio = counts[k] / known / before if before else None
        flagged = before is not None and (ratio is None or not 1 / drift <= ratio <= drift)  # unknown: never
        rows.append(
            {
                "cluster": k,
                "name": name,
                "subset_share": before,
                "labelled_share": share,
                "difference": None if before is None else counts[k] / known - before,
                "ratio": ratio,
                "images": counts[k],
                "flagged": flagged,
            }
        )
    return rows
