"""One line for a run in which no input could be read: how many failed, why, and the likely cause.

Every stage that reads a list (align, extract and its preprocessing check, merge's check, label,
each shard of them) ends with the same verdict when nothing it read was usable, so a user meets
one message whatever stage they ran first. The commonest cause on real folders is a list written
with `find photos ...` (paths starting `photos/`) read with `--root photos`: every path is then
looked up as `photos/photos/...`. That case is recognised by reading the first failed line again
with the root's own name removed from its front; other cases name the commonest reason and a line.
"""

from __future__ import annotations

import os
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from . import store
from .sources import FileSource, Source

__all__ = ["FIND", "Failures", "NothingReadable", "doubled_prefix", "nothing_read", "refuse_if_nothing_read"]

#: How the docs make a list of photos under ROOT, relative to it (.jpg, .jpeg and .png, any case).
FIND = (
    "(cd ROOT && find . -type f \\( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \\) | sed 's|^\\./||') > LIST"
)

#: `images.read_bytes`' reason for a path that is not there.
MISSING = "missing"

#: Failed lines kept as examples (the diagnosis re-reads a few; the count covers every failure).
EXAMPLES = 8


@dataclass
class Failures:
    """Failures seen so far: a count per reason, and the first few (line, reason) as examples."""

    reasons: Counter = field(default_factory=Counter)
    examples: list[tuple[str, str]] = field(default_factory=list)

    def add(self, line: str, reason: str) -> None:
        self.reasons[reason] += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append((line, reason))

    @property
    def count(self) -> int:
        return sum(self.reasons.values())


def doubled_prefix(line: str, root: str | os.PathLike, source: Source, max_bytes: int = 1 << 20) -> str | None:
    """The leading part of `line` that repeats the end of `root` (`photos/` for root `photos`) when the line
    reads once that part is removed, else None."""
    parts = PurePosixPath(line.replace(os.sep, "/")).parts
    tail = Path(os.path.abspath(root)).parts
    for k in range(1, min(len(parts), len(tail))):
        if parts[:k] == tail[len(tail) - k :]:
            rest = "/".join(parts[k:])
            data, _ = source.read(rest, max_bytes)
            if data is not None:
                return "/".join(parts[:k]) + "/"
    return None


def _root_without(root: str | os.PathLike, prefix: str) -> str:
    """`root` with the trailing folders `prefix` names removed (`photos` minus `photos/` is `.`)."""
    p = Path(root)
    for _ in PurePosixPath(prefix).parts:
        p = p.parent
    return str(p)


def _cause(f: Failures, root: str, source: Source, max_bytes: int, hints: dict[str, str]) -> str:
    """The likely cause, as a clause that says what to do."""
    lines = [line for line, _ in f.examples if line]
    for line in lines[:3]:
        prefix = doubled_prefix(line, root, source, max_bytes)
        if prefix:
            return (
                f"the list's paths start with the root's own name '{prefix}' ({store.printable(line)} is read as "
                f"{store.printable(os.path.join(root, line))}): run from inside the root, "
                f"or use --root {_root_without(root, prefix)}"
            )
    commonest = f.reasons.most_common(1)[0][0]
    if commonest in hints:
        return hints[commonest]
    if isinstance(source, FileSource) and commonest == MISSING:
        if not os.path.exists(root):
            return f"data.root {root} does not exist: check --root"
        if not os.path.isdir(root):
            return f"data.root {root} is not a folder: --root is the folder the list's paths are relative to"
        if any(FileSource(".").read(line, max_bytes)[0] is not None for line in lines[:3]):
            return f"the list's paths are relative to the current folder, not to data.root {root}: use --root ."
        find = FIND.replace("ROOT", shlex.quote(root)).replace("LIST", "list.txt")
        return f"check data.root ({root}) and the list; a list relative to the root: {find}"
    return f"check data.root ({root}) and the list"


def nothing_read(
    f: Failures,
    source: Source,
    *,
    whole: bool,
    what: str = "images",
    max_bytes: int = 1 << 20,
    hints: dict[str, str] | None = None,
) -> str:
    """The one line: `all N <what> failed` (`whole`: every line was tried) or `none of the first N <what>
    could be read`, the commonest reasons, an example line, and the likely cause (under the source's root;
    `hints`: what to say when a given reason is the commonest)."""
    root = str(source.root)
    n = f.count
    head = f"all {n} {what} failed" if whole else f"none of the first {n} {what} could be read"
    top = ", ".join(f"{r}: {k}" for r, k in f.reasons.most_common(3))
    more = ", ..." if len(f.reasons) > 3 else ""
    line, reason = f.examples[0] if f.examples else ("", "")
    example = f"; e.g. {store.printable(line) or '(empty line)'}: {reason}" if f.examples else ""
    return f"{head} ({top}{more}){example}; {_cause(f, root, source, max_bytes, hints or {})}"


class NothingReadable(Exception):
    """No image of a fresh run was usable: the failures seen, and whether they are every line the run had."""

    def __init__(self, failed: Failures, whole: bool) -> None:
        super().__init__(f"none of {failed.count} images could be read")
        self.failed, self.whole = failed, whole


def refuse_if_nothing_read(parts: list[Path]) -> None:
    """NothingReadable when finished part files (this session's and a resumed one's) hold failures and no row,
    before empty results are written that a fixed re-run would take as done."""
    if not parts or any(store.count_rows(p) for p in parts):
        return
    failed = Failures()
    for p in parts:
        for _, line, reason in store.read_failures(p):
            failed.add(line, reason)
    if failed.count:
        raise NothingReadable(failed, whole=True)
