"""The merged model's contract: its outputs, its metadata, its cluster names, and the graft that makes it.

`merge` writes it, `label` runs it, `report` reads its names: all three meet here. The model
takes what the net takes and returns, in this order: the net's embedding (same name as in
the net), `cluster` (int64 [N], the cluster id) and `cluster_scores` (float32 [N, K], the
classifier's raw scores). Its metadata (`introspect.*` metadata_props) says how to feed it and
what the outputs mean, so the file stands on its own; what is read back from a model is
checked like the user's names file, since a model file may come from anywhere.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

import onnx
from onnx import compose, helper

from ..errors import UserError
from ..science import classifier
from . import graph, nets
from .rundir import write_bytes

CLUSTER = "cluster"
CLUSTER_SCORES = "cluster_scores"
TOP = "cluster_probability"  # softmax of the scores' top entry, added by `label`
HEAD_PREFIX = "cluster_head/"
META = "introspect."
JSON_KEYS = ("clusters", "preprocess")
#: Keys `label` and `report` need from a merged model's metadata.
REQUIRED = ("clusters", "preprocess", "input", "layer", "net_sha256", "classifier_sha256")
MAX_NAME = 100


# --------------------------------------------------------------------------- graph


def cluster_ids(head: onnx.ModelProto) -> list[int]:
    """The cluster ids in column order of the scores: the LinearClassifier's `classlabels_ints`."""
    for node in head.graph.node:
        if node.op_type == "LinearClassifier" and node.domain == classifier.ML:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if "classlabels_ints" in attrs:
                return [int(k) for k in attrs["classlabels_ints"]]
    raise UserError("the classifier has no LinearClassifier with integer cluster ids; run `make cluster` again")


def _input_width(head: onnx.ModelProto) -> int:
    inputs = {i.name: i for i in head.graph.input}
    if classifier.INPUT not in inputs:
        raise UserError(f"classifier.onnx has no input {classifier.INPUT!r}; run `make cluster` again")
    return inputs[classifier.INPUT].type.tensor_type.shape.dim[-1].dim_value


def graft(net: onnx.ModelProto, head: onnx.ModelProto, layer: graph.FeatureMap, embedding: str) -> onnx.ModelProto:
    """One model: net -> (embedding, cluster, cluster_scores), the head fed the layer's center pixel."""
    emb = graph.embedding_output(net, embedding)
    net = graph.expose(net, emb)  # an inner tensor too: the merged model returns it first
    taken = sorted(graph.tensor_names(net.graph) & {CLUSTER, CLUSTER_SCORES})
    if taken:
        raise UserError(
            f"the net already has a tensor named {', '.join(taken)}, a name the merged outputs need; "
            "rename it in the net"
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


# --------------------------------------------------------------------------- names


def check_names(where: str, names: dict[int, str]) -> dict[int, str]:
    """Names become file names (a list and a folder per cluster): non-empty, no path, unique ignoring case."""
    seen: dict[str, int] = {}
    for k, name in names.items():
        check_name(where, k, name)
        if name.casefold() in seen:  # lists named after clusters must differ on any file system
            raise UserError(
                f"{where}: clusters {seen[name.casefold()]} and {k} are both named {name!r}; names must be unique"
            )
        seen[name.casefold()] = k
    return names


def check_name(where: str, k: int, name: object) -> None:
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{where}: cluster {k} has name {name!r}; give it a non-empty text in quotes")
    if (
        "/" in name
        or "\\" in name
        or "\0" in name
        or name.strip(" .") == ""
        or re.search(r"[\x00-\x1f]", name)
        or len(name) > MAX_NAME
    ):
        raise UserError(
            f"{where}: cluster {k}'s name {name[:MAX_NAME]!r} is not usable as a file name "
            f"(no '/' or '\\', no control characters, not only dots, at most {MAX_NAME} characters)"
        )


# --------------------------------------------------------------------------- the names file (the user's)


def default_names(ids: list[int]) -> dict[int, str]:
    return {k: f"cluster_{k}" for k in ids}


def write_names(path: Path, names: dict[int, str]) -> None:
    lines = ["# Name each cluster, then run `make merge` (and `make report`) again.", "[names]"]
    lines += [f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in names.items()]  # a JSON string is a TOML one
    write_bytes(Path(path), ("\n".join(lines) + "\n").encode())


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
    check_names(str(path), names)
    return {k: names[k] for k in ids}


# --------------------------------------------------------------------------- metadata


def with_metadata(model: onnx.ModelProto, info: dict) -> onnx.ModelProto:
    """Record how to feed the model and what its outputs mean (the net's own props are kept)."""
    model = graph.copy_model(model)
    props = {p.key: p.value for p in model.metadata_props}
    props.update({META + k: json.dumps(v) if k in JSON_KEYS else str(v) for k, v in info.items()})
    helper.set_model_props(model, props)
    model.doc_string = info.get("outputs", "")
    return model


def describe_outputs(embedding: str, ids: list[int], data: str) -> str:
    return (
        f"Feed {data!r}: float32 [N, 3, H, W] made as introspect.preprocess says. "
        f"{embedding}: the net's embedding, float32 [N, D]. {CLUSTER}: int64 [N], the cluster id of each image "
        f"(names in introspect.clusters). {CLUSTER_SCORES}: float32 [N, K], raw scores (logits; softmax them for "
        f"probabilities), column j is cluster ids[j] with ids = {ids}."
    )


def read_metadata(model: onnx.ModelProto, where: str = "the model") -> dict:
    """The `introspect.*` metadata, keys without the prefix, JSON fields decoded and checked."""
    meta = {p.key[len(META) :]: p.value for p in model.metadata_props if p.key.startswith(META)}
    if not meta:
        raise UserError(f"{where} has no introspect metadata; it was not made by `introspect merge`")
    try:
        meta = {k: json.loads(v) if k in JSON_KEYS else v for k, v in meta.items()}
    except ValueError:
        raise UserError(f"{where}: its introspect metadata is not valid JSON; run `introspect merge` again") from None
    if "clusters" in meta:
        meta["clusters"] = _clusters(meta["clusters"], where)
    return meta


def _clusters(clusters: object, where: str) -> list[dict]:
    bad = UserError(f"{where}: introspect.clusters should be a list of {{id, name}}; run `introspect merge` again")
    if not isinstance(clusters, list) or not clusters:
        raise bad
    names: dict[int, str] = {}
    for c in clusters:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or isinstance(c.get("id"), bool):
            raise bad
        if c["id"] in names:
            raise UserError(
                f"{where}: cluster {c['id']} appears twice in introspect.clusters; run `introspect merge` again"
            )
        names[c["id"]] = c.get("name")
    check_names(where, names)
    return [{"id": k, "name": v} for k, v in names.items()]


def load_merged(path: Path) -> tuple[onnx.ModelProto, dict]:
    """A merged model and its checked metadata, or one clear line on what is wrong."""
    model = nets.load(path, "merged model", "run `make merge` (or `introspect merge`) first")
    names = [o.name for o in model.graph.output]
    if CLUSTER not in names or CLUSTER_SCORES not in names:
        raise UserError(
            f"{path} has outputs {names}, not `{CLUSTER}` and `{CLUSTER_SCORES}`: give the model `make merge` wrote"
        )
    meta = read_metadata(model, str(path))
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise UserError(f"{path} lacks introspect metadata {missing}; run `make merge` again")
    ids = [c["id"] for c in meta["clusters"]]
    k = model.graph.output[names.index(CLUSTER_SCORES)].type.tensor_type.shape.dim[-1].dim_value
    if k and k != len(ids):
        raise UserError(f"{path}: {k} score columns but {len(ids)} clusters in its metadata; run `make merge` again")
    return model, meta
