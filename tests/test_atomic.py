import subprocess
import sys

import pytest

from pibridge.convert.atomic import PARTIAL_MARKER, atomic_output_dir, recover_stale
from pibridge.errors import PibridgeError


def test_new_output_appears_only_when_complete(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out, force=False) as tmp:
        (tmp / "a.txt").write_text("x")
        assert not out.exists()
        assert (tmp / PARTIAL_MARKER).exists()
    assert (out / "a.txt").read_text() == "x"
    assert not (out / PARTIAL_MARKER).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_existing_output_refused_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("old")
    with pytest.raises(PibridgeError, match="already exists"):
        with atomic_output_dir(out, force=False):
            pass
    assert (out / "keep").read_text() == "old"


def test_error_inside_leaves_old_output_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, force=True) as tmp:
            (tmp / "new").write_text("n")
            raise RuntimeError("boom")
    assert (out / "keep").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_force_swaps(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("old")
    with atomic_output_dir(out, force=True) as tmp:
        (tmp / "new").write_text("n")
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_kill_between_the_two_renames_is_recovered(tmp_path):
    out = tmp_path / "out"
    pid = _dead_pid()
    old = tmp_path / f".out.pibridge-old-{pid}"
    old.mkdir()
    (old / "keep").write_text("old")
    tmp = tmp_path / f".out.pibridge-tmp-{pid}"
    tmp.mkdir()
    (tmp / "new").write_text("n")
    actions = recover_stale(out)
    assert (out / "keep").read_text() == "old"
    assert not tmp.exists() and not old.exists()
    assert len(actions) == 2


# An unwritable parent is tested as an unprivileged user (root bypasses file modes): tests/test_permissions.py.
