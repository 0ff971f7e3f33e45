"""Discovery in whitened PCA space (introspect/science/discovery.py) vs today's map + KNN-DBSCAN.

Per dataset (a prepared `subset.h5` with `prefacen`, `facen`, `index`, and the generator's attrs
CSV), prints per planted attribute the best-union F1 (`evaluate.best_union`) of:

- **pick**: the partition `discovery.select_k` chooses without labels (method and k), and its
  chance value (`evaluate.chance_f1`, target shuffled);
- **grid best**: the best F1 any (method, k) of the grid reaches: what a perfect rule would get;
- **today**: t-SNE (perplexity 30, PCA 50, seed 0) + KNN-DBSCAN (eps 0.2, min_samples 20,
  subsample 0.5, seed 42), the demo's sweep pick, and its chance value.

Then NMI with the attribute combination, the mean (F1 - chance) over attributes, the facets'
best single-facet F1 per attribute, the identity measure's separation of identity-dominated
clusters (AUC), and the unknown threshold's flagged rates.  Ground truth is read only to score.

    .venv/bin/python bench/discovery.py --data /work/scratch/disc/a --data /work/scratch/disc/b
    .venv/bin/python bench/discovery.py --subset runs/demo/subset.h5 --attrs lists/demo.attrs.csv

`--data DIR` means DIR/run/subset.h5 and DIR/list.attrs.csv.  `--cache DIR` keeps the t-SNE maps.

`--views --caps N` runs every default view twice on each set, with the size caps (`cluster.rule_rows`,
`cluster.noid_rows`, `classifier.cv_rows`) off and at N rows, and prints both evaluations.

`--views` instead runs the cluster stage itself on DIR/run with its defaults (every view: center,
spatial mean, identity-removed) and `evaluate`, and prints per view the mean over attributes of
union F1 minus chance, the best view per attribute against best-of-views chance, the noid view's
approximation accuracy, and the stage's time beside the center view alone (`cluster.views =
["center"]`, today's stage) on the same subset:

    .venv/bin/python bench/discovery.py --views --data /work/scratch/views/a --data /work/scratch/views/b
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from sklearn.metrics import normalized_mutual_info_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from introspect.science import discovery  # noqa: E402
from introspect.science.clustering import KNNDBSCAN  # noqa: E402
from introspect.science.planted import ATTRIBUTES, best_union, binary_targets, chance_f1, read_attrs  # noqa: E402

TARGETS = ("glasses", "glasses=clear", "glasses=sun", "mask=medical", "pose", "dark", "gray", "blur", "occluder")


def load(subset: Path, attrs_csv: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    with h5py.File(subset, "r") as f:
        X, E, index = f["prefacen"][:], f["facen"][:], f["index"][:]
    ok = np.isfinite(X).all(axis=1) & np.isfinite(E).all(axis=1)
    X, E, index = X[ok], E[ok], index[ok]
    return X.astype(np.float32), E.astype(np.float32), index, read_attrs(attrs_csv, index)


def today(X: np.ndarray, cache: Path | None, name: str) -> np.ndarray:
    """The demo's chosen setting of today's method: map, then KNN-DBSCAN on the map."""
    from introspect.science import tsne

    path = cache / f"{name}.map.npy" if cache else None
    if path is not None and path.is_file():
        Y = np.load(path)
    else:
        Z, _ = tsne.pca(X, 50, seed=0)
        Y, _ = tsne.embed(Z, tsne.TSNEParams(perplexity=30.0, n_iter=750, seed=0))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, Y)
    return KNNDBSCAN(eps=0.2, min_samples=20, subsample=0.5, random_state=42).fit_predict(Y)


def scores(labels: np.ndarray, targets: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    out = {}
    for t in TARGETS:
        if t in targets and targets[t].sum() >= 5:
            out[t] = (best_union(labels, targets[t])[0], chance_f1(labels, targets[t], seed=0, shuffles=3)[1])
    return out


def combination(attrs: dict) -> np.ndarray:
    return np.array(["|".join(v) for v in zip(*(attrs[c].tolist() for c in ATTRIBUTES))])


def identity_dominated(labels: np.ndarray, identity: np.ndarray, top: int = 3, share: float = 0.5) -> np.ndarray:
    """Ground truth for the identity measure: the cluster's `top` people hold >= `share` of it."""
    out = []
    for j in range(int(labels.max()) + 1):
        ids = identity[labels == j]
        counts = np.sort(np.unique(ids, return_counts=True)[1])[::-1]
        out.append(counts[:top].sum() / max(1, ids.size) >= share)
    return np.array(out)


def bench(name: str, subset: Path, attrs_csv: Path, args: argparse.Namespace) -> dict:
    X, E, index, attrs = load(subset, attrs_csv)
    targets = binary_targets(attrs)
    truth = combination(attrs)
    n_ids = len(np.unique(attrs["identity"]))
    print(f"\n=== {name}: {len(X)} rows, {n_ids} identities ({len(X) / n_ids:.1f} rows each)")
    t0 = time.perf_counter()
    n_comp = discovery.signal_components(X, args.pca)  # as the cluster stage does
    space = discovery.whitened_pca(n_comp).fit(X)
    Z = space.transform(X)
    sel = discovery.select_k(Z, args.ks, tuple(args.methods), n_boot=args.boot, random_state=0)
    if args.compare:  # more methods for the "grid best" column only; the rule never sees them
        sel["rows"] += discovery.stability_table(Z, sel["ks"], tuple(args.compare), args.boot, random_state=0)
    t1 = time.perf_counter()
    print(f"rule: {sel['method']} k={sel['k']} boundary={sel['boundary']}, {n_comp} components ({t1 - t0:.0f} s)")
    print("method    k  stable  share  meanJ   ARI   NMI  mean(F1-chance)")
    table = {}
    for r in sel["rows"]:
        s = scores(r["labels"], targets)
        table[r["method"], r["k"]] = s
        r["nmi"] = normalized_mutual_info_score(truth, r["labels"])
        r["lift"] = float(np.mean([f - c for f, c in s.values()]))
        mark = " <- pick" if r is sel["pick"] else ""
        print(
            f"{r['method']:7s} {r['k']:3d}  {r['stable']:5d}  {r['stable_share']:.2f}  {r['mean_jaccard']:.2f}"
            f"  {r['ari']:.2f}  {r['nmi']:.2f}  {r['lift']:+.3f}{mark}"
        )
    old = today(X, args.cache, name) if not args.no_today else None
    old_s = scores(old, targets) if old is not None else {}
    pick = table[sel["method"], sel["k"]]
    print(f"\n{'attribute':14s} pick F1 (chance)  grid best (at)       today F1 (chance)")
    for t, (f, c) in pick.items():
        best = max(table, key=lambda key: table[key][t][0])
        o = old_s.get(t)
        ot = f"{o[0]:.2f} ({o[1]:.2f})" if o else "-"
        print(f"{t:14s} {f:.2f} ({c:.2f})       {table[best][t][0]:.2f} ({best[0]} {best[1]:>2d})    {ot}")
    res = {
        "name": name,
        "rows": len(X),
        "identities": n_ids,
        "pick": {"method": sel["method"], "k": sel["k"], "boundary": sel["boundary"]},
        "pick_f1": pick,
        "pick_nmi": sel["pick"]["nmi"],
        "pick_lift": sel["pick"]["lift"],
        "grid": {f"{m}:{k}": v for (m, k), v in table.items()},
        "stability": [{k: v for k, v in r.items() if k != "labels"} for r in sel["rows"]],
    }
    if old is not None:
        res["today_f1"] = old_s
        res["today_clusters"] = int(old.max() + 1)
        res["today_nmi"] = float(normalized_mutual_info_score(truth, old))
        res["today_lift"] = float(np.mean([f - c for f, c in old_s.values()]))
        print(
            f"NMI pick {res['pick_nmi']:.2f} today {res['today_nmi']:.2f} ({res['today_clusters']} clusters); "
            f"mean(F1-chance) pick {res['pick_lift']:+.3f} today {res['today_lift']:+.3f}"
        )

    labels = sel["pick"]["labels"]
    # facets (the stage's: branches of a Ward tree over the centroids); each a set of clusters
    fac = discovery.tree_facets(Z, labels)
    print(f"facets ({len(fac['members'])}): " + "  ".join(str(m) for m in fac["members"]))
    fac_f1 = {}
    for t in TARGETS:
        if t in targets and targets[t].sum() >= 5:
            y = targets[t]
            f1s = [2 * (np.isin(labels, m) & y).sum() / (np.isin(labels, m).sum() + y.sum()) for m in fac["members"]]
            fac_f1[t] = float(max(f1s)) if f1s else 0.0
    print("best single-facet F1: " + "  ".join(f"{t} {v:.2f}" for t, v in fac_f1.items()))
    res["facet_f1"] = fac_f1

    # identity (the stage's measure) vs the generator's identities, on the pick and on k = 40
    res["identity"] = {}
    for k in sorted({sel["k"], 40}):
        lab = labels if k == sel["k"] else discovery.Partition(k, "kmeans").fit(Z).labels_
        _, rows = discovery.same_person_pairs(E, lab)
        v = np.array([r["same_person_pairs"] for r in rows])
        dom = identity_dominated(lab, attrs["identity"])
        flag = v >= discovery.SAME_PERSON_PAIRS
        auc = roc_auc_score(dom, v) if 0 < dom.sum() < len(dom) else float("nan")
        res["identity"][k] = {
            "dominated": int(dom.sum()),
            "flagged": int(flag.sum()),
            "caught": int((flag & dom).sum()),
            "false": int((flag & ~dom).sum()),
            "auc": float(auc),
        }
        print(
            f"identity k={k}: {int(dom.sum())} of {k} clusters identity-dominated; flagged {int(flag.sum())} "
            f"({int((flag & dom).sum())} of them right), AUC {auc:.2f}"
        )
    return res


def bench_views(name: str, folder: Path, attrs_csv: Path, args: argparse.Namespace) -> dict:
    """The cluster stage with its defaults (every view) vs the center view alone, scored by `evaluate`."""
    from introspect import config
    from introspect.stages import cluster, evaluate

    cfg = config.load(None)
    cfg["extract"]["out"] = str(folder)
    cfg["data"]["list"] = str(attrs_csv.with_name("list.txt"))
    cfg["model"]["path"] = str(args.model)
    res: dict = {"name": name}
    if args.caps:
        return bench_caps(name, cfg, attrs_csv, args.caps)
    for views in (["center"], list(cfg["cluster"]["views"])):
        cfg["cluster"]["views"] = views
        t0 = time.perf_counter()
        m = cluster.run(cfg).metrics
        res[f"seconds_{len(views)}"] = time.perf_counter() - t0
    rec = evaluate.run(cfg, attrs_csv=attrs_csv).record
    from introspect.science.planted_views import format_views

    print(f"\n=== {name}: {m['rows']} rows, views")
    with h5py.File(folder / "clusters.h5", "r") as f:
        index = f["index"][:]
        labelled = {v: g["label"][:] for v, g in f["views"].items()}
    identity = read_attrs(attrs_csv, index)["identity"]
    res["identity_flags"] = {}
    for v in m["views"]:
        if v.get("skipped"):
            print(f"  {v['name']}: skipped: {v['skipped']}")
            continue
        acc = v["classifier"]["accuracy"] if v.get("classifier") else float("nan")
        flag = np.array([r["flagged"] for r in v["identity"]], bool)
        lab = labelled[v["name"]]
        dom = identity_dominated(lab[lab >= 0], identity[lab >= 0])[: len(flag)]  # the truth: top 3 people >= 50 %
        res["identity_flags"][v["name"]] = {
            "flagged": int(flag.sum()),
            "dominated": int(dom.sum()),
            "caught": int((flag & dom).sum()),
        }
        extra = (
            f", {v['identity_removed']['rows_with_other_photos']:.0%} rows with other photos"
            if "identity_removed" in v
            else ""
        )
        print(
            f"  {v['name']}: k = {v['clusters']}, head {v['grafted']} at held-out accuracy {acc:.3f}; identity: "
            f"{int(flag.sum())} flagged, {int(dom.sum())} truly one to three people, {int((flag & dom).sum())} of them "
            f"flagged{extra}; {v['seconds']:.0f} s"
        )
    if rec.get("views"):
        print(format_views(rec["views"]))
        res["views"] = rec["views"]
    every, alone = res[f"seconds_{len(views)}"], res["seconds_1"]
    print(f"cluster stage: center only {alone:.0f} s, every view {every:.0f} s ({every / alone:.2f}x)")
    res["metrics_views"] = [{k: v.get(k) for k in ("name", "clusters", "skipped", "grafted")} for v in m["views"]]
    return res


CAPS = ("cluster.rule_rows", "cluster.noid_rows", "classifier.cv_rows")


def bench_caps(name: str, cfg: dict, attrs_csv: Path, cap: int) -> dict:
    """Every default view with the size caps off (0) and at `cap` rows, same subset: the discovery figures side
    by side (the caps must not lower them) and the stage's time."""
    from introspect.science.planted_views import format_views
    from introspect.stages import cluster, evaluate

    res: dict = {"name": name, "cap": cap}
    for value in (0, cap):
        for key in CAPS:
            section, _, k = key.partition(".")
            cfg[section][k] = value
        t0 = time.perf_counter()
        m = cluster.run(cfg).metrics
        seconds = time.perf_counter() - t0
        rec = evaluate.run(cfg, attrs_csv=attrs_csv).record
        label = "caps off" if value == 0 else f"caps at {cap:,} rows"
        print(f"\n=== {name}: {m['rows']:,} rows, every view, {label} ({', '.join(CAPS)}): stage {seconds:.0f} s")
        print(format_views(rec["views"]))
        res[label] = {
            "seconds": seconds,
            "views": rec["views"],
            "k": {v["name"]: v.get("clusters") for v in m["views"]},
        }
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", action="append", default=[], help="folder with run/subset.h5 and list.attrs.csv")
    ap.add_argument("--subset", type=Path)
    ap.add_argument("--attrs", type=Path)
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40])
    ap.add_argument("--methods", nargs="+", default=["kmeans"], help="methods the rule chooses among")
    ap.add_argument("--compare", nargs="*", default=["ward"], help="methods scored for 'grid best' only")
    ap.add_argument("--pca", type=int, default=50)
    ap.add_argument("--boot", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--no-today", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--views", action="store_true", help="run the cluster stage's views and evaluate them")
    ap.add_argument("--caps", type=int, default=0, help="with --views: every view with the size caps off vs at N rows")
    ap.add_argument("--model", type=Path, default=Path("models/sface.onnx"), help="the net (for --views)")
    args = ap.parse_args(argv)
    sets = [(Path(d).name, Path(d) / "run" / "subset.h5", Path(d) / "list.attrs.csv") for d in args.data]
    if args.subset:
        if not args.attrs:
            ap.error("--subset needs --attrs")
        sets.append((args.subset.parent.name, args.subset, args.attrs))
    if not sets:
        ap.error("give --data DIR or --subset/--attrs")
    if args.views:
        results = [bench_views(name, subset.parent, attrs, args) for name, subset, attrs in sets]
    else:
        results = [bench(*s, args) for s in sets]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
