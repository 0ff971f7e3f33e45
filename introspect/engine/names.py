"""Cluster and facet names: the checks every name passes (they become file names) and the user's names file.

`<out>/cluster_names.toml`: `[names]` (cluster id = name) and `[facets]` for the center view,
`[views.V.clusters]` and `[views.V.facets]` for each further view. Made with defaults by `merge`,
then the user's to edit; a model's metadata names are checked with the same rules.
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

from ..errors import UserError
from . import store
from .rundir import write_bytes

#: The list of images no cluster claims; reserved.
UNKNOWN_NAME = "unknown"
MAX_NAME = 100


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
    path: Path,
    names: dict[int, str],
    facets: dict[int, str] | None = None,
    classifier_sha: str = "",
    views: dict[str, tuple[dict[int, str], dict[int, str]]] | None = None,
) -> None:
    """The names file: `[names]` (cluster id = name), `[facets]` (facet id = name) when there are facets,
    and per further view `[views.<V>.clusters]` and `[views.<V>.facets]` (`views`: V -> (clusters, facets)).
    """
    lines = ["# Name each cluster, then run `make merge` (and `make report`) again."]
    if classifier_sha:
        lines.append(f"# {MADE_FOR}{classifier_sha}")
    lines.append("[names]")
    lines += [f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in names.items()]  # a JSON string is a TOML one
    if facets:
        lines += ["", "# A facet is a set of clusters named once (its clusters are in metrics.json).", "[facets]"]
        lines += [f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in facets.items()]
    for view, (clusters, view_facets) in (views or {}).items():
        lines += ["", f"# View {view!r}: its clusters (outputs cluster_{view}...).", f"[views.{view}.clusters]"]
        lines += [f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in clusters.items()]
        if view_facets:
            lines += ["", f"[views.{view}.facets]"]
            lines += [f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in view_facets.items()]
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
        source = "metrics.json" if what == "facet" else "classifier.onnx"
        if what == "cluster" and section.startswith("views."):
            source = f"classifier_{section.split('.')[1]}.onnx"
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


def load_view_names(
    path: Path, view: str, ids: list[int], facet_ids: list[int]
) -> tuple[dict[int, str], dict[int, str]]:
    """A further view's (cluster names, facet names) from `[views.<view>.clusters]` / `[views.<view>.facets]`.

    Defaults `<view>-<id>` (e.g. `mean-03`) and `<view>-facet_<f>` where the file or a table is
    missing; checked like the center's names.
    """
    path = Path(path)
    doc = _read_names_file(path) if path.exists() else {}
    tables = doc.get("views", {})
    if not isinstance(tables, dict) or not isinstance(tables.get(view, {}), dict):
        raise UserError(f"{path}: [views.{view}] should hold the tables clusters and facets")
    mine = tables.get(view, {})
    if "clusters" in mine:
        names = _id_table(path, mine["clusters"], f"views.{view}.clusters", "cluster", ids)
    else:
        names = {k: f"{view}-{k:02d}" for k in ids}
    names = check_names(f"{path} [views.{view}.clusters]", names)
    if "facets" in mine:
        facets = _id_table(path, mine["facets"], f"views.{view}.facets", "facet", facet_ids)
    else:
        facets = {f: f"{view}-facet_{f}" for f in facet_ids}
    facets = check_names(f"{path} [views.{view}.facets]", facets, "facet", names)
    return {k: names[k] for k in ids}, {f: facets[f] for f in facet_ids}
