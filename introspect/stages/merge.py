"""The merge stage: graft the cluster classifier onto the net, so one ONNX file gives both answers.

`<out>/merged.onnx` takes what the net takes and returns, in this order: the net's embedding
(same name as in the net), `cluster` (int64 [N], the cluster id) and `cluster_scores` (float32
[N, K], the classifier's raw scores), plus `facets` and -1 for unknown when metrics.json asks
for them (`engine/merged.py` `add_heads`). Its metadata says how to feed it and what the outputs
mean, so the file stands on its own. Before anything is written, the merged model is run on
real images from the list and compared with the two-step path (net cut at the layer, then
`classifier.onnx`); a model that disagrees is never written.

Each further view in metrics.json's `views` that the cluster stage grafted gets its own head
(`cluster_V`, `cluster_V_scores`[, `facets_V`]) fed the center pixel or the spatial mean and its
`classifier_V.onnx`, checked the same way; skipped ones are said, not grafted.

Cluster names live in `<out>/cluster_names.toml`, made with defaults on the first run and meant
to be edited; running the stage again puts the new names into the metadata.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..engine import graph, nets, runtime, store
from ..engine.extractor import Extractor, sample_images
from ..engine.images import Preprocess
from ..engine.merged import (
    CENTER,
    FEATURES,
    GRAFTED,
    UNKNOWN,
    Head,
    add_heads,
    check_view_name,
    classifier_file,
    cluster_ids,
    describe_outputs,
    graft,
    load_facet_names,
    load_names,
    load_view_names,
    membership,
    outputs_of,
    set_aside_if_stale,
    with_metadata,
    write_names,
)
from ..engine.rundir import RunDir, write_bytes
from ..engine.stream import Inputs
from ..errors import SelfCheckFailed, UserError
from ..science import classifier

log = logging.getLogger(__name__)

#: Images the merged model is checked on, and the tolerances against the two-step path.
SCORE_TOL = 1e-4
EMBEDDING_TOL = 1e-5
FACET_TOL = 1e-5
#: A top probability this close to the unknown threshold may fall either side in two float32 paths.
THRESHOLD_TOL = 1e-6


class VerificationError(SelfCheckFailed):
    """The merged model disagrees with net + classifier.onnx; nothing was written."""


# --------------------------------------------------------------------------- verification


def softmax(scores: np.ndarray) -> np.ndarray:
    z = scores.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class ViewCheck:
    """One further view's head as `verify` checks it: its classifier, its feature, its facets and threshold."""

    view: str
    feature: str
    head: onnx.ModelProto
    facets: list[list[int]] = field(default_factory=list)
    threshold: float | None = None


def verify(
    merged: onnx.ModelProto,
    ex: Extractor,
    head: onnx.ModelProto,
    images: np.ndarray,
    batch: int = 64,
    facets: list[list[int]] | None = None,
    threshold: float | None = None,
    views: Sequence[ViewCheck] = (),
) -> dict:
    """Compare the merged model with net cut -> each view's classifier; raise VerificationError if they differ.

    With facets, each view's facets against softmax(scores) @ M in numpy; with an unknown
    threshold, its labels against -1 where numpy's top probability is below it (a row within
    THRESHOLD_TOL of it is not counted). The center view's figures are the top-level keys, each
    further view's are under `views`.
    """
    checks = [ViewCheck(CENTER, CENTER, head, list(facets or []), threshold), *views]
    cut_model, mean = ex.model, None
    if any(c.feature == "mean" for c in checks):
        used = graph.tensor_names(ex.model.graph)
        mean = next(n for n in (f"check_mean{'_' * i}" for i in range(len(used) + 1)) if n not in used)
        cut_model = graph.spatial_mean(ex.model, ex.layer, output=mean)
    one, cut = runtime.session(merged, "cpu"), runtime.session(cut_model, "cpu")
    clfs = [runtime.session(c.head, "cpu") for c in checks]
    ms = [membership(c.facets, cluster_ids(c.head)).astype(np.float64) if c.facets else None for c in checks]
    fetch = [ex.embedding]
    for c in checks:
        label, scores, facet_out = outputs_of(c.view)
        fetch += [label, scores] + ([facet_out] if c.facets else [])
    acc = [{"mismatches": 0, "score": [0.0], "facet": [0.0], "unknown": 0, "borderline": 0} for _ in checks]
    emb_diffs = [0.0]
    for lo in range(0, len(images), batch):
        x = images[lo : lo + batch]
        got = dict(zip(fetch, one.run(fetch, {ex.input: x})))
        feats = dict(
            zip(
                ["center", "embedding", "mean"],
                cut.run([ex.center, ex.embedding, mean][: 3 if mean else 2], {ex.input: x}),
            )
        )
        emb_diffs.append(np.abs(got[ex.embedding].astype(np.float64) - feats["embedding"]).max())
        for c, clf, m, a in zip(checks, clfs, ms, acc):
            label_out, scores_out, facet_out = outputs_of(c.view)
            label2, scores2 = clf.run([classifier.LABEL, classifier.SCORES], {classifier.INPUT: feats[c.feature]})
            label, label2 = got[label_out].ravel(), label2.ravel().copy()
            if c.threshold is not None:
                top = softmax(scores2).max(axis=1)
                label2[top < c.threshold] = UNKNOWN
                near = np.abs(top - c.threshold) <= THRESHOLD_TOL
                a["borderline"] += int(near.sum())
                a["unknown"] += int((label == UNKNOWN).sum())
                a["mismatches"] += int(((label != label2) & ~near).sum())
            else:
                a["mismatches"] += int((label != label2).sum())
            if m is not None:
                a["facet"].append(np.abs(got[facet_out].astype(np.float64) - softmax(scores2) @ m).max())
            a["score"].append(np.abs(got[scores_out].astype(np.float64) - scores2).max())
    emb_diff = float(np.max(emb_diffs))  # NaN stays NaN, and fails
    per_view, wrong = [], []
    for c, a in zip(checks, acc):
        score_diff, facet_diff = float(np.max(a["score"])), float(np.max(a["facet"]))
        one_view = {"rows": int(len(images)), "label_mismatches": a["mismatches"], "max_score_diff": score_diff}
        if c.facets:
            one_view["max_facet_diff"] = facet_diff
        if c.threshold is not None:
            one_view.update(unknown=a["unknown"], at_threshold=a["borderline"])
        per_view.append(one_view)
        if a["mismatches"] or not score_diff <= SCORE_TOL or not facet_diff <= FACET_TOL:
            wrong.append(
                f"{'' if c.view == CENTER else f'view {c.view}: '}{a['mismatches']} labels differ, scores by up to "
                f"{score_diff:.3g} (limit {SCORE_TOL})"
                + (f", facets by {facet_diff:.3g} (limit {FACET_TOL})" if c.facets else "")
            )
    if not emb_diff <= EMBEDDING_TOL:
        wrong.append(f"embeddings by {emb_diff:.3g} (limit {EMBEDDING_TOL})")
    if wrong:
        files = ", ".join(classifier_file(c.view) for c in checks)
        raise VerificationError(
            f"the merged model disagrees with net + {files} on {len(images)} images: "
            + "; ".join(wrong)
            + "; nothing was written"
        )
    check = {**per_view[0], "max_embedding_diff": emb_diff}
    if views:
        check["views"] = {c.view: v for c, v in zip(checks[1:], per_view[1:])}
    return check


def _read_contract(
    where: Path, facets: object, unknown: object, ids: list[int], clf: str
) -> tuple[list[dict], float | None]:
    """Facets ({id, clusters}) and unknown threshold (None: off) of one view in metrics.json, checked."""
    facets = facets or []
    bad = UserError(f"{where}: facets should be a list of {{id, clusters}}; run `make cluster` again")
    if not isinstance(facets, list):
        raise bad
    out, seen = [], set()
    for f in facets:
        if not isinstance(f, dict) or not isinstance(f.get("clusters"), list):
            raise bad
        fid, members = f.get("id"), f["clusters"]
        if not isinstance(fid, int) or isinstance(fid, bool) or fid in seen:
            raise UserError(f"{where}: facet id {fid!r} is not an integer, or appears twice; run `make cluster` again")
        if not members or not all(isinstance(k, int) and not isinstance(k, bool) and k in ids for k in members):
            raise UserError(
                f"{where}: facet {fid} lists clusters {members!r}, not some of {clf}'s clusters {ids}; "
                "run `make cluster` again"
            )
        seen.add(fid)
        out.append({"id": fid, "clusters": sorted(set(members))})
    threshold = None
    if unknown is not None:
        t = unknown.get("threshold") if isinstance(unknown, dict) else None
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0.0 < t <= 1.0:
            raise UserError(
                f"{where}: unknown should be {{quantile, threshold}} with a threshold in (0, 1], not {unknown!r:.80}; "
                "run `make cluster` again"
            )
        threshold = float(t)
    return out, threshold


def read_facets(run_dir: RunDir, ids: list[int]) -> tuple[list[dict], float | None]:
    """The cluster stage's facets ({id, clusters}) and unknown threshold (None: off) from metrics.json, checked."""
    metrics = run_dir.read_json("metrics", "cluster") or {}
    return _read_contract(
        run_dir.path("metrics"), metrics.get("facets"), metrics.get("unknown"), ids, "classifier.onnx"
    )


def read_views(run_dir: RunDir) -> tuple[list[dict], list[dict]]:
    """metrics.json's further views: (those to graft, each {name, feature, grafted, accuracy, classifier_file},
    those left out, each {name, reason}). The center view is the top-level keys; an old run has no `views`.
    """
    metrics = run_dir.read_json("metrics", "cluster") or {}
    where = run_dir.path("metrics")
    views = metrics.get("views") or []
    if not isinstance(views, list) or not all(isinstance(v, dict) for v in views):
        raise UserError(f"{where}: views should be a list of {{name, feature, grafted, ...}}; run `make cluster` again")
    graft_these, left_out, seen = [], [], set()
    for v in views:
        name = check_view_name(str(where), v.get("name"))
        if name in seen:
            raise UserError(f"{where}: view {name!r} appears twice; run `make cluster` again")
        seen.add(name)
        if name == CENTER:
            continue
        if v.get("skipped") or v.get("grafted") is None:
            reason = v.get("skipped") or "not linear in one image and no approximating head"
            left_out.append({"name": name, "reason": str(reason)[:200]})
            continue
        if v.get("feature") not in FEATURES or v.get("grafted") not in GRAFTED:
            raise UserError(
                f"{where}: view {name!r} has feature {str(v.get('feature'))[:20]!r} and grafted "
                f"{str(v.get('grafted'))[:20]!r}, not one of {list(FEATURES)} and {list(GRAFTED)}; "
                "run `make cluster` again"
            )
        file = v.get("classifier_file", classifier_file(name))
        if file != classifier_file(name):
            raise UserError(
                f"{where}: view {name!r} names classifier file {str(file)[:60]!r}, not {classifier_file(name)!r}; "
                "run `make cluster` again"
            )
        metrics_of = v.get("classifier") if isinstance(v.get("classifier"), dict) else {}
        accuracy = metrics_of.get("accuracy")
        if not isinstance(accuracy, (int, float)) or isinstance(accuracy, bool) or not 0 <= accuracy <= 1:
            accuracy = None
        graft_these.append(
            {
                "name": name,
                "feature": v["feature"],
                "grafted": v["grafted"],
                "accuracy": accuracy,
                "classifier_file": file,
                "facets": v.get("facets"),
                "unknown": v.get("unknown"),
            }
        )
    return graft_these, left_out


# --------------------------------------------------------------------------- the stage


#: What the clustered activations record about the net that made them, and what merge checks.
PROVENANCE = ("model_sha256", "layer", "embedding", "preprocess")


def check_provenance(source: Path, recorded: dict, actual: dict, what: str) -> None:
    """Refuse, in one line, to combine files made from different nets, layers or preprocessing."""
    differ = [k for k in actual if k in recorded and recorded[k] != actual[k]]
    if differ:
        k = differ[0]
        raise UserError(
            f"{source} was made with another {k.replace('_', ' ')} ({str(recorded[k])[:40]!r}, not "
            f"{str(actual[k])[:40]!r}) than {what}; use the run's own settings, or --force if you mean it"
        )


@dataclass(frozen=True)
class MergeResult:
    merged: Path
    names_file: Path
    names_created: bool
    model: Path
    classifier: Path
    input: str
    layer: str
    channels: int
    embedding: str
    clusters: list[dict]
    outputs: list[str]
    verification: dict
    facets: list[dict] = field(default_factory=list)
    unknown_threshold: float | None = None
    #: The further views grafted (as in the metadata's introspect.views), and those left out ({name, reason}).
    views: list[dict] = field(default_factory=list)
    left_out: list[dict] = field(default_factory=list)

    def text(self) -> str:
        """A few lines: what was written, what it takes and returns, and how it was checked."""
        v = self.verification
        return "\n".join(
            [
                f"wrote {self.merged}: input {self.input!r} -> outputs {', '.join(self.outputs)} "
                f"(layer {self.layer}, {self.channels} channels, center pixel -> classifier)",
                f"{len(self.clusters)} clusters: " + ", ".join(f"{c['id']}={c['name']}" for c in self.clusters),
                f"names from {self.names_file}"
                + (" (new, with defaults)" if self.names_created else "")
                + "; edit it and run `introspect merge` again to rename",
                f"checked on {v['rows']} images against net + classifier.onnx: {v['label_mismatches']} label "
                f"mismatches, max score diff {v['max_score_diff']:.2e}, "
                f"max embedding diff {v['max_embedding_diff']:.2e}"
                + (f", max facet diff {v['max_facet_diff']:.2e}" if "max_facet_diff" in v else ""),
            ]
            + [
                f"{len(self.facets)} facets: "
                + ", ".join(
                    f"{f['id']}={f['name']} (clusters {', '.join(map(str, f['clusters']))})" for f in self.facets
                )
            ][: bool(self.facets)]
            + [
                f"unknown: cluster -1 when the top probability is below {self.unknown_threshold:.4g}"
                + (f" ({v['unknown']} of the {v['rows']} checked images)" if "unknown" in v else "")
                if self.unknown_threshold is not None
                else "unknown: off (every image gets a cluster)"
            ]
            + [self._view_line(view) for view in self.views]
            + [f"view {x['name']}: not grafted ({x['reason']})" for x in self.left_out]
        )

    def _view_line(self, view: dict) -> str:
        v = self.verification.get("views", {}).get(view["name"], {})
        how = "exact" if view["grafted"] == "exact" else "approximate"
        if view["grafted"] == "approximate":
            acc = view.get("accuracy")
            how += f", held-out accuracy {acc:.3f}" if acc is not None else ", held-out accuracy unknown"
        label, scores, facets = outputs_of(view["name"])
        fed = "center pixel" if view["feature"] == CENTER else "spatial mean"
        return (
            f"view {view['name']} ({how}; {fed} -> {classifier_file(view['name'])}): outputs {label}, {scores}"
            + (f", {facets}" if view["facets"] else "")
            + f"; {len(view['clusters'])} clusters: "
            + ", ".join(f"{c['id']}={c['name']}" for c in view["clusters"])
            + (f"; {len(view['facets'])} facets" if view["facets"] else "")
            + (f"; unknown below {view['unknown_threshold']:.4g}" if view["unknown_threshold"] is not None else "")
            + (
                f"; checked: {v['label_mismatches']} label mismatches, max score diff {v['max_score_diff']:.2e}"
                if v
                else ""
            )
        )


def _clusters_record(run_dir: RunDir) -> dict:
    """Where the run's clusters.h5 is and its sha256: `label` finds the map and the subset's shares by them
    from any folder (`label_map.find_clusters`). {} when the run has none (a classifier made elsewhere)."""
    path = run_dir.path("clusters")
    if not path.is_file():
        return {}
    return {"clusters_path": str(path.resolve()), "clusters_sha256": nets.sha256_file(path)}


def run(cfg: dict, sample: int | None = None, force: bool = False) -> MergeResult:
    """Graft, name, verify on real images, then write `<out>/merged.onnx` (and the names file if new)."""
    run_dir = RunDir(cfg["extract"]["out"])
    sample = int(sample or cfg["merge"]["sample"])
    if sample < 1:
        raise UserError(f"merge.sample = {sample} must be at least 1")
    pre = Preprocess.from_config(cfg["preprocess"])
    model_path = Path(cfg["model"]["path"])
    with run_dir.stage("merge"):
        clf_path, names_path = run_dir.require("classifier", "cluster"), run_dir.path("names")
        net = nets.load(model_path, hint="pass --model PATH (the net) or set model.path")
        head = nets.load(clf_path, "classifier", "run `make cluster` again")
        ex = Extractor.build(net, cfg["model"]["layer"], cfg["model"]["embedding"], pre)
        net_sha = nets.sha256_file(model_path)
        if not force:
            actual = {"model_sha256": net_sha, "layer": ex.layer.name, "embedding": ex.embedding}
            actual["preprocess"] = store.dumps(pre.as_dict())
            for made in (run_dir.path("clusters"), run_dir.path("subset")):  # what the clusters came from
                if made.is_file():
                    check_provenance(made, store.read_attrs(made), actual, f"model {model_path}")
        ids = cluster_ids(head)
        clf_sha = nets.sha256_file(clf_path)
        aside = set_aside_if_stale(names_path, ids, clf_sha)
        if aside:
            log.warning(
                "merge: %s named another clustering's clusters; kept as %s, new names start from the defaults",
                names_path,
                aside,
            )
        new_names = not names_path.exists()
        names = load_names(names_path, ids, create=False)
        clusters = [{"id": k, "name": names[k]} for k in ids]
        facet_list, threshold = read_facets(run_dir, ids)
        facet_names = load_facet_names(names_path, [f["id"] for f in facet_list], names)
        facets = [{"id": f["id"], "name": facet_names[f["id"]], "clusters": f["clusters"]} for f in facet_list]
        members = [f["clusters"] for f in facets]
        further, left_out = read_views(run_dir)
        heads, checks, views, view_names = [], [], [], {}
        for v in further:
            vpath = run_dir.classifier(v["name"])
            if not vpath.is_file():
                raise UserError(f"{vpath} is missing (view {v['name']} in metrics.json); run `make cluster` again")
            vhead = nets.load(vpath, "classifier", "run `make cluster` again")
            vids = cluster_ids(vhead)
            vlist, vthreshold = _read_contract(
                run_dir.path("metrics"), v["facets"], v["unknown"], vids, v["classifier_file"]
            )
            vnames, vfacet_names = load_view_names(names_path, v["name"], vids, [f["id"] for f in vlist])
            view_names[v["name"]] = (vnames, vfacet_names)
            vfacets = [{"id": f["id"], "name": vfacet_names[f["id"]], "clusters": f["clusters"]} for f in vlist]
            heads.append(Head(v["name"], v["feature"], vhead))
            checks.append(ViewCheck(v["name"], v["feature"], vhead, [f["clusters"] for f in vfacets], vthreshold))
            views.append(
                {
                    "name": v["name"],
                    "feature": v["feature"],
                    "clusters": [{"id": k, "name": vnames[k]} for k in vids],
                    "facets": vfacets,
                    "unknown_threshold": vthreshold,
                    "grafted": v["grafted"],
                    "accuracy": v["accuracy"],
                }
            )
        merged = add_heads(graft(net, head, ex.layer, ex.embedding, heads), ids, members, threshold)
        for c in checks:
            merged = add_heads(merged, cluster_ids(c.head), c.facets, c.threshold, c.view)
        center_view = {
            "name": CENTER,
            "feature": CENTER,
            "clusters": clusters,
            "facets": facets,
            "unknown_threshold": threshold,
            "grafted": "exact",
            "accuracy": _center_accuracy(run_dir),
        }
        merged = with_metadata(
            merged,
            {
                "clusters": clusters,
                "layer": ex.layer.name,
                "embedding": ex.embedding,
                "preprocess": pre.as_dict(),
                "input": ex.input,
                "net_sha256": net_sha,
                "classifier_sha256": clf_sha,
                "facets": facets,
                "unknown_threshold": threshold,
                "views": [center_view, *views],
                "outputs": describe_outputs(ex.embedding, ids, ex.input, facets, threshold, views),
                **_clusters_record(run_dir),
            },
        )
        inputs = Inputs.from_config(cfg["data"], run_dir)
        images, tried = sample_images(inputs.list.path, inputs.source, pre, sample, inputs.limits)
        batch = runtime.batch_size(cfg["extract"]["batch_size"], gpu=False)
        check = verify(merged, ex, head, images, batch, members, threshold, checks)
        check["lines_tried"] = tried
        if new_names:
            write_names(names_path, names, facet_names, clf_sha, view_names)
        write_bytes(run_dir.path("merged"), merged.SerializeToString())
    return MergeResult(
        merged=run_dir.path("merged"),
        names_file=names_path,
        names_created=new_names,
        model=model_path,
        classifier=clf_path,
        input=ex.input,
        layer=ex.layer.name,
        channels=ex.layer.channels,
        embedding=ex.embedding,
        clusters=clusters,
        outputs=[o.name for o in merged.graph.output],
        verification=check,
        facets=facets,
        unknown_threshold=threshold,
        views=views,
        left_out=left_out,
    )


def _center_accuracy(run_dir: RunDir) -> float | None:
    """The center classifier's held-out accuracy from metrics.json, when recorded."""
    metrics = run_dir.read_json("metrics", "cluster") or {}
    acc = (metrics.get("classifier") or {}).get("accuracy") if isinstance(metrics.get("classifier"), dict) else None
    return float(acc) if isinstance(acc, (int, float)) and not isinstance(acc, bool) and 0 <= acc <= 1 else None
