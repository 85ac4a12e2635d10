"""Interruptions: `pibridge convert` killed (SIGKILL) or interrupted (SIGINT, SIGTERM) at any instant never leaves
a partial OUT, never loses the previous OUT of a --force run, and the next run cleans up (tools/kill_test.py)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pibridge.convert import atomic

ROOT = Path(__file__).resolve().parents[1]
KILL_RUNS = 20


def _load_kill_test():
    spec = importlib.util.spec_from_file_location("kill_test", ROOT / "tools" / "kill_test.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["kill_test"] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod


kill_test = _load_kill_test()


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    work = tmp_path_factory.mktemp("kill")
    return work, kill_test.setup(work)


def test_random_kills_never_leave_a_partial_output(refs):
    work, r = refs
    _, results = kill_test.run_kill_test(KILL_RUNS, seed=int(os.environ.get("PIBRIDGE_KILL_SEED", "0")), work=work,
                                         refs=r)
    table = kill_test.report_markdown(r, results, 0, 0)
    assert not [x for x in results if x.problems], table
    assert sum(x.damaged for x in results) == 0, table
    assert Counter(x.signal for x in results) == {"SIGINT": KILL_RUNS // 2, "SIGKILL": KILL_RUNS // 2}
    assert Counter(x.mode for x in results) == {"plain": 6, "empty": 4, "force": KILL_RUNS // 2}
    # the "bytes" trigger stops a third of the runs at a random fill level of the temporary model.safetensors
    assert sum(x.phase == "reading + writing tensors" for x in results) >= KILL_RUNS // 4, table
    assert {"absent", "old"} <= {x.after_kill for x in results}, table


def test_sigterm_while_writing_stops_cleanly(refs):
    """SIGTERM (what `kill`, systemd, docker stop send) behaves like Ctrl-C: exit 143, one line, nothing left."""
    work, r = refs
    parent = work / "sigterm"
    parent.mkdir()
    out = parent / "out"
    proc = subprocess.Popen(kill_test.convert_cmd(r.ckpt, out), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    kill_test.freeze_at(proc, out, "bytes", 0.3, r.weights_size)
    assert kill_test.classify(kill_test.snapshot(proc, out), r.weights_size, None) == "reading + writing tensors"
    os.kill(proc.pid, signal.SIGTERM)
    os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("pibridge: interrupted by SIGTERM")
    assert list(parent.iterdir()) == []


def _old_out(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("old")
    return out


def _interrupt_replace(monkeypatch, after_calls: int) -> None:
    """os.replace works, then Ctrl-C lands right after its `after_calls`-th call (the Python signal handler runs
    between two bytecodes: here, between the two renames of the --force swap, or right after them)."""
    real, calls = os.replace, []

    def replace(src, dst):
        real(src, dst)
        calls.append(dst)
        if len(calls) == after_calls:
            raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", replace)


def test_interrupt_between_the_force_renames_puts_the_old_output_back(tmp_path, monkeypatch):
    out = _old_out(tmp_path)
    _interrupt_replace(monkeypatch, after_calls=1)  # OUT -> old done, tmp -> OUT not yet
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_output_dir(out, force=True) as tmp:
            (tmp / "new").write_text("n")
    assert sorted(p.name for p in out.iterdir()) == ["keep"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_interrupt_after_the_force_renames_keeps_the_new_output(tmp_path, monkeypatch):
    out = _old_out(tmp_path)
    _interrupt_replace(monkeypatch, after_calls=2)  # both renames done, old not yet deleted
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_output_dir(out, force=True) as tmp:
            (tmp / "new").write_text("n")
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_sigint_at_startup_exits_130_without_traceback(refs):
    """Ctrl-C before any output exists (imports, checkpoint metadata): same clean exit."""
    work, r = refs
    parent = work / "startup"
    parent.mkdir()
    proc = subprocess.Popen(kill_test.convert_cmd(r.ckpt, parent / "out"), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    kill_test.wait_ready(proc)  # the CLI runs its command (before: the interpreter's default Ctrl-C)
    assert proc.poll() is None and not list(parent.iterdir())
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert list(parent.iterdir()) == []
