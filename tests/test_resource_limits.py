"""Disk full: a write that runs out of room (here: RLIMIT_FSIZE, `ulimit -f`, in the child) stops convert and synth
with one clear message and exit 2, leaves no partial OUT and no temporary, and keeps an existing OUT of --force.

Under RLIMIT_FSIZE a write past the limit raises SIGXFSZ, whose default action kills the process (core dump);
CPython ignores SIGXFSZ at startup, so the write fails with EFBIG instead: the same path as ENOSPC (full disk)."""

from __future__ import annotations

import errno
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from pibridge.convert.atomic import no_space_errno

CAMERA_MAP = "base_0_rgb=top,left_wrist_0_rgb=wrist"
LIMIT = 20_000_000  # bytes per file: model.safetensors (~200 MB) and synth's OCDBT data files (~40 MB) exceed it


# The child lowers its own limit, then runs the CLI (a preexec_fn would fork this multithreaded pytest process).
WITH_LIMIT = ("import resource, runpy, sys; n = int(sys.argv.pop(1)); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); "
              "runpy.run_module('pibridge.cli', run_name='__main__')")


def _cli(*args: str, limit: int | None = LIMIT) -> subprocess.CompletedProcess:
    prefix = ["-c", WITH_LIMIT, str(limit)] if limit else ["-m", "pibridge.cli"]
    return subprocess.run([sys.executable, *prefix, *map(str, args)], capture_output=True, text=True, timeout=120)


def _convert(ck: Path, out: Path, *extra: str, limit: int | None = LIMIT) -> subprocess.CompletedProcess:
    return _cli("convert", ck, out, "--profile", "pi05_droid", "--allow-tiny", "--camera-map", CAMERA_MAP, *extra,
                limit=limit)


def _synth(out: Path, limit: int | None = LIMIT) -> subprocess.CompletedProcess:
    return _cli("synth", out, "--variant", "tiny-pi05", "--profile", "pi05_droid", "--asset-id", "droid", limit=limit)


@pytest.fixture(scope="module")
def ck(tmp_path_factory) -> Path:
    ck = tmp_path_factory.mktemp("ck") / "ck"
    assert _synth(ck, limit=None).returncode == 0
    return ck


def _assert_file_size_error(proc: subprocess.CompletedProcess, out: Path) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith(f"pibridge: error: writing {out} stopped at the file-size limit"), proc.stderr
    assert "ulimit -f" in proc.stderr


def _digest(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def test_python_ignores_sigxfsz():
    """What the file-size tests rely on: a Python child ignores SIGXFSZ (else the limit would kill it)."""
    code = "import signal; print(signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "True"


def test_convert_at_the_file_size_limit(ck, tmp_path):
    out = tmp_path / "out"
    _assert_file_size_error(_convert(ck, out), out)
    assert list(tmp_path.iterdir()) == []


def test_convert_force_at_the_limit_keeps_the_old_output(ck, tmp_path):
    out = tmp_path / "out"
    assert _convert(ck, out, "--weights-dtype", "bfloat16", limit=None).returncode == 0
    before = _digest(out)
    _assert_file_size_error(_convert(ck, out, "--force"), out)
    assert _digest(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_synth_at_the_file_size_limit(tmp_path):
    """synth writes through tensorstore, which reports EFBIG as a ValueError `... [os_error_code='27']`."""
    out = tmp_path / "ck"
    _assert_file_size_error(_synth(out), out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("err, code", [
    (OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), errno.EDQUOT),
    (ValueError("OUT_OF_RANGE: Failed to write 4 bytes to file 3: No space left on device [os_error_code='28']"),
     errno.ENOSPC),
    (OSError(errno.EACCES, "Permission denied"), None),
    (ValueError("PERMISSION_DENIED: Failed to open: Permission denied [os_error_code='13']"), None),
    (KeyboardInterrupt(), None),
])
def test_no_space_errors_recognised(err, code):
    assert no_space_errno(err) == code
