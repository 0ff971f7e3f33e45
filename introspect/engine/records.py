"""The paths a run records (net, list, data root), kept both as given and resolved.

extract and label write `model_path`, `list_path` and `data_root` into their files' attributes
as the user gave them: relative to the working folder of that moment. A later stage run from
another folder cannot find them there, so each is also recorded resolved (`*_abs`). Reading
back, the resolved path is tried first, then the path as given (all an older run has).
"""

from __future__ import annotations

from pathlib import Path

from .remote import is_url

#: Each recorded path's key -> the key of its resolved copy.
ABS = {"model_path": "model_path_abs", "list_path": "list_path_abs", "data_root": "data_root_abs"}


def paths(model: Path | str | None, list_path: Path | str, root: Path | str) -> dict[str, str]:
    """The attributes that say where the net, the list and the data were: as given, and resolved."""
    out: dict[str, str] = {}
    for key, p in (("model_path", model), ("list_path", list_path), ("data_root", root)):
        if p is None:
            continue
        out[key] = str(p)
        out[ABS[key]] = str(p) if is_url(str(p)) else str(Path(p).resolve())  # a URL is the same from anywhere
    return out


def candidates(attrs: dict, key: str) -> list[Path | str]:
    """The places `key` was recorded at, most reliable first (resolved, then as given); no repeats. A URL
    (data.root in object storage) stays a string: a Path would fold its `//`."""
    seen: list[Path | str] = []
    for k in (ABS[key], key):
        v = attrs.get(k)
        if isinstance(v, str) and v:
            p = v if is_url(v) else Path(v)
            if p not in seen:
                seen.append(p)
    return seen


def best(attrs: dict, key: str) -> Path | str | None:
    """The recorded path that exists now (a URL is taken as it is); else the first recorded (the stage then says
    it is missing); else None."""
    found = candidates(attrs, key)
    return next((p for p in found if isinstance(p, str) or p.exists()), found[0] if found else None)
