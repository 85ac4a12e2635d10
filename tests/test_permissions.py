"""Permissions, checked as an unprivileged user (CI runs as root, which bypasses file modes: as root the CLI
runs with uid/gid 65534, nobody; where nobody cannot reach the checkout, e.g. a clone under a 0700 `mktemp -d`, it
runs as root without any capability, to which file modes apply as well). Unreadable checkpoint metadata, data or norm stats, an output parent that is
not writable, another user's OUT in a sticky directory: one message, exit 2, nothing written."""

from __future__ import annotations

import functools
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pibridge.convert.synth import write_synthetic_checkpoint

CAMERA_MAP = "base_0_rgb=top,left_wrist_0_rgb=wrist"
NOBODY = 65534
ROOT = Path(__file__).resolve().parents[1]


NOBODY_PREFIX = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
NO_CAPS_PREFIX = ("setpriv", "--bounding-set=-all", "--inh-caps=-all")  # uid 0, but no CAP_DAC_OVERRIDE & co.


@functools.cache
def _prefix() -> tuple[str, ...]:
    """As root: run the child as nobody (setpriv drops uid, gid and supplementary groups before exec), or, when
    nobody cannot run this interpreter / import pibridge from where the checkout lives, as capability-less root."""
    if os.geteuid() != 0:
        return ()
    probe = subprocess.run([*NOBODY_PREFIX, sys.executable, "-c", "import pibridge.cli"], capture_output=True,
                           cwd="/", timeout=120)
    return NOBODY_PREFIX if probe.returncode == 0 else NO_CAPS_PREFIX


def _unprivileged_prefix() -> list[str]:
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux) to drop privileges")
    return list(_prefix())


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*_unprivileged_prefix(), sys.executable, *map(str, args)], capture_output=True, text=True,
                          cwd="/", timeout=120)


def _convert(ck: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return _run("-m", "pibridge.cli", "convert", ck, out, "--profile", "pi05_droid", "--allow-tiny",
                "--camera-map", CAMERA_MAP, *extra)


@pytest.fixture(scope="module")
def shared():
    """A directory every user can reach (pytest's tmp dirs are 0700), with a checkpoint all can read."""
    probe = _run("-c", "import pibridge.cli")
    if probe.returncode != 0:
        pytest.skip(f"{_prefix()} cannot run this interpreter / import pibridge: {probe.stderr[-200:]}")
    root = Path(tempfile.mkdtemp(prefix="pibridge-perm-"))
    root.chmod(0o777)
    ck = root / "ck"
    write_synthetic_checkpoint(ck, variant="tiny-pi05", profile="pi05_droid", asset_id="droid", progress=False)
    for p in [ck, *ck.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if p.is_dir() else 0))
    yield root, ck
    shutil.rmtree(root)


@pytest.fixture
def parent(shared, request):
    d = shared[0] / request.node.name.replace("[", "-").replace("]", "")
    d.mkdir()
    d.chmod(0o777)
    yield d
    d.chmod(0o700)
    shutil.rmtree(d)


def _assert_refused(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("pibridge: error: "), proc.stderr
    for w in words:
        assert w.lower() in proc.stderr.lower(), proc.stderr


UNREADABLE = {
    "metadata": lambda ck: [ck / "params" / "_METADATA"],
    "data": lambda ck: sorted((ck / "params" / "ocdbt.process_0" / "d").iterdir()),
    "norm-stats": lambda ck: [ck / "assets" / "droid" / "norm_stats.json"],
}


@pytest.mark.parametrize("what", sorted(UNREADABLE))
def test_unreadable_checkpoint_file(shared, parent, what):
    _, ck = shared
    files = UNREADABLE[what](ck)
    modes = [f.stat().st_mode for f in files]
    for f in files:
        f.chmod(0o000)
    try:
        proc = _convert(ck, parent / "out")
    finally:
        for f, m in zip(files, modes):
            f.chmod(m)
    _assert_refused(proc, "permission denied")
    assert list(parent.iterdir()) == []


def test_output_parent_not_writable(shared, parent):
    _, ck = shared
    parent.chmod(0o555)
    _assert_refused(_convert(ck, parent / "out"), f"cannot write in {parent}")
    assert list(parent.iterdir()) == []


def test_synth_into_a_parent_not_writable(parent):
    parent.chmod(0o555)
    proc = _run("-m", "pibridge.cli", "synth", parent / "ck", "--variant", "tiny-pi05")
    _assert_refused(proc, f"cannot write in {parent}")
    assert list(parent.iterdir()) == []


def test_atomic_output_dir_refuses_parent_not_writable(parent):
    """The library call (not only the CLI) refuses before creating anything."""
    parent.chmod(0o555)
    code = ("import sys; from pathlib import Path; from pibridge.convert.atomic import atomic_output_dir\n"
            "from pibridge.errors import PibridgeError\n"
            "try:\n    with atomic_output_dir(Path(sys.argv[1]), force=False): pass\n"
            "except PibridgeError as e: print(e.found)")
    proc = _run("-c", code, parent / "out")
    assert proc.stdout.strip() == f"cannot write in {parent}", proc.stderr


def test_force_over_another_users_output_in_a_sticky_directory(shared, parent):
    """rename(2) in a sticky directory (like /tmp) needs ownership: refused up front, not after writing."""
    if os.geteuid() != 0 or _prefix() != NOBODY_PREFIX:
        pytest.skip("needs root to make OUT another user's, and the CLI running as nobody (root owns it all)")
    _, ck = shared
    parent.chmod(0o1777)
    out = parent / "out"
    out.mkdir()
    (out / "keep").write_text("old")  # owned by root
    _assert_refused(_convert(ck, out, "--force"), "belongs to another user")
    assert [p.name for p in parent.iterdir()] == ["out"] and (out / "keep").read_text() == "old"


def test_os_error_outside_convert_is_one_message(parent):
    """Any other command hitting the file system's permissions (here `parity obs` creating its directory in a
    read-only one): the CLI prints the OS error in one message and exits 2, no traceback."""
    parent.chmod(0o555)
    proc = _run("-m", "pibridge.cli", "parity", "obs", parent / "sub" / "obs.safetensors", "--profile", "pi05_droid")
    _assert_refused(proc, "permission denied", f"{parent}/sub", "check permissions")
    assert list(parent.iterdir()) == []
