"""Filesystem helpers shared by every stage that writes a model folder."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale(out: Path) -> list[Path]:
    """Remove what killed writers of ``out`` left: ``.<name>.tmp-<pid>`` folders of dead pids. A dead pid's
    ``.<name>.old-<pid>`` is the previous ``out``, moved aside just before the new one went in: deleted when
    ``out`` exists, renamed back to ``out`` when it does not (the kill fell between the two renames).
    Returns the paths removed or restored."""
    done = []
    for kind in ("tmp", "old"):
        for stale in sorted(out.parent.glob(f".{out.name}.{kind}-*")):
            pid = stale.name.rsplit("-", 1)[1]
            if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
                continue
            if kind == "old" and not out.exists():
                os.replace(stale, out)
            else:
                shutil.rmtree(stale, ignore_errors=True)
            done.append(stale)
    return done


@contextmanager
def atomic_directory(out: Path) -> Iterator[Path]:
    """Yield an empty temp folder beside ``out``; on success it replaces ``out`` in one rename, on any error
    (or Ctrl-C) it is deleted. A SIGKILL leaves only a hidden ``.<name>.tmp-<pid>`` folder, never a partial
    ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)  # a killed run's leftovers are never cleaned otherwise
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
