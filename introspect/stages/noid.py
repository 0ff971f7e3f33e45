"""The identity-removed view's features: each subset row's spatial mean minus its person's other photos' mean.

Split from the cluster stage (`cluster.fit_view` calls `identity_removed`); the science is in
`science.identity`.
"""

from __future__ import annotations

import logging

import numpy as np

from ..engine import store
from ..engine.rundir import RunDir
from ..science import identity, views
from ..science.clustering import ClusterSettings

log = logging.getLogger("introspect.stages.cluster")

#: The identity-removed view subtracts the mean of a row's nearest rows in the embedding that are closer
#: than this share of strangers (random pairs): the person's other photos where the data has them, else
#: the closest look-alikes, which share most of what makes a face that face (averaged over
#: `cluster.same_person` of them, weighted by closeness to the best one: `identity.similarity_weights`;
#: their own attributes fall toward the base rates). A strict same-person line
#: (0.1 expected false matches per row among all rows) is only reported: on generated faces, where
#: strangers look alike to the net (median cosine 0.56), it is above 1 and no row would have a neighbour.
LOOK_ALIKE = 0.025


def identity_removed(
    s, run_dir: RunDir, c: ClusterSettings, F: np.ndarray
) -> str | tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(the spatial mean minus each searched row's person's mean, which of them have one, the searched rows of the
    subset, what was found), or why not.

    A person's other photos are looked for among every extracted row (full.h5), so a 2 % subset
    still finds them; without full.h5 (extract.full = false) among the subset's rows only, said so.
    Above `c.noid_rows` subset rows, a seeded sample of that many is searched (`views.rule_sample`): the
    search costs a few milliseconds a row (Annoy), the one step of a view that grows with rows x rows.
    """
    if s.E is None:
        return "subset.h5 has no embeddings (facen) to find a person's other photos by"
    full = run_dir.path("full")
    where = "the subset (full.h5 holds no facen and prefacen_mean)"
    searched = views.rule_sample(len(F), c.noid_rows, c.seed)
    searched = np.arange(len(F)) if searched is None else searched
    E_all, M_all, rows = s.E, F, searched
    f = None
    if full.is_file():
        f = store.open_h5(full)
        if {"facen", "index", views.DATASETS["mean"]} <= set(f):
            index = f["index"][:]
            at = np.searchsorted(index, s.index[searched])
            if len(index) and np.array_equal(index[np.clip(at, 0, len(index) - 1)], s.index[searched]):
                E_all, M_all, where = f["facen"], f[views.DATASETS["mean"]], f"all {len(index)} extracted rows"
                rows = at
    E_q, F = (s.E, F) if len(searched) == len(F) else (s.E[searched], F[searched])  # M_all keeps every row
    try:
        impostors = identity.fit_impostors(s.E, random_state=c.seed)
        n_all = len(E_all)
        found = identity.same_person_neighbours(
            E_q,
            rows,
            E_all,
            k=2 * c.same_person,  # room for copies, which drop_copies then sets aside
            impostors=impostors,
            false_matches=LOOK_ALIKE * n_all,  # closer than 97.5 % of strangers (see LOOK_ALIKE)
            duplicate=np.inf,
        )
        found = identity.drop_copies(found, F, M_all, F, k=c.same_person, random_state=c.seed)
        strict = impostors.line(n_all)
        likely = float((np.nan_to_num(found.cosine[:, 0], nan=-1.0) >= strict).mean()) if len(F) else 0.0
        removed = identity.remove_identity(F, found, M_all, weights=identity.similarity_weights(found, impostors.scale))
    finally:
        if f is not None:
            f.close()
    info = {
        "identity_removed": {
            "searched": where,
            "rows_searched": int(len(searched)),
            "method": found.method,
            "neighbour_line": round(found.same, 4),
            "copies": f"activations closer than {identity.COPY_SHARE} of random rows' median distance",
            "rows_with_other_photos": round(removed.share, 4),
            "rows_with_a_likely_same_person_photo": round(likely, 4),
            "same_person_line_strict": round(strict, 4),
            "near_duplicates_left_out": int(found.duplicates.sum()),
            "neighbours_per_row": round(float(removed.used[removed.mask].mean()), 2) if removed.mask.any() else 0.0,
        }
    }
    log.info("cluster: view noid: same-person rows searched among %s; %s", where, info["identity_removed"])
    if removed.skipped:
        return removed.skipped
    return removed.features, removed.mask, searched, info
