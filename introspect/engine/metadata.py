"""The merged model's metadata: its output names, and the `introspect.*` props that say how to feed it.

`merge` writes the props (`with_metadata`, `describe_outputs`); `label` and `report` read them back
(`read_metadata`, `views_of`), checked like the user's names file since a model file may come
from anywhere. The graph side (graft, heads, and whether the graph computes what the metadata
says) is `merged`'s, which re-exports these names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import onnx
from onnx import helper

from ..errors import UserError
from . import graph
from .names import check_names
from .store import DATASETS

CLUSTER = "cluster"
CLUSTER_SCORES = "cluster_scores"
TOP = "cluster_probability"  # softmax of the scores' top entry, added by `label`
FACETS = "facets"
#: The `cluster` of an image whose top probability is below the unknown threshold, and its list's name.
UNKNOWN = -1
META = "introspect."
JSON_KEYS = ("clusters", "preprocess", "facets", "views")
#: The center view (the top-level outputs and metadata) and the features a view's head may be fed.
CENTER = "center"
FEATURES = tuple(DATASETS)
GRAFTED = ("exact", "approximate")
#: A view's name becomes output names (`cluster_<name>`) and folder names: short, lower case.
VIEW_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
#: Keys `label` and `report` need from a merged model's metadata.
REQUIRED = ("clusters", "preprocess", "input", "layer", "net_sha256", "classifier_sha256")


def outputs_of(view: str) -> tuple[str, str, str]:
    """A view's (label, scores, facets) outputs: `cluster`, `cluster_scores`, `facets` for the center view."""
    if view == CENTER:
        return CLUSTER, CLUSTER_SCORES, FACETS
    return f"{CLUSTER}_{view}", f"{CLUSTER}_{view}_scores", f"{FACETS}_{view}"


def unknown_threshold(meta: dict) -> float | None:
    """The checked `introspect.unknown_threshold` of a model's metadata; None when off."""
    return meta.get("unknown_threshold")


def facet_members(meta: dict) -> list[list[int]]:
    return [f["clusters"] for f in meta.get("facets") or []]


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
    embedding: str,
    ids: list[int],
    data: str,
    facets: list[dict] | None = None,
    threshold: float | None = None,
    views: Sequence[dict] = (),
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
    for v in views:  # the further views, each {name, feature, clusters, facets, unknown_threshold, grafted}
        label, scores, fac = outputs_of(v["name"])
        fed = "center pixel" if v["feature"] == CENTER else "spatial mean"
        text += (
            f" View {v['name']!r} ({v['grafted']}, fed the layer's {fed}; introspect.views): {label}, {scores}"
            + (f", {fac}" if v["facets"] else "")
            + f" as above for its clusters {[c['id'] for c in v['clusters']]}"
            + (f", -1 below {v['unknown_threshold']:.6g}" if v["unknown_threshold"] is not None else "")
            + "."
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
    if "views" in meta:
        meta["views"] = _views(meta["views"], where)
    return meta


def check_view_name(where: str, name: object) -> str:
    if not isinstance(name, str) or not VIEW_NAME.match(name):
        raise UserError(
            f"{where}: view name {str(name)[:40]!r} is not a short lower-case name "
            "(a letter, then letters, digits or _); run `make cluster` again"
        )
    return name


def _views(views: object, where: str) -> list[dict]:
    """introspect.views checked: center first, then each further view's name, feature, clusters, facets, threshold."""
    bad = UserError(
        f"{where}: introspect.views should be a list of {{name, feature, clusters, facets, unknown_threshold, "
        "grafted, accuracy}, center first; run `introspect merge` again"
    )
    if not isinstance(views, list) or not views or not isinstance(views[0], dict) or views[0].get("name") != CENTER:
        raise bad
    out, seen = [], set()
    for v in views:
        if not isinstance(v, dict):
            raise bad
        name = check_view_name(where, v.get("name"))
        if name in seen:
            raise UserError(f"{where}: view {name!r} appears twice in introspect.views; run `introspect merge` again")
        seen.add(name)
        at = f"{where} (view {name})"
        if v.get("feature") not in FEATURES or v.get("grafted") not in GRAFTED:
            raise UserError(
                f"{at}: feature {str(v.get('feature'))[:20]!r} / grafted {str(v.get('grafted'))[:20]!r} should be "
                f"one of {list(FEATURES)} / {list(GRAFTED)}; run `introspect merge` again"
            )
        acc = v.get("accuracy")
        if acc is not None and not (isinstance(acc, (int, float)) and not isinstance(acc, bool) and 0 <= acc <= 1):
            raise UserError(f"{at}: accuracy {str(acc)[:20]!r} is not in [0, 1]; run `introspect merge` again")
        clusters = _clusters(v.get("clusters"), at)
        out.append(
            {
                "name": name,
                "feature": v["feature"],
                "clusters": clusters,
                "facets": _facets(v.get("facets") or [], clusters, at),
                "unknown_threshold": _threshold(v.get("unknown_threshold"), at),
                "grafted": v["grafted"],
                "accuracy": None if acc is None else float(acc),
            }
        )
    return out


def views_of(meta: dict) -> list[dict]:
    """Every view a merged model carries, center first (from the top-level keys: an old model has only it).

    Each: name, feature, clusters, facets, unknown_threshold, grafted, accuracy, and its outputs
    `label`, `scores`, `facets_output`.
    """
    center = {
        "name": CENTER,
        "feature": CENTER,
        "clusters": meta["clusters"],
        "facets": meta.get("facets") or [],
        "unknown_threshold": meta.get("unknown_threshold"),
        "grafted": "exact",
        "accuracy": None,
    }
    further = (meta.get("views") or [])[1:]
    out = []
    for v in [center, *further]:
        label, scores, facets = outputs_of(v["name"])
        out.append({**v, "label": label, "scores": scores, "facets_output": facets})
    return out


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
