"""The merged model's contract: its outputs, its metadata, its cluster names, and the graft that makes it.

`merge` writes it, `label` runs it, `report` reads its names: all three meet here. The model
takes what the net takes and returns, in this order: the net's embedding (same name as in
the net), `cluster` (int64 [N], the cluster id) and `cluster_scores` (float32 [N, K], the
classifier's raw scores), and when the clustering made facets `facets` (float32 [N, F],
`add_facets`); with an unknown threshold `cluster` is -1 below it (`add_unknown`). Then, per
further view V (`views_of`), `cluster_V`, `cluster_V_scores`[, `facets_V`] the same way, its head
fed the center pixel or the spatial mean of the layer. Its
metadata (`introspect.*` metadata_props, `metadata.py`) says how to feed it and what the outputs
mean, so the file stands on its own; what is read back from a model is checked like the user's
names file, since a model file may come from anywhere, and against what its graph computes
(`check_against_graph`: the graph is the truth).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import compose, helper, numpy_helper

from ..errors import UserError
from ..science import classifier
from . import graph, nets, store
from .metadata import (  # noqa: F401 (the metadata's names, where merge, label, report and tests import them)
    CENTER,
    CLUSTER,
    CLUSTER_SCORES,
    FACETS,
    FEATURES,
    GRAFTED,
    JSON_KEYS,
    META,
    REQUIRED,
    TOP,
    UNKNOWN,
    VIEW_NAME,
    check_view_name,
    describe_outputs,
    facet_members,
    outputs_of,
    read_metadata,
    unknown_threshold,
    views_of,
    with_metadata,
)
from .names import (  # noqa: F401 (the names file's functions, where merge, label and report import them)
    MADE_FOR,
    MAX_NAME,
    MAX_NAME_BYTES,
    UNKNOWN_NAME,
    check_name,
    check_names,
    default_facet_names,
    default_names,
    load_facet_names,
    load_names,
    load_view_names,
    set_aside_if_stale,
    write_names,
)

HEAD_PREFIX = "cluster_head/"
#: The inner tensor each feature is computed into: its dataset's name (underscores appended if the net uses it).
FEED = store.DATASETS


# --------------------------------------------------------------------------- graph


def cluster_ids(head: onnx.ModelProto) -> list[int]:
    """The cluster ids in column order of the scores: the LinearClassifier's `classlabels_ints`."""
    for node in head.graph.node:
        if node.op_type == "LinearClassifier" and node.domain == classifier.ML:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if "classlabels_ints" in attrs:
                return [int(k) for k in attrs["classlabels_ints"]]
    raise UserError("the classifier has no LinearClassifier with integer cluster ids; run `make cluster` again")


def _input_width(head: onnx.ModelProto, what: str = "classifier.onnx") -> int:
    inputs = {i.name: i for i in head.graph.input}
    if classifier.INPUT not in inputs:
        raise UserError(f"{what} has no input {classifier.INPUT!r}; run `make cluster` again")
    return inputs[classifier.INPUT].type.tensor_type.shape.dim[-1].dim_value


@dataclass(frozen=True)
class Head:
    """A further view's classifier and the feature it is fed (`center` pixel or spatial `mean` of the layer)."""

    view: str
    feature: str
    model: onnx.ModelProto


def classifier_file(view: str) -> str:
    return "classifier.onnx" if view == CENTER else f"classifier_{view}.onnx"


def _head_prefix(view: str) -> str:
    return HEAD_PREFIX if view == CENTER else f"cluster_head_{view}/"


def graft(
    net: onnx.ModelProto,
    head: onnx.ModelProto,
    layer: graph.FeatureMap,
    embedding: str,
    more: Sequence[Head] = (),
) -> onnx.ModelProto:
    """One model: net -> (embedding, cluster, cluster_scores[, cluster_V, cluster_V_scores per view in `more`]).

    `head` (the center view) is fed the layer's center pixel; each further head its feature, the
    center pixel (a Slice) or the spatial mean (a ReduceMean beside it), computed once however
    many heads read it.
    """
    heads = [Head(CENTER, CENTER, head), *more]
    for h in heads[1:]:
        check_view_name("the views", h.view)
        if h.feature not in FEATURES:
            raise UserError(f"view {h.view!r} has feature {h.feature!r}, not one of {list(FEATURES)}")
    if len({h.view for h in heads}) != len(heads):
        raise UserError(f"views {[h.view for h in heads]} name one view twice")
    emb = graph.embedding_output(net, embedding)
    net = graph.expose(net, emb)  # an inner tensor too: the merged model returns it first
    wanted = [o for h in heads for o in outputs_of(h.view)[:2]]
    taken = sorted(graph.tensor_names(net.graph) & set(wanted))
    if taken:
        raise UserError(
            f"the net already has a tensor named {', '.join(taken)}, a name the merged outputs need; "
            "rename it in the net"
        )
    for h in heads:
        width = _input_width(h.model, classifier_file(h.view))
        if width != layer.channels:
            raise UserError(
                f"{classifier_file(h.view)} takes {width} features but layer {layer.name} has {layer.channels} "
                "channels; run `make cluster` again for this net/layer"
            )
    cut, feeds = net, {}
    for feature in dict.fromkeys(h.feature for h in heads):
        used = graph.tensor_names(cut.graph)
        name = next(n for n in (f"{FEED[feature]}{'_' * i}" for i in range(len(used) + 1)) if n not in used)
        add = graph.center_pixel if feature == CENTER else graph.spatial_mean
        cut, feeds[feature] = add(cut, layer, output=name), name
    merged, done = graph.keep_outputs(cut, [emb, *feeds.values()]), [emb]
    for h in heads:
        model = h.model
        mine, theirs = classifier.opsets_of(model), classifier.opsets_of(net)
        if model.ir_version != net.ir_version or any(theirs[d] != v for d, v in mine.items() if d in theirs):
            model = classifier.match_net(model, net)
        label, scores, _ = outputs_of(h.view)
        prefix = _head_prefix(h.view)
        model = graph.rename_tensors(
            compose.add_prefix(model, prefix), {prefix + classifier.LABEL: label, prefix + classifier.SCORES: scores}
        )
        try:
            merged = compose.merge_models(
                merged,
                model,
                io_map=[(feeds[h.feature], prefix + classifier.INPUT)],
                outputs=[*done, label, scores, *feeds.values()],
                name=f"{net.graph.name or 'net'}+clusters",
                producer_name="introspect",
            )
        except ValueError as e:  # clashing names, IR or opsets
            raise UserError(f"cannot merge the net with {classifier_file(h.view)}: {str(e).splitlines()[0]}") from e
        opsets = classifier.opsets_of(merged)  # merge_models lists a domain both declare twice
        del merged.opset_import[:]
        merged.opset_import.extend(helper.make_opsetid(d, v) for d, v in opsets.items())
        done += [label, scores]
    merged = graph.keep_outputs(merged, done)
    for out in merged.graph.output[1:]:
        d = out.type.tensor_type.shape.dim[0]
        if not (d.dim_value or d.dim_param):
            d.dim_param = graph.BATCH
    onnx.checker.check_model(merged, full_check=True)
    return merged


def view_heads(model: onnx.ModelProto) -> onnx.ModelProto:
    """The merged model's heads alone: fed its feature tensors (`prefacen`, `prefacen_mean`), all outputs but the first.

    What `label`'s fast path runs on stored activations, so its rows are the merged model's own:
    the nodes between the feature tensors and the outputs, in their order, with their weights.
    """
    feeds = [t for t in (feed_tensor(model, f) for f in FEATURES) if t]
    outs = list(model.graph.output[1:])
    needed, nodes = {o.name for o in outs}, []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            nodes.append(node)
            needed |= {i for i in node.input if i and i not in feeds}
    made = {o for n in nodes for o in n.output}
    inits = [i for i in model.graph.initializer if i.name in needed]
    loose = needed - made - {i.name for i in inits}
    if loose:
        raise UserError(
            f"the merged model's heads read {sorted(loose)[:3]}, not only its features; run `make merge` again"
        )
    head = helper.make_model(
        helper.make_graph(
            nodes[::-1],
            "heads",
            [helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, [graph.BATCH, None]) for t in feeds],
            outs,
            inits,
        ),
        opset_imports=list(model.opset_import),
        ir_version=model.ir_version,
    )
    onnx.checker.check_model(head, full_check=True)
    return head


def feed_tensor(model: onnx.ModelProto, feature: str = "center") -> str | None:
    """The inner tensor `graft` feeds a feature's heads: `prefacen` (center) or `prefacen_mean` (+ `_` if taken)."""
    prefixes = (HEAD_PREFIX, "cluster_head_")
    fed = {
        i
        for n in model.graph.node
        if n.name.startswith(prefixes) or any(o.startswith(prefixes) for o in n.output)
        for i in n.input
    }
    return next((i for i in sorted(fed, key=len) if i.rstrip("_") == FEED[feature]), None)


def center_tensor(model: onnx.ModelProto) -> str | None:
    """The inner tensor `graft` feeds the center head: the layer's center pixel."""
    return feed_tensor(model, CENTER)


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
    model: onnx.ModelProto,
    members: list[list[int]],
    ids: list[int],
    scores: str = CLUSTER_SCORES,
    output: str = FACETS,
) -> onnx.ModelProto:
    """Add the output `output`, float32 [N, F] = softmax(scores) @ M (M: `membership`), keeping the rest.

    A facet's value is the probability that the image is in one of its clusters.
    """
    if output in graph.tensor_names(model.graph):
        raise UserError(f"the model already has a tensor named {output!r}, a name the merged outputs need")
    model = graph.copy_model(model)
    g, p = model.graph, _free_name(model, f"{output}__")
    m = membership(members, ids)
    g.initializer.append(numpy_helper.from_array(m, p + "members"))
    soft = graph.add_softmax(g, scores, p + "softmax")
    g.node.append(helper.make_node("MatMul", [soft, p + "members"], [output], name=p + "matmul"))
    g.output.append(helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, [graph.BATCH, m.shape[1]]))
    onnx.checker.check_model(model, full_check=True)
    return model


def add_unknown(
    model: onnx.ModelProto, threshold: float, label: str = CLUSTER, scores: str = CLUSTER_SCORES
) -> onnx.ModelProto:
    """`label` becomes -1 (UNKNOWN) where the top softmax probability of `scores` is below `threshold`.

    Softmax, ReduceMax, Less and Where after the classifier; the output keeps its name and place.
    """
    model = graph.copy_model(model)
    g, p = model.graph, _free_name(model, "unknown__" if label == CLUSTER else f"unknown_{label}__")
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
    model: onnx.ModelProto, ids: list[int], members: list[list[int]], threshold: float | None, view: str = CENTER
) -> onnx.ModelProto:
    """`add_unknown` (when a threshold is set), then `add_facets` (when there are facets) on a view's outputs.

    Merge and label share it. The view's facets output comes right after its scores.
    """
    label, scores, facets = outputs_of(view)
    if threshold is not None:
        model = add_unknown(model, threshold, label, scores)
    if members:
        model = add_facets(model, members, ids, scores, facets)
        outs = list(model.graph.output)
        made = outs.pop()
        at = next((j + 1 for j, o in enumerate(outs) if o.name == scores), len(outs))
        del model.graph.output[:]
        model.graph.output.extend(outs[:at] + [made] + outs[at:])
    return model


def _check_view_outputs(model: onnx.ModelProto, v: dict, names: list[str], path: str) -> None:
    """A view's outputs are there, as wide as its metadata says, with facets exactly when it has some."""
    what = "" if v["name"] == CENTER else f" (view {v['name']})"
    if v["label"] not in names or v["scores"] not in names:
        raise UserError(
            f"{path}: its metadata lists view {v['name']!r} but it has no outputs {v['label']!r} and "
            f"{v['scores']!r}; run `make merge` again"
        )
    k = model.graph.output[names.index(v["scores"])].type.tensor_type.shape.dim[-1].dim_value
    if k and k != len(v["clusters"]):
        raise UserError(
            f"{path}: {k} score columns but {len(v['clusters'])} clusters in its metadata{what}; run `make merge` again"
        )
    facets = v["facets"]
    if (v["facets_output"] in names) != bool(facets):
        raise UserError(
            f"{path}: its output {v['facets_output']!r} and its metadata's facets{what} do not go together; "
            "run `make merge` again"
        )
    if facets:
        f = model.graph.output[names.index(v["facets_output"])].type.tensor_type.shape.dim[-1].dim_value
        if f and f != len(facets):
            raise UserError(
                f"{path}: {f} facet columns but {len(facets)} facets in its metadata{what}; run `make merge` again"
            )


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
    for v in views_of(meta):
        _check_view_outputs(model, v, names, str(path))
    check_against_graph(model, meta, str(path))
    check_input(model, meta, str(path))
    return model, meta


# --------------------------------------------------------------------------- the graph is the truth


def _producers(g: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in g.node for o in n.output}


def _initializer(g: onnx.GraphProto, name: str) -> np.ndarray | None:
    return next((numpy_helper.to_array(i) for i in g.initializer if i.name == name), None)


def graph_threshold(model: onnx.ModelProto, label: str = CLUSTER) -> float | None:
    """The unknown threshold `add_unknown` put on output `label` (Where(Less(top, t), -1, known)); None if none."""
    made = _producers(model.graph)
    where = made.get(label)
    if where is None or where.op_type != "Where":
        return None
    less = made.get(where.input[0])
    value = _initializer(model.graph, less.input[1]) if less is not None and less.op_type == "Less" else None
    if value is None or value.size != 1:
        raise UserError(
            f"the model's {label!r} comes from a Where without a constant threshold; run `make merge` again"
        )
    return float(value.reshape(()))


def graph_members(model: onnx.ModelProto, facets: str = FACETS) -> np.ndarray | None:
    """The K x F membership matrix `add_facets` put on output `facets` (MatMul(softmax, M)); None if no such output."""
    mm = _producers(model.graph).get(facets)
    if mm is None:
        return None
    m = _initializer(model.graph, mm.input[1]) if mm.op_type == "MatMul" else None
    if m is None or m.ndim != 2:
        raise UserError(f"the model's {facets!r} is not a MatMul with a constant membership; run `make merge` again")
    return m


def check_against_graph(model: onnx.ModelProto, meta: dict, where: str) -> None:
    """Refuse a model whose metadata (each view's threshold and facets) says other than its graph computes.

    `label` writes its lists and `report` its page from the metadata, the labels come from the
    graph: they agree only while the two do, for every view (`views_of`).
    """
    for v in views_of(meta):
        at = "" if v["name"] == CENTER else f" (view {v['name']})"
        said, done = v["unknown_threshold"], graph_threshold(model, v["label"])
        if (said is None) != (done is None) or (said is not None and np.float32(said) != np.float32(done)):
            raise UserError(
                f"{where}: its metadata says unknown threshold {said}{at} but its graph applies {done}; "
                "run `introspect merge` again"
            )
        m, facets = graph_members(model, v["facets_output"]), v["facets"]
        if (m is None) != (not facets):
            raise UserError(
                f"{where}: its metadata and its graph disagree on whether it has facets{at}; run `make merge` again"
            )
        if m is not None:
            ids = [c["id"] for c in v["clusters"]]
            want = membership([f["clusters"] for f in facets], ids)
            if m.shape != want.shape or not np.array_equal(m, want):
                raise UserError(
                    f"{where}: the facets' clusters in its metadata{at} are not those its graph sums; "
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
