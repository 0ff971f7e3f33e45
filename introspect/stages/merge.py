"""The merge stage: graft the cluster classifier onto the net, so one ONNX file gives both answers.

`<out>/merged.onnx` takes what the net takes and returns, in this order: the net's embedding
(same name as in the net), `cluster` (int64 [N], the cluster id) and `cluster_scores` (float32
[N, K], the classifier's raw scores). Its metadata says how to feed it and what the outputs
mean, so the file stands on its own. Before anything is written, the merged model is run on
real images from the list and compared with the two-step path (net cut at the layer, then
`classifier.onnx`); a model that disagrees is never written.

Cluster names live in `<out>/cluster_names.toml`, made with defaults on the first run and meant
to be edited; running the stage again puts the new names into the metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import compose, helper

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

from ..engine import graph, runtime, store
from ..engine.images import Preprocess, read_batch
from ..engine.nets import sha256_file
from ..errors import UserError
from ..science import classifier
from .extract import Extractor

CLUSTER = "cluster"
CLUSTER_SCORES = "cluster_scores"
HEAD_PREFIX = "cluster_head/"
NAMES_FILE = "cluster_names.toml"
MERGED_FILE = "merged.onnx"
META = "introspect."
JSON_KEYS = ("clusters", "preprocess")
#: Images the merged model is checked on, and the tolerances against the two-step path.
SAMPLE = 256
SCORE_TOL = 1e-4
EMBEDDING_TOL = 1e-5
#: Lines tried per wanted image before giving up (a list of 17 M missing files is not scanned).
TRIES_PER_IMAGE = 16
MAX_NAME = 100


class VerificationError(UserError):
    """The merged model disagrees with net + classifier.onnx; nothing was written."""


# --------------------------------------------------------------------------- graph


def cluster_ids(head: onnx.ModelProto) -> list[int]:
    """The cluster ids in column order of the scores: the LinearClassifier's `classlabels_ints`."""
    for node in head.graph.node:
        if node.op_type == "LinearClassifier" and node.domain == classifier.ML:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if "classlabels_ints" in attrs:
                return [int(k) for k in attrs["classlabels_ints"]]
    raise UserError("classifier.onnx has no LinearClassifier with integer cluster ids; run `make cluster` again")


def _input_width(head: onnx.ModelProto) -> int:
    inputs = {i.name: i for i in head.graph.input}
    if classifier.INPUT not in inputs:
        raise UserError(f"classifier.onnx has no input {classifier.INPUT!r}; run `make cluster` again")
    return inputs[classifier.INPUT].type.tensor_type.shape.dim[-1].dim_value


def graft(net: onnx.ModelProto, head: onnx.ModelProto, layer: graph.FeatureMap, embedding: str) -> onnx.ModelProto:
    """One model: net -> (embedding, cluster, cluster_scores), the head fed the layer's center pixel."""
    emb = graph.embedding_output(net, embedding)
    taken = sorted(graph.tensor_names(net.graph) & {CLUSTER, CLUSTER_SCORES})
    if taken:
        raise UserError(
            f"the net already has a tensor named {', '.join(taken)}, a name the merged outputs need; rename it in the net"
        )
    width = _input_width(head)
    if width != layer.channels:
        raise UserError(
            f"classifier.onnx takes {width} features but layer {layer.name} has {layer.channels} channels; "
            "run `make cluster` again for this net/layer"
        )
    mine, theirs = classifier.opsets_of(head), classifier.opsets_of(net)
    if head.ir_version != net.ir_version or any(theirs[d] != v for d, v in mine.items() if d in theirs):
        head = classifier.match_net(head, net)
    used = graph.tensor_names(net.graph)
    center = next(n for n in (f"prefacen{'_' * i}" for i in range(len(used) + 1)) if n not in used)
    cut = graph.keep_outputs(graph.center_pixel(net, layer, output=center), [emb, center])
    head = graph.rename_tensors(
        compose.add_prefix(head, HEAD_PREFIX),
        {HEAD_PREFIX + classifier.LABEL: CLUSTER, HEAD_PREFIX + classifier.SCORES: CLUSTER_SCORES},
    )
    try:
        merged = compose.merge_models(
            cut,
            head,
            io_map=[(center, HEAD_PREFIX + classifier.INPUT)],
            outputs=[emb, CLUSTER, CLUSTER_SCORES],
            name=f"{net.graph.name or 'net'}+clusters",
            producer_name="introspect",
        )
    except ValueError as e:  # clashing names, IR or opsets
        raise UserError(f"cannot merge the net with classifier.onnx: {str(e).splitlines()[0]}") from e
    opsets = classifier.opsets_of(merged)  # merge_models lists a domain both declare twice
    del merged.opset_import[:]
    merged.opset_import.extend(helper.make_opsetid(d, v) for d, v in opsets.items())
    for out in merged.graph.output[1:]:
        d = out.type.tensor_type.shape.dim[0]
        if not (d.dim_value or d.dim_param):
            d.dim_param = graph.BATCH
    onnx.checker.check_model(merged, full_check=True)
    return merged


# --------------------------------------------------------------------------- names and metadata


def default_names(ids: list[int]) -> dict[int, str]:
    return {k: f"cluster_{k}" for k in ids}


def write_names(path: Path, names: dict[int, str]) -> None:
    lines = ["# Name each cluster, then run `make merge` (and `make report`) again.", "[names]"]
    lines += [f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in names.items()]  # a JSON string is a TOML one
    store.atomic_write(Path(path), ("\n".join(lines) + "\n").encode())


def load_names(path: Path, ids: list[int], create: bool = True) -> dict[int, str]:
    """The names file as {cluster id: name}; made with defaults (`cluster_<k>`) when missing."""
    path = Path(path)
    if not path.exists():
        if create:
            write_names(path, default_names(ids))
        return default_names(ids)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("names", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid TOML ({e}); fix it, or delete it to get the defaults") from None
    if not isinstance(table, dict):
        raise UserError(f'{path}: [names] should be a table of `<cluster id> = "name"` lines')
    names: dict[int, str] = {}
    for key, value in table.items():
        try:
            k = int(key)
        except ValueError:
            raise UserError(f"{path}: {key!r} is not a cluster id; the keys are the ids {ids}") from None
        if k in names:
            raise UserError(f"{path}: cluster {k} is named twice; keep one line for it")
        names[k] = value
    missing, unknown = sorted(set(ids) - set(names)), sorted(set(names) - set(ids))
    if missing or unknown:
        raise UserError(
            f"{path} does not match classifier.onnx (clusters {ids}): missing {missing or 'none'}, "
            f"unknown {unknown or 'none'}; fix it, or delete it to get the defaults"
        )
    seen: dict[str, int] = {}
    for k, name in names.items():
        _check_name(path, k, name)
        if name.casefold() in seen:  # folders named after clusters must differ on any file system
            raise UserError(
                f"{path}: clusters {seen[name.casefold()]} and {k} are both named {name!r}; names must be unique"
            )
        seen[name.casefold()] = k
    return {k: names[k] for k in ids}


def _check_name(path: Path, k: int, name: object) -> None:
    """A name becomes a file name later (a folder per cluster), so it has to be a usable one."""
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{path}: cluster {k} has name {name!r}; give it a non-empty text in quotes")
    if "/" in name or "\0" in name or name in (".", "..") or len(name) > MAX_NAME:
        raise UserError(
            f"{path}: cluster {k}'s name {name[:MAX_NAME]!r} is not usable as a file name "
            f"(no '/', no NUL, not . or .., at most {MAX_NAME} characters)"
        )


def with_metadata(model: onnx.ModelProto, info: dict) -> onnx.ModelProto:
    """Record how to feed the model and what its outputs mean (the net's own props are kept)."""
    model = graph.copy_model(model)
    props = {p.key: p.value for p in model.metadata_props}
    props.update({META + k: json.dumps(v) if k in JSON_KEYS else str(v) for k, v in info.items()})
    helper.set_model_props(model, props)
    model.doc_string = info.get("outputs", "")
    return model


def read_metadata(model: onnx.ModelProto) -> dict:
    """The `introspect.*` metadata, keys without the prefix, JSON fields decoded."""
    meta = {p.key[len(META) :]: p.value for p in model.metadata_props if p.key.startswith(META)}
    if not meta:
        raise UserError("the model has no introspect metadata; it was not made by `introspect merge`")
    return {k: json.loads(v) if k in JSON_KEYS else v for k, v in meta.items()}


def describe_outputs(embedding: str, ids: list[int], data: str) -> str:
    return (
        f"Feed {data!r}: float32 [N, 3, H, W] made as introspect.preprocess says. "
        f"{embedding}: the net's embedding, float32 [N, D]. {CLUSTER}: int64 [N], the cluster id of each image "
        f"(names in introspect.clusters). {CLUSTER_SCORES}: float32 [N, K], raw scores (logits; softmax them for "
        f"probabilities), column j is cluster ids[j] with ids = {ids}."
    )


# --------------------------------------------------------------------------- verification


def sample_images(lst: Path, root: Path, pre: Preprocess, n: int) -> tuple[np.ndarray, int]:
    """The first up-to-n images of the list that decode, preprocessed, and how many lines were tried."""
    lst = Path(lst)
    if not lst.is_file():
        raise UserError(f"image list {lst} does not exist; set data.list (the merged model is checked on its images)")
    got: list[np.ndarray] = []
    have = tried = 0
    with open(lst, encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        while have < n and tried < TRIES_PER_IMAGE * n:
            lines = [ln.rstrip("\r\n") for _, ln in zip(range(n - have), f)]
            if not lines:
                break
            tried += len(lines)
            images, _, _ = read_batch([os.path.join(root, ln) if ln else "" for ln in lines], pre.size)
            got.append(pre.blob(images))
            have += len(images)
    if have == 0:
        raise UserError(
            f"none of the first {tried} lines of {lst} is a decodable image under {root}; check data.list and data.root"
        )
    return np.concatenate(got), tried


def verify(merged: onnx.ModelProto, ex: Extractor, head: onnx.ModelProto, images: np.ndarray, batch: int = 64) -> dict:
    """Compare the merged model with net cut -> classifier.onnx; raise VerificationError if they differ."""
    one, cut, clf = (runtime.session(m, "cpu") for m in (merged, ex.model, head))
    mismatches, score_diffs, emb_diffs = 0, [], []
    for lo in range(0, len(images), batch):
        x = images[lo : lo + batch]
        emb, label, scores = one.run([ex.embedding, CLUSTER, CLUSTER_SCORES], {ex.input: x})
        center, emb2 = cut.run([ex.center, ex.embedding], {ex.input: x})
        label2, scores2 = clf.run([classifier.LABEL, classifier.SCORES], {classifier.INPUT: center})
        mismatches += int((label.ravel() != label2.ravel()).sum())
        score_diffs.append(np.abs(scores.astype(np.float64) - scores2).max())
        emb_diffs.append(np.abs(emb.astype(np.float64) - emb2).max())
    score_diff, emb_diff = float(np.max(score_diffs)), float(np.max(emb_diffs))  # NaN stays NaN, and fails
    check = {
        "rows": int(len(images)),
        "label_mismatches": mismatches,
        "max_score_diff": score_diff,
        "max_embedding_diff": emb_diff,
    }
    if mismatches or not score_diff <= SCORE_TOL or not emb_diff <= EMBEDDING_TOL:
        raise VerificationError(
            f"the merged model disagrees with net + classifier.onnx on {len(images)} images: {mismatches} labels differ, "
            f"scores by up to {score_diff:.3g} (limit {SCORE_TOL}), embeddings by {emb_diff:.3g} (limit {EMBEDDING_TOL}); "
            "nothing was written: report this as a bug"
        )
    return check


# --------------------------------------------------------------------------- the stage


def run(cfg: dict, sample: int | None = None) -> dict:
    """Graft, name, verify on real images, then write `<out>/merged.onnx` (and the names file if new)."""
    out = Path(cfg["extract"]["out"])
    clf_path, names_path = out / "classifier.onnx", out / NAMES_FILE
    if not clf_path.is_file():
        raise UserError(f"{clf_path} does not exist; run `make cluster` first")
    model_path = Path(cfg["model"]["path"])
    if not model_path.is_file():
        raise UserError(f"model {model_path} does not exist; run `make model` or set model.path")
    sample = int(sample or cfg["merge"]["sample"])
    pre = Preprocess.from_config(cfg["preprocess"])
    net, head = onnx.load(model_path), onnx.load(clf_path)
    ex = Extractor.build(net, cfg["model"]["layer"], cfg["model"]["embedding"], pre)
    ids = cluster_ids(head)
    new_names = not names_path.exists()
    names = load_names(names_path, ids, create=False)
    clusters = [{"id": k, "name": names[k]} for k in ids]
    merged = with_metadata(
        graft(net, head, ex.layer, ex.embedding),
        {
            "clusters": clusters,
            "layer": ex.layer.name,
            "embedding": ex.embedding,
            "preprocess": pre.as_dict(),
            "input": ex.input,
            "net_sha256": sha256_file(model_path),
            "classifier_sha256": sha256_file(clf_path),
            "outputs": describe_outputs(ex.embedding, ids, ex.input),
        },
    )
    images, tried = sample_images(Path(cfg["data"]["list"]), Path(cfg["data"]["root"]), pre, sample)
    check = verify(merged, ex, head, images, runtime.batch_size(cfg["extract"]["batch_size"], gpu=False))
    check["lines_tried"] = tried
    if new_names:
        write_names(names_path, names)
    store.atomic_write(out / MERGED_FILE, merged.SerializeToString())
    return {
        "merged": str(out / MERGED_FILE),
        "names_file": str(names_path),
        "names_created": new_names,
        "model": str(model_path),
        "classifier": str(clf_path),
        "input": ex.input,
        "layer": ex.layer.name,
        "channels": ex.layer.channels,
        "embedding": ex.embedding,
        "clusters": clusters,
        "outputs": [o.name for o in merged.graph.output],
        "verification": check,
    }


def summary(r: dict) -> str:
    """A few lines: what was written, what it takes and returns, and how it was checked."""
    v = r["verification"]
    return "\n".join(
        [
            f"wrote {r['merged']}: input {r['input']!r} -> outputs {', '.join(r['outputs'])} "
            f"(layer {r['layer']}, {r['channels']} channels, center pixel -> classifier)",
            f"{len(r['clusters'])} clusters: " + ", ".join(f"{c['id']}={c['name']}" for c in r["clusters"]),
            f"names from {r['names_file']}"
            + (" (new, with defaults)" if r["names_created"] else "")
            + "; edit it and run `make merge` again to rename",
            f"checked on {v['rows']} images against net + classifier.onnx: {v['label_mismatches']} label mismatches, "
            f"max score diff {v['max_score_diff']:.2e}, max embedding diff {v['max_embedding_diff']:.2e}",
        ]
    )
