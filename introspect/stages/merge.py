"""The merge stage: graft the cluster classifier onto the net, so one ONNX file gives both answers.

`<out>/merged.onnx` takes what the net takes and returns, in this order: the net's embedding
(same name as in the net), `cluster` (int64 [N], the cluster id) and `cluster_scores` (float32
[N, K], the classifier's raw scores), plus `facets` and -1 for unknown when metrics.json asks
for them (`engine/merged.py` `add_heads`). Its metadata says how to feed it and what the outputs
mean, so the file stands on its own. Before anything is written, the merged model is run on
real images from the list and compared with the two-step path (net cut at the layer, then
`classifier.onnx`); a model that disagrees is never written.

Cluster names live in `<out>/cluster_names.toml`, made with defaults on the first run and meant
to be edited; running the stage again puts the new names into the metadata.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..engine import nets, runtime, store
from ..engine.extractor import Extractor, sample_images
from ..engine.images import Preprocess
from ..engine.merged import (
    CLUSTER,
    CLUSTER_SCORES,
    FACETS,
    UNKNOWN,
    add_heads,
    cluster_ids,
    describe_outputs,
    graft,
    load_facet_names,
    load_names,
    membership,
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


def verify(
    merged: onnx.ModelProto,
    ex: Extractor,
    head: onnx.ModelProto,
    images: np.ndarray,
    batch: int = 64,
    facets: list[list[int]] | None = None,
    threshold: float | None = None,
) -> dict:
    """Compare the merged model with net cut -> classifier.onnx; raise VerificationError if they differ.

    With facets, `facets` against softmax(scores) @ M in numpy; with an unknown threshold, the labels
    against -1 where numpy's top probability is below it (a row within THRESHOLD_TOL of it is not counted).
    """
    one, cut, clf = (runtime.session(m, "cpu") for m in (merged, ex.model, head))
    ids = cluster_ids(head)
    m = membership(facets, ids).astype(np.float64) if facets else None
    fetch = [ex.embedding, CLUSTER, CLUSTER_SCORES] + ([FACETS] if facets else [])
    mismatches, score_diffs, emb_diffs, facet_diffs, unknown, borderline = 0, [], [], [0.0], 0, 0
    for lo in range(0, len(images), batch):
        x = images[lo : lo + batch]
        emb, label, scores, *rest = one.run(fetch, {ex.input: x})
        center, emb2 = cut.run([ex.center, ex.embedding], {ex.input: x})
        label2, scores2 = clf.run([classifier.LABEL, classifier.SCORES], {classifier.INPUT: center})
        label, label2 = label.ravel(), label2.ravel().copy()
        if threshold is not None:
            top = softmax(scores2).max(axis=1)
            label2[top < threshold] = UNKNOWN
            near = np.abs(top - threshold) <= THRESHOLD_TOL
            borderline += int(near.sum())
            unknown += int((label == UNKNOWN).sum())
            mismatches += int(((label != label2) & ~near).sum())
        else:
            mismatches += int((label != label2).sum())
        if facets:
            facet_diffs.append(np.abs(rest[0].astype(np.float64) - softmax(scores2) @ m).max())
        score_diffs.append(np.abs(scores.astype(np.float64) - scores2).max())
        emb_diffs.append(np.abs(emb.astype(np.float64) - emb2).max())
    score_diff, emb_diff = float(np.max(score_diffs)), float(np.max(emb_diffs))  # NaN stays NaN, and fails
    facet_diff = float(np.max(facet_diffs))
    check = {
        "rows": int(len(images)),
        "label_mismatches": mismatches,
        "max_score_diff": score_diff,
        "max_embedding_diff": emb_diff,
    }
    if facets:
        check["max_facet_diff"] = facet_diff
    if threshold is not None:
        check.update(unknown=unknown, at_threshold=borderline)
    if mismatches or not score_diff <= SCORE_TOL or not emb_diff <= EMBEDDING_TOL or not facet_diff <= FACET_TOL:
        raise VerificationError(
            f"the merged model disagrees with net + classifier.onnx on {len(images)} images: "
            f"{mismatches} labels differ, scores by up to {score_diff:.3g} (limit {SCORE_TOL}), "
            f"embeddings by {emb_diff:.3g} (limit {EMBEDDING_TOL})"
            + (f", facets by {facet_diff:.3g} (limit {FACET_TOL})" if facets else "")
            + "; nothing was written"
        )
    return check


def read_facets(run_dir: RunDir, ids: list[int]) -> tuple[list[dict], float | None]:
    """The cluster stage's facets ({id, clusters}) and unknown threshold (None: off) from metrics.json, checked."""
    metrics = run_dir.read_json("metrics", "cluster") or {}
    where = run_dir.path("metrics")
    facets, unknown = metrics.get("facets") or [], metrics.get("unknown")
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
                f"{where}: facet {fid} lists clusters {members!r}, not some of classifier.onnx's clusters {ids}; "
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
                + "; edit it and run `make merge` again to rename",
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
        )


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
        net = nets.load(model_path, hint="run `make model` or set model.path")
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
        merged = with_metadata(
            add_heads(graft(net, head, ex.layer, ex.embedding), ids, members, threshold),
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
                "outputs": describe_outputs(ex.embedding, ids, ex.input, facets, threshold),
            },
        )
        inputs = Inputs.from_config(cfg["data"], run_dir)
        images, tried = sample_images(inputs.list.path, inputs.source, pre, sample, inputs.limits)
        batch = runtime.batch_size(cfg["extract"]["batch_size"], gpu=False)
        check = verify(merged, ex, head, images, batch, members, threshold)
        check["lines_tried"] = tried
        if new_names:
            write_names(names_path, names, facet_names, clf_sha)
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
    )
