"""Atomic output directories: build in a temporary sibling, then rename into place.

Names beside OUT (same parent, so renames are atomic on one filesystem):
  .<name>.pibridge-tmp-<pid>   the directory being built (holds a PARTIAL_MARKER file until complete)
  .<name>.pibridge-old-<pid>   the previous OUT during a --force swap

--force swap (two renames): OUT -> old, tmp -> OUT, then delete old. An exception (Ctrl-C included) at any
point of the swap puts the old OUT back unless the new one is already in place. A hard kill (SIGKILL, power
loss) between the renames leaves no OUT but an intact old: the next run puts it back (`recover_stale`) before
doing anything else, so the previous OUT survives a kill at any instant. Stale temporaries of dead processes
are deleted. tools/kill_test.py kills real conversions at random instants to check all of this.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pibridge.convert.guard import is_empty_dir
from pibridge.errors import PibridgeError

PARTIAL_MARKER = ".pibridge-partial"
_TMP, _OLD = "pibridge-tmp", "pibridge-old"
# write failures that mean "no room": disk full, file-size limit (ulimit -f, with SIGXFSZ ignored), quota
NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


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
    if out.exists() and not force and not is_empty_dir(out):
        raise PibridgeError(f"output {out} already exists", "a path that does not exist yet",
                            "choose another path, or pass --force to replace it (the old one is kept until the new one is complete)")
    if out.exists() and not out.is_dir():
        raise PibridgeError(f"output {out} exists and is not a directory", "a directory path", "remove it or choose another path")
    if not parent.is_dir():
        raise PibridgeError(f"parent directory {parent} does not exist", "an existing parent directory", f"create it: mkdir -p {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PibridgeError(f"cannot write in {parent}", "a writable parent directory", "choose an output path you can write to")
    if out.exists() and not _may_rename(out):
        raise PibridgeError(f"cannot replace {out}: it belongs to another user and {parent} is sticky (like /tmp)",
                            "an output you own", "choose another output path, or remove the old one as its owner")


def _may_rename(path: Path) -> bool:
    """rename(2) of an entry of a sticky directory needs the caller to own the entry or the directory."""
    parent = path.parent.stat()
    uid = os.geteuid()
    return not parent.st_mode & stat.S_ISVTX or uid in (0, parent.st_uid, path.stat().st_uid)


@contextmanager
def atomic_output_dir(out: Path, *, force: bool) -> Iterator[Path]:
    """Yield a fresh temporary directory; on normal exit it becomes `out` (swapping an old one if force).
    On any exception (KeyboardInterrupt too) the temporary is deleted and an existing `out` is kept; a write
    that fails for lack of space becomes a PibridgeError (exit 2) naming the limit that was hit."""
    out = Path(os.path.abspath(out))
    recover_stale(out)
    check_output_target(out, force)
    tmp = _sibling(out, _TMP, os.getpid())
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        (tmp / PARTIAL_MARKER).write_text("being written by pibridge; safe to delete\n")
        yield tmp
        (tmp / PARTIAL_MARKER).unlink()
        _commit(tmp, out)
    except BaseException as err:
        _discard(tmp, out)
        code = no_space_errno(err)
        if code is not None:
            raise no_space_error(out, code) from err
        raise


def no_space_errno(err: BaseException) -> int | None:
    """ENOSPC / EFBIG / EDQUOT behind `err`: an OSError, or tensorstore's error text (synth writes through
    tensorstore, which reports `... File too large [os_error_code='27']` in a ValueError)."""
    if isinstance(err, OSError):
        return err.errno if err.errno in NO_SPACE_ERRNOS else None
    found = re.search(r"os_error_code='(\d+)'", str(err)) if isinstance(err, (ValueError, RuntimeError)) else None
    return int(found[1]) if found and int(found[1]) in NO_SPACE_ERRNOS else None


def no_space_error(out: Path, code: int) -> PibridgeError:
    what = {errno.EFBIG: "the file-size limit", errno.EDQUOT: "the disk quota"}.get(code, "a full disk")
    return PibridgeError(f"writing {out} stopped at {what} ({os.strerror(code)}); nothing was written to {out.name}",
                         f"room for the whole output on {out.parent} (no `ulimit -f` limit, quota or full disk)",
                         "free disk space (df -h), raise the limit (ulimit -f unlimited) or choose an output on "
                         "another disk, then run again")


def _commit(tmp: Path, out: Path) -> None:
    if not out.exists() or is_empty_dir(out):
        os.replace(tmp, out)  # rename(2) replaces an empty directory atomically
        return
    old = _sibling(out, _OLD, os.getpid())
    os.replace(out, old)  # 1st rename: from here until the 2nd, an exception or recover_stale restores `old`
    os.replace(tmp, out)  # 2nd rename: the new OUT is in place
    shutil.rmtree(old, ignore_errors=True)


def _discard(tmp: Path, out: Path) -> None:
    """Failure or interrupt: delete the temporary; if a --force swap had begun, finish it backwards (old OUT
    back in place) or, when the new OUT was already in place, delete the old one."""
    shutil.rmtree(tmp, ignore_errors=True)
    old = _sibling(out, _OLD, os.getpid())
    if old.exists() and not out.exists():
        os.replace(old, out)
    elif old.exists():
        shutil.rmtree(old, ignore_errors=True)
