"""Image lists: read as they are (any bytes, no line kept in memory), and the reference's random subset.

Split from `stream` (which re-exports these names): what a list is and which of its lines the
subset keeps, apart from how the lines are streamed through a net.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from ..errors import UserError
from .diagnose import FIND


@dataclass(frozen=True)
class ListInfo:
    path: Path
    lines: int
    sha256: str


def scan_list(path: Path) -> ListInfo:
    """Count lines and hash the list in one streaming pass (a 17 M-line list is ~1 GB)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"image list {path} is a folder; give a text file with one image path per line")
    if not path.is_file():
        raise UserError(
            f"image list {path} does not exist; make one with `{FIND.replace('LIST', str(path))}` or `make data`"
        )
    h, lines, last = hashlib.sha256(), 0, b"\n"
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
                lines += block.count(b"\n")
                last = block[-1:]
    except OSError as e:
        raise UserError(f"cannot read the image list {path}: {e.strerror}") from None
    lines += last != b"\n"  # a last line without a newline still counts
    if lines == 0:
        raise UserError(f"image list {path} is empty; it needs one image path per line")
    return ListInfo(path, lines, h.hexdigest())


def open_list(path: Path) -> IO[str]:
    """The list as text lines ending at \\n only (as counted); bytes that are not UTF-8 kept as surrogates."""
    return open(path, encoding="utf-8", errors="surrogateescape", newline="\n")


def read_lines(path: Path, wanted: Iterable[int]) -> dict[int, str]:
    """The list's lines at the 0-based numbers `wanted`, in one streaming pass."""
    want = sorted(set(int(i) for i in wanted))
    got: dict[int, str] = {}
    if not want:
        return got
    with open_list(path) as f:
        j = 0
        for i, line in enumerate(f):
            if i == want[j]:
                got[i] = line.rstrip("\r\n")
                j += 1
                if j == len(want):
                    break
    return got


def subset_mask(lines: int, fraction: float, seed: int) -> np.ndarray:
    """The reference's subset rule, whole: `RandomState(seed).random(lines) < fraction`."""
    return np.random.RandomState(seed).random(lines) < fraction


#: `extract.fraction = "auto"`: the reference's share, raised to `extract.min_subset` rows on a short list.
AUTO_FRACTION = 0.02


def subset_threshold(lines: int, fraction: float, seed: int, at_least: int = 0, block: int = 1 << 20) -> float:
    """The threshold the subset's draws are compared with: `fraction`, or higher when that keeps fewer
    than `at_least` lines (then just above the `at_least`-th smallest draw; 1.0 when the list is shorter).

    Same draws as `subset_mask`, so the subset is the reference's plus the lines with the next
    smallest draws: reproducible from (list length, seed), and `fraction` exactly whenever it
    already keeps `at_least` lines. One pass over the draws (not the list), stopping early once
    `fraction` is seen to be enough.
    """
    if at_least <= 0:
        return fraction
    if lines <= at_least:
        return 1.0
    rs = np.random.RandomState(seed)
    low, below = np.empty(0), 0
    for start in range(0, lines, block):
        u = rs.random(min(block, lines - start))
        below += int(np.count_nonzero(u < fraction))
        if below >= at_least:
            return fraction
        low = np.concatenate([low, u])
        if len(low) > at_least:
            low = np.partition(low, at_least - 1)[:at_least]
    return max(fraction, float(np.nextafter(low.max(), 1.0)))


def chunk_masks(lines: int, chunk_size: int, fraction: float, seed: int) -> Iterator[np.ndarray]:
    """The same draws chunk by chunk: RandomState's doubles do not depend on how they are split."""
    rs = np.random.RandomState(seed)
    for start in range(0, lines, chunk_size):
        yield rs.random(min(chunk_size, lines - start)) < fraction
