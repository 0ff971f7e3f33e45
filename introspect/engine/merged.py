"""The merged model's contract: its outputs, its metadata, its cluster names, and the graft that makes it.

`merge` writes it, `label` runs it, `report` reads its names: all three meet here. The model
takes what the net takes and returns, in this order: the net's embedding (same name as in
the net), `cluster` (int64 [N], the cluster id) and `cluster_scores` (float32 [N, K], the
classifier's raw scores), and when the clustering made facets `facets` (float32 [N, F],
`add_facets`); with an unknown threshold `cluster` is -1 below it (`add_unknown`). Its
metadata (`introspect.*` metadata_props) says how to feed it and what the outputs mean, so the
file stands on its own; what is read back from a model is checked like the user's names file,
since a model file may come from anywhere.
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

import numpy as np
import onnx
from onnx import compose, helper, numpy_helper

from ..errors import UserError
from ..science import classifier
from . import graph, nets, store
from .rundir import write_bytes

CLUSTER = "cluster"
CLUSTER_SCORES = "cluster_scores"
TOP = "cluster_probability"  # softmax of the scores' top entry, added by `label`
FACETS = "facets"
#: The `cluster` of an image whose top probability is below the unknown threshold, and its list's name.
UNKNOWN = -1
UNKNOWN_NAME = "unknown"
HEAD_PREFIX = "cluster_head/"
META = "introspect."
JSON_KEYS = ("clusters", "preprocess", "facets")
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


def center_tensor(model: onnx.ModelProto) -> str | None:
    """The inner tensor `graft` feeds the head: the layer's center pixel (`prefacen`, plus underscores if taken)."""
    fed = {
        i
        for n in model.graph.node
        if n.name.startswith(HEAD_PREFIX) or any(o.startswith(HEAD_PREFIX) for o in n.output)
        for i in n.input
    }
    return next((i for i in sorted(fed, key=len) if i.rstrip("_") == "prefacen"), None)


def with_center(model: onnx.ModelProto, name: str, channels: int) -> onnx.ModelProto:
    """The merged model with its center pixel (N x channels) also an output, so a stream can fetch it."""
    if name in {o.name for o in model.graph.output}:
        return model
    model = graph.copy_model(model)
    model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [graph.BATCH, channels]))
    return model


def membership(members: list[list[int]], ids: list[int]) -> np.ndarray:
    """The K x F 0/1 matrix: row j is cluster ids[j] (the scores' column order), column f is facet f."""
    col = {k: j for j, k in enumerate(ids)}
    m = np.zeros((len(ids), len(members)), np.float32)
    for f, clusters in enumerate(members):
        for k in clusters:
            if k not in col:
                raise UserError(f"facet {f} lists cluster {k}, which the classifier does not have (ids {ids})")
            m[col[k], f] = 1.0
    return m


def _free_name(model: onnx.ModelProto, base: str) -> str:
    used = graph.tensor_names(model.graph)
    return next(n for n in (base + "_" * i for i in range(len(used) + 2)) if not any(u.startswith(n) for u in used))


def add_facets(
    model: onnx.ModelProto, members: list[list[int]], ids: list[int], scores: str = CLUSTER_SCORES
) -> onnx.ModelProto:
    """Add the output `facets`, float32 [N, F] = softmax(scores) @ M (M: `membership`), keeping the rest.

    A facet's value is the probability that the image is in one of its clusters.
    """
    if FACETS in graph.tensor_names(model.graph):
        raise UserError(f"the model already has a tensor named {FACETS!r}, a name the merged outputs need")
    model = graph.copy_model(model)
    g, p = model.graph, _free_name(model, f"{FACETS}__")
    m = membership(members, ids)
    g.initializer.append(numpy_helper.from_array(m, p + "members"))
    soft = graph.add_softmax(g, scores, p + "softmax")
    g.node.append(helper.make_node("MatMul", [soft, p + "members"], [FACETS], name=p + "matmul"))
    g.output.append(helper.make_tensor_value_info(FACETS, onnx.TensorProto.FLOAT, [graph.BATCH, m.shape[1]]))
    onnx.checker.check_model(model, full_check=True)
    return model


def add_unknown(
    model: onnx.ModelProto, threshold: float, label: str = CLUSTER, scores: str = CLUSTER_SCORES
) -> onnx.ModelProto:
    """`label` becomes -1 (UNKNOWN) where the top softmax probability of `scores` is below `threshold`.

    Softmax, ReduceMax, Less and Where after the classifier; the output keeps its name and place.
    """
    model = graph.copy_model(model)
    g, p = model.graph, _free_name(model, "unknown__")
    producers = [n for n in g.node if label in n.output]
    if len(producers) != 1:
        raise UserError(f"the model has no node that computes {label!r}; run `make merge` again")
    known = p + "known"
    producers[0].output[:] = [known if o == label else o for o in producers[0].output]
    for node in g.node:  # anything that read the label reads the classifier's own answer
        if node is not producers[0]:
            node.input[:] = [known if i == label else i for i in node.input]
    soft = graph.add_softmax(g, scores, p + "softmax")
    top = graph.add_reduce_max(g, graph.default_opset(model), soft, p + "top")
    g.initializer.append(numpy_helper.from_array(np.array(threshold, np.float32), p + "threshold"))
    g.initializer.append(numpy_helper.from_array(np.array(UNKNOWN, np.int64), p + "label"))
    g.node.append(helper.make_node("Less", [top, p + "threshold"], [p + "below"], name=p + "below"))
    g.node.append(helper.make_node("Where", [p + "below", p + "label", known], [label], name=p + "where"))
    onnx.checker.check_model(model, full_check=True)
    return model


def add_heads(
    model: onnx.ModelProto, ids: list[int], members: list[list[int]], threshold: float | None
) -> onnx.ModelProto:
    """`add_unknown` (when a threshold is set), then `add_facets` (when there are facets): merge and label share it."""
    if threshold is not None:
        model = add_unknown(model, threshold)
    if members:
        model = add_facets(model, members, ids)
    return model


def unknown_threshold(meta: dict) -> float | None:
    """The checked `introspect.unknown_threshold` of a model's metadata; None when off."""
    return meta.get("unknown_threshold")


def facet_members(meta: dict) -> list[list[int]]:
    return [f["clusters"] for f in meta.get("facets") or []]


# --------------------------------------------------------------------------- names


def check_names(where: str, names: dict[int, str], what: str = "cluster", others: dict[int, str] | None = None) -> dict:
    """Names become file names (a list per cluster or facet): checked, NFC, unique ignoring case; returned in NFC.

    Unique after NFC and casefold: two names that look alike (composed vs decomposed accents) or
    differ only in case would be one file on some file systems. `others` are the cluster names
    when `names` are facet names: both kinds of list are files, so a facet may not share one either.
    """
    seen: dict[str, int] = {}
    out: dict[int, str] = {}
    for k, name in names.items():
        check_name(where, k, name, what)
        name = out[k] = unicodedata.normalize("NFC", name)
        key = _same(name)
        if key in seen:  # lists named after clusters must differ on any file system
            raise UserError(
                f"{where}: {what}s {seen[key]} and {k} are both named {name!r} (ignoring case and accent encoding); "
                "names must be unique"
            )
        seen[key] = k
    clash = {_same(v): k for k, v in (others or {}).items() if isinstance(v, str)}
    for k, name in out.items():
        if _same(name) in clash:
            raise UserError(
                f"{where}: {what} {k} is named {name!r} like cluster {clash[_same(name)]}; "
                "a facet's list and a cluster's are both files, so give them different names"
            )
    return out


def _same(name: str) -> str:
    """The key two names collide on: NFC, then casefold (NFC again: casefold can decompose)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


#: Bytes a name may take in UTF-8: its list `<name>.txt` must fit a file name's 255 bytes.
MAX_NAME_BYTES = 255 - len(".txt")
#: Characters a name may not hold: C0 and C1 controls, DEL, and the bidirectional controls that
#: make a name display other than it is (U+200E/F, U+061C, U+202A..U+202E, U+2066..U+2069); lone surrogates.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def check_name(where: str, k: int, name: object, what: str = "cluster") -> None:
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{where}: {what} {k} has name {name!r}; give it a non-empty text in quotes")
    nfc = unicodedata.normalize("NFC", name)
    if (
        "/" in name
        or "\\" in name
        or name.strip(" .") == ""
        or _FORBIDDEN.search(name)
        or len(name) > MAX_NAME
        or len(nfc.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES
    ):
        raise UserError(
            f"{where}: {what} {k}'s name {name[:MAX_NAME]!r} is not usable as a file name "
            f"(no '/' or '\\', no control or bidirectional control characters, not only dots, at most {MAX_NAME} "
            f"characters and {MAX_NAME_BYTES} bytes in UTF-8)"
        )
    if _same(name.strip()) == UNKNOWN_NAME:
        raise UserError(
            f"{where}: {what} {k} is named {name!r}, which is reserved for the images no cluster claims "
            f"(clusters/{UNKNOWN_NAME}.txt); choose another name"
        )


# --------------------------------------------------------------------------- the names file (the user's)


def default_names(ids: list[int]) -> dict[int, str]:
    return {k: f"cluster_{k}" for k in ids}


def default_facet_names(ids: list[int]) -> dict[int, str]:
    return {f: f"facet_{f}" for f in ids}


def write_names(
    path: Path, names: dict[int, str], facets: dict[int, str] | None = None, classifier_sha: str = ""
) -> None:
    """The names file: `[names]` (cluster id = name) and, when there are facets, `[facets]` (facet id = name)."""
    lines = ["# Name each cluster, then run `make merge` (and `make report`) again."]
    if classifier_sha:
        lines.append(f"# {MADE_FOR}{classifier_sha}")
    lines.append("[names]")
    lines += [f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in names.items()]  # a JSON string is a TOML one
    if facets:
        lines += ["", "# A facet is a set of clusters named once (its clusters are in metrics.json).", "[facets]"]
        lines += [f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in facets.items()]
    write_bytes(Path(path), ("\n".join(lines) + "\n").encode())


MADE_FOR = "made for classifier.onnx sha256 "


def set_aside_if_stale(path: Path, ids: list[int], classifier_sha: str) -> Path | None:
    """A names file made for another clustering (other ids, another classifier) is moved aside, not an error.

    Returns where it went. A file for this very classifier whose ids do not match is the user's
    edit, and stays for `load_names` to refuse with the reason.
    """
    path = Path(path)
    if not path.exists():
        return None
    text = store.regular_file(path, "names file").read_text(encoding="utf-8", errors="replace")
    made_for = next((ln.split(MADE_FOR, 1)[1].strip() for ln in text.splitlines() if MADE_FOR in ln), "")
    table = _read_names_file(path).get("names", {})
    keys = {str(k) for k in table} if isinstance(table, dict) else set()
    if made_for == classifier_sha or keys == {str(k) for k in ids}:
        return None
    aside = path.with_name(f"{path.stem}.{made_for[:8] or 'old'}{path.suffix}")
    path.replace(aside)
    return aside


def _read_names_file(path: Path) -> dict:
    store.regular_file(path, "names file")  # a FIFO would block the read for ever
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid TOML ({e}); fix it, or delete it to get the defaults") from None


def _id_table(path: Path, table: object, section: str, what: str, ids: list[int]) -> dict[int, object]:
    if not isinstance(table, dict):
        raise UserError(f'{path}: [{section}] should be a table of `<{what} id> = "name"` lines')
    names: dict[int, object] = {}
    for key, value in table.items():
        try:
            k = int(key)
        except ValueError:
            raise UserError(f"{path}: {key!r} is not a {what} id; the keys are the ids {ids}") from None
        if k in names:
            raise UserError(f"{path}: {what} {k} is named twice; keep one line for it")
        names[k] = value
    missing, unknown = sorted(set(ids) - set(names)), sorted(set(names) - set(ids))
    if missing or unknown:
        source = "classifier.onnx" if what == "cluster" else "metrics.json"
        raise UserError(
            f"{path} does not match {source} ({what}s {ids}): missing {missing or 'none'}, "
            f"unknown {unknown or 'none'}; fix it, or delete it to get the defaults"
        )
    return names


def load_names(path: Path, ids: list[int], create: bool = True) -> dict[int, str]:
    """The names file as {cluster id: name}; made with defaults (`cluster_<k>`) when missing."""
    path = Path(path)
    if not path.exists():
        if create:
            write_names(path, default_names(ids))
        return default_names(ids)
    names = _id_table(path, _read_names_file(path).get("names", {}), "names", "cluster", ids)
    names = check_names(str(path), names)
    return {k: names[k] for k in ids}


def load_facet_names(path: Path, ids: list[int], clusters: dict[int, str]) -> dict[int, str]:
    """The names file's `[facets]` as {facet id: name}; defaults (`facet_<f>`) when the file or table is missing.

    Checked like cluster names, and against `clusters` (the cluster names): no facet may share one.
    """
    path = Path(path)
    doc = _read_names_file(path) if path.exists() else {}
    if "facets" not in doc:
        names: dict[int, object] = dict(default_facet_names(ids))
    else:
        names = _id_table(path, doc["facets"], "facets", "facet", ids)
    names = check_names(str(path), names, "facet", clusters)
    return {k: names[k] for k in ids}


# --------------------------------------------------------------------------- metadata


def with_metadata(model: onnx.ModelProto, info: dict) -> onnx.ModelProto:
    """Record how to feed the model and what its outputs mean (the net's own props are kept)."""
    model = graph.copy_model(model)
    props = {p.key: p.value for p in model.metadata_props}
    props.update({META + k: json.dumps(v) if k in JSON_KEYS else _text(v) for k, v in info.items()})
    helper.set_model_props(model, props)
    model.doc_string = info.get("outputs", "")
    return model


def _text(v: object) -> str:
    return "" if v is None else repr(v) if isinstance(v, float) else str(v)


def describe_outputs(
    embedding: str, ids: list[int], data: str, facets: list[dict] | None = None, threshold: float | None = None
) -> str:
    text = (
        f"Feed {data!r}: float32 [N, 3, H, W] made as introspect.preprocess says. "
        f"{embedding}: the net's embedding, float32 [N, D]. {CLUSTER}: int64 [N], the cluster id of each image "
        f"(names in introspect.clusters)"
    )
    if threshold is not None:
        text += (
            f", or {UNKNOWN} (unknown) when the top softmax probability of the scores is below {threshold:.6g} "
            "(introspect.unknown_threshold)"
        )
    text += (
        f". {CLUSTER_SCORES}: float32 [N, K], raw scores (logits; softmax them for "
        f"probabilities), column j is cluster ids[j] with ids = {ids}."
    )
    if facets:
        text += (
            f" {FACETS}: float32 [N, F], column f is the probability (summed softmax of the scores) that the image "
            f"is in one of facet f's clusters; the facets, in column order, are in introspect.facets "
            f"({len(facets)}: " + "; ".join(f"{f['id']} = clusters {f['clusters']}" for f in facets) + ")."
        )
    return text


def read_metadata(model: onnx.ModelProto, where: str = "the model") -> dict:
    """The `introspect.*` metadata, keys without the prefix, JSON fields decoded and checked."""
    meta = {p.key[len(META) :]: p.value for p in model.metadata_props if p.key.startswith(META)}
    if not meta:
        raise UserError(f"{where} has no introspect metadata; it was not made by `introspect merge`")
    try:
        meta = {k: json.loads(v) if k in JSON_KEYS else v for k, v in meta.items()}
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python's stack
        raise UserError(f"{where}: its introspect metadata is not valid JSON; run `introspect merge` again") from None
    if "clusters" in meta:
        meta["clusters"] = _clusters(meta["clusters"], where)
    if "facets" in meta:
        meta["facets"] = _facets(meta["facets"], meta.get("clusters") or [], where)
    if "unknown_threshold" in meta:
        meta["unknown_threshold"] = _threshold(meta["unknown_threshold"], where)
    return meta


def _facets(facets: object, clusters: list[dict], where: str) -> list[dict]:
    bad = UserError(
        f"{where}: introspect.facets should be a list of {{id, name, clusters}}; run `introspect merge` again"
    )
    if not isinstance(facets, list):
        raise bad
    ids = [c["id"] for c in clusters]
    names: dict[int, str] = {}
    members: dict[int, list[int]] = {}
    for f in facets:
        if not isinstance(f, dict) or not _is_int(f.get("id")) or not isinstance(f.get("clusters"), list):
            raise bad
        if f["id"] in names:
            raise UserError(
                f"{where}: facet {f['id']} appears twice in introspect.facets; run `introspect merge` again"
            )
        if not f["clusters"] or not all(_is_int(k) and k in ids for k in f["clusters"]):
            raise UserError(
                f"{where}: facet {f['id']} lists clusters {f['clusters']!r}, not some of the model's clusters {ids}; "
                "run `introspect merge` again"
            )
        names[f["id"]], members[f["id"]] = f.get("name"), list(f["clusters"])
    names = check_names(where, names, "facet", {c["id"]: c["name"] for c in clusters})
    return [{"id": k, "name": v, "clusters": members[k]} for k, v in names.items()]


def _threshold(text: object, where: str) -> float | None:
    if text in ("", None):
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise UserError(
            f"{where}: introspect.unknown_threshold is {str(text)[:40]!r}, not a probability in (0, 1]; "
            "run `introspect merge` again"
        )
    return value


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


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
    names = check_names(where, names)
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
    facets = meta.get("facets") or []
    if (FACETS in names) != bool(facets):
        raise UserError(
            f"{path}: its output {FACETS!r} and its metadata introspect.facets do not go together; "
            "run `make merge` again"
        )
    if facets:
        f = model.graph.output[names.index(FACETS)].type.tensor_type.shape.dim[-1].dim_value
        if f and f != len(facets):
            raise UserError(
                f"{path}: {f} facet columns but {len(facets)} facets in its metadata; run `make merge` again"
            )
    check_against_graph(model, meta, str(path))
    check_input(model, meta, str(path))
    return model, meta


# --------------------------------------------------------------------------- the graph is the truth


def _producers(g: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in g.node for o in n.output}


def _initializer(g: onnx.GraphProto, name: str) -> np.ndarray | None:
    return next((numpy_helper.to_array(i) for i in g.initializer if i.name == name), None)


def graph_threshold(model: onnx.ModelProto) -> float | None:
    """The unknown threshold `add_unknown` put in the graph (Where(Less(top, threshold), -1, known)); None if none."""
    made = _producers(model.graph)
    where = made.get(CLUSTER)
    if where is None or where.op_type != "Where":
        return None
    less = made.get(where.input[0])
    value = _initializer(model.graph, less.input[1]) if less is not None and less.op_type == "Less" else None
    if value is None or value.size != 1:
        raise UserError(
            f"the model's {CLUSTER!r} comes from a Where without a constant threshold; run `make merge` again"
        )
    return float(value.reshape(()))


def graph_members(model: onnx.ModelProto) -> np.ndarray | None:
    """The K x F membership matrix `add_facets` put in the graph (facets = MatMul(softmax, M)); None if no facets."""
    mm = _producers(model.graph).get(FACETS)
    if mm is None:
        return None
    m = _initializer(model.graph, mm.input[1]) if mm.op_type == "MatMul" else None
    if m is None or m.ndim != 2:
        raise UserError(f"the model's {FACETS!r} is not a MatMul with a constant membership; run `make merge` again")
    return m


def check_against_graph(model: onnx.ModelProto, meta: dict, where: str) -> None:
    """Refuse a model whose metadata (threshold, facets) says other than its graph computes.

    `label`'s fast path rebuilds these ops from the metadata, its other path runs the graph: they
    agree only while the two do.
    """
    said, done = meta.get("unknown_threshold"), graph_threshold(model)
    if (said is None) != (done is None) or (said is not None and np.float32(said) != np.float32(done)):
        raise UserError(
            f"{where}: its metadata says unknown threshold {said} but its graph applies {done}; "
            "run `introspect merge` again"
        )
    m = graph_members(model)
    facets = meta.get("facets") or []
    if (m is None) != (not facets):
        raise UserError(
            f"{where}: its metadata and its graph disagree on whether it has facets; run `make merge` again"
        )
    if m is not None:
        ids = [c["id"] for c in meta["clusters"]]
        if m.shape != (len(ids), len(facets)) or not np.array_equal(m, membership(facet_members(meta), ids)):
            raise UserError(
                f"{where}: the facets' clusters in its metadata (introspect.facets) are not those its graph sums; "
                "run `introspect merge` again"
            )


def check_input(model: onnx.ModelProto, meta: dict, where: str) -> None:
    """The metadata's input name and preprocess size are ones the graph takes (else onnxruntime fails, late)."""
    from .images import Preprocess

    inputs = {i.name: i for i in model.graph.input}
    if meta["input"] not in inputs:
        raise UserError(f"{where}: introspect.input {meta['input']!r} is not one of its inputs {sorted(inputs)}")
    pre = meta["preprocess"]
    try:
        size = Preprocess.from_config(pre).size if isinstance(pre, dict) else None
    except (KeyError, TypeError, ValueError, OverflowError):
        size = None
    if size is None:
        raise UserError(f"{where}: introspect.preprocess is not a preprocessing (size, mean, std, rgb); merge again")
    dims = [d.dim_value or None for d in inputs[meta["input"]].type.tensor_type.shape.dim]
    nchw = len(dims) == 4 and dims[1] in (None, 3)  # the layout label feeds; others are onnxruntime's to check
    if nchw and any(want and got != want for got, want in zip(size, dims[2:])):
        raise UserError(
            f"{where}: introspect.preprocess makes {size[0]} x {size[1]} images but input {meta['input']!r} takes "
            f"{dims[1:] if dims else dims} (channels, height, width); run `introspect merge` again"
        )
