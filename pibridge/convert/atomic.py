"""Atomic output directories: build in a temporary sibling, then rename into place.

Names beside OUT (same parent, so renames are atomic on one filesystem):
  .<name>.pibridge-tmp-<pid>   the directory being built (holds a PARTIAL_MARKER file until complete)
  .<name>.pibridge-old-<pid>   the previous OUT during a --force swap

--force swap (two renames): OUT -> old, tmp -> OUT, then delete old. A kill between the renames leaves
no OUT but an intact old: the next run puts it back (`recover_stale`) before doing anything else, so the
previous OUT survives a kill at any instant. Stale temporaries of dead processes are deleted.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pibridge.errors import PibridgeError

PARTIAL_MARKER = ".pibridge-partial"
_TMP, _OLD = "pibridge-tmp", "pibridge-old"


def _sibling(out: Path, kind: str, pid: int) -> Path:
    return out.parent / f".{out.name}.{kind}-{pid}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(out: Path, kind: str) -> list[Path]:
    found = []
    for p in out.parent.glob(f".{out.name}.{kind}-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            found.append(p)
    return sorted(found)


def recover_stale(out: Path) -> list[str]:
    """Undo what killed runs left beside `out`. Returns one line per action taken."""
    actions = []
    for old in _stale(out, _OLD):
        if not out.exists():
            os.replace(old, out)  # killed between the two renames of a --force swap: put the old OUT back
            actions.append(f"restored {out} from interrupted --force swap")
        else:
            shutil.rmtree(old, ignore_errors=True)
            actions.append(f"removed leftover {old.name}")
    for tmp in _stale(out, _TMP):
        shutil.rmtree(tmp, ignore_errors=True)
        actions.append(f"removed stale temporary {tmp.name}")
    return actions


def check_output_target(out: Path, force: bool) -> None:
    """Refuse before any work: OUT exists without --force, or its parent is missing / not writable."""
    parent = out.parent
    if out.exists() and not force:
        raise PibridgeError(f"output {out} already exists", "a path that does not exist yet",
                            "choose another path, or pass --force to replace it (the old one is kept until the new one is complete)")
    if out.exists() and not out.is_dir():
        raise PibridgeError(f"output {out} exists and is not a directory", "a directory path", "remove it or choose another path")
    if not parent.is_dir():
        raise PibridgeError(f"parent directory {parent} does not exist", "an existing parent directory", f"create it: mkdir -p {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PibridgeError(f"cannot write in {parent}", "a writable parent directory", "choose an output path you can write to")


@contextmanager
def atomic_output_dir(out: Path, *, force: bool) -> Iterator[Path]:
    """Yield a fresh temporary directory; on normal exit it becomes `out` (swapping an old one if force)."""
    out = Path(os.path.abspath(out))
    recover_stale(out)
    check_output_target(out, force)
    tmp = _sibling(out, _TMP, os.getpid())
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    (tmp / PARTIAL_MARKER).write_text("being written by pibridge; safe to delete\n")
    try:
        yield tmp
        (tmp / PARTIAL_MARKER).unlink()
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _commit(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    old = _sibling(out, _OLD, os.getpid())
    os.replace(out, old)  # 1st rename: from here until the 2nd, recover_stale restores `old`
    os.replace(tmp, out)  # 2nd rename: the new OUT is in place
    shutil.rmtree(old, ignore_errors=True)
