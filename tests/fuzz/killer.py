"""Run `introspect ARGS...` and SIGKILL it at its Nth file-system event: `python killer.py N ARGS...`.

An event is a write, rename or delete the process makes (`open` for writing, `os.replace`,
`os.rename`, `os.unlink`, `shutil.rmtree`, an HDF5 file opened to write). N = 0 runs to the end
and prints the number of events on stderr as `events: K`, so a driver knows how many kill
points a stage has. Used by `run.py` (`make fuzz`).
"""

from __future__ import annotations

import builtins
import os
import shutil
import signal
import sys

import h5py

COUNT = [0]
KILL_AT = int(sys.argv[1])


def _event() -> None:
    COUNT[0] += 1
    if COUNT[0] == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)


def _wrap(owner, name, writes=lambda *a, **k: True):
    real = getattr(owner, name)

    def hooked(*a, **k):
        if writes(*a, **k):
            _event()
        return real(*a, **k)

    setattr(owner, name, hooked)


def _writing_mode(file, mode="r", *a, **k) -> bool:
    return any(c in str(mode) for c in "wax+")


_wrap(builtins, "open", _writing_mode)
_wrap(os, "replace")
_wrap(os, "rename")
_wrap(os, "unlink")
_wrap(os, "remove")
_wrap(shutil, "rmtree")
_wrap(h5py, "File", lambda name, mode="r", *a, **k: mode != "r")

if __name__ == "__main__":
    from introspect import cli

    rc = cli.main(sys.argv[2:])
    print(f"events: {COUNT[0]}", file=sys.stderr)
    sys.exit(rc)
