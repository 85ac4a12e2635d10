"""`parity compare` and `parity run`: reports (terminal, JSON, HTML), exit 1 on a broken tolerance, the two captures
as subprocesses, and the separately reported preprocessing parity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _parity_helpers import TOKENIZER, make_policy

from pibridge.errors import ParityFailure, PibridgeError
from pibridge.parity.capture import capture, obs_command
from pibridge.parity.request import CaptureRequest
from pibridge.parity.run import (PreprocessingParity, RunRequest, capture_argv, compare_command, preprocessing_parity,
                                 run)

LOOSE = {"rules": [{"pattern": "*", "precision": "*", "max_abs": 1e9, "min_cosine": -1.0}]}
BROKEN = {"rules": [{"pattern": "actions", "precision": "*", "max_abs": 0.0, "min_cosine": 1.0},
                    {"pattern": "*", "precision": "*", "max_abs": 1e9, "min_cosine": -1.0}]}


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    ck, out, obs = make_policy(root, "tiny-pi05")
    for name, rules in (("loose", LOOSE), ("broken", BROKEN)):
        (root / f"{name}.json").write_text(json.dumps(rules))
    a = capture(CaptureRequest("jax", obs, root / "a.trace", ckpt=ck, profile=str(out), tokenizer=TOKENIZER, steps=2))
    b = capture(CaptureRequest("torch", obs, root / "b.trace", lerobot=out, resize="lerobot", steps=2))
    return root, ck, out, obs, a.out, b.out


def test_compare_passes_and_writes_reports(traces):
    root, *_, a, b = traces
    c = compare_command(a, b, tolerances=root / "loose.json", json_out=root / "r.json", html_out=root / "r.html")
    assert c.passed
    rep = json.loads((root / "r.json").read_text())
    assert rep["passed"] and rep["first_diverging"] is None and len(rep["stages"]) == len(c.results)
    checks = {" ".join(p["check"].split(" ")[:2]) for p in rep["preprocessing"]}
    assert {"resize base_0_rgb", "resize left_wrist_0_rgb", "token ids", "state bins"} <= checks, checks
    page = (root / "r.html").read_text()
    assert "<svg" in page and "preprocessing parity" in page and "PASS" in page and "<script" not in page


def test_compare_exits_1_on_a_broken_tolerance(traces):
    root, *_, a, b = traces
    with pytest.raises(ParityFailure, match="first diverging stage actions"):
        compare_command(a, b, tolerances=root / "broken.json", json_out=root / "f.json")
    assert json.loads((root / "f.json").read_text())["first_diverging"] == "actions"
    proc = subprocess.run([sys.executable, "-m", "pibridge.cli", "parity", "compare", str(a), str(b), "--tolerances",
                           str(root / "broken.json")], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert "first diverging stage: actions" in proc.stdout.replace("\n", " ")
    ok = subprocess.run([sys.executable, "-m", "pibridge.cli", "parity", "compare", str(a), str(b), "--tolerances",
                         str(root / "loose.json")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_compare_bad_input_exits_2(traces, tmp_path):
    root, *_, a, b = traces
    proc = subprocess.run([sys.executable, "-m", "pibridge.cli", "parity", "compare", str(a), str(tmp_path / "none"),
                           "--tolerances", str(root / "loose.json")], capture_output=True, text=True)
    assert proc.returncode == 2 and "not found" in proc.stderr


def test_preprocessing_parity_from_both_records(traces):
    *_, a, b = traces
    from pibridge.parity.trace import read_trace

    pre = preprocessing_parity(read_trace(a).meta, read_trace(b).meta)
    resize = [c for c in pre.checks if c.check.startswith("resize")]
    assert len(resize) == 2 and all(c.ok is None and "cosine 0.99" in c.detail for c in resize)
    assert {c.check: c.ok for c in pre.checks if c.ok is not None} == {"prompt text": True, "token ids": True,
                                                                       "state bins": True}
    other = preprocessing_parity({"preprocessing": {"tokens": [[2, 5], [2, 6]], "state_bins": [[1, 2], [3, 4]]}},
                                 {"preprocessing": {"tokens": [[2, 5], [2, 7]], "state_bins": [[1, 2], [3, 5]]}})
    res = {c.check: c for c in other.checks}
    assert res["token ids"].ok is False and "1/2 samples equal" in res["token ids"].detail
    assert res["state bins"].ok is False and "1 bins differ" in res["state bins"].detail
    assert isinstance(other, PreprocessingParity) and other.rows()[0][1] == "DIFFERENT"


def test_capture_argv_and_bad_torch_stack(traces):
    root, ck, out, obs, *_ = traces
    argv = capture_argv("py", "torch", obs, root / "t", lerobot=out, shared_inputs=None, no_fixes=True, steps=3)
    assert argv[:5] == ["py", "-m", "pibridge.cli", "parity", "capture"]  # the one command line
    assert "--no-fixes" in argv and "--shared-inputs" not in argv and argv[-2:] == ["--steps", "3"]
    with pytest.raises(PibridgeError, match="torch-stack nope") as err:
        run(RunRequest(openpi=ck, lerobot=out, torch_stack="nope", tolerances=root / "loose.json"))
    assert "one of ours, lerobot, transformers" in err.value.render()  # the registry's torch sides


def test_run_subprocesses_shared_preprocessing(traces):
    root, ck, out, obs, *_ = traces
    cmd = [sys.executable, "-m", "pibridge.cli", "parity", "run", "--openpi", str(ck), "--lerobot", str(out),
           "--obs", str(obs), "--shared-preprocessing", "--steps", "2", "--tolerances", str(root / "loose.json"),
           "--html", str(root / "run.html"), "--json", str(root / "run.json"), "--workdir", str(root / "w")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rep = json.loads((root / "run.json").read_text())
    assert rep["passed"] and (root / "w" / "inputs.safetensors").is_file()
    acts = next(s for s in rep["stages"] if s["name"] == "actions")
    assert acts["metrics"]["max_abs"] <= 1e-4
    assert any("jax stack" in n for n in rep["notes"]) and (root / "run.html").stat().st_size > 5000


LR_PYTHON = Path(__file__).resolve().parents[1] / ".venvs" / "lr-0.6.1" / "bin" / "python"


@pytest.mark.skipif(not LR_PYTHON.is_file(), reason="no LeRobot 0.6.1 venv (tools/lerobot_env.sh makes one)")
def test_run_real_lerobot_stack_in_its_own_interpreter(traces):
    root, ck, out, _, *_ = traces
    obs = root / "all_cameras.safetensors"  # LeRobot has no per-sample camera mask: every filled camera present
    obs_command(obs, profile=str(out))
    # the LeRobot interpreter found through the environment variable; the tiny OUT patched by pibridge itself
    env = {k: v for k, v in os.environ.items() if k != "PIBRIDGE_LEROBOT_PRELOAD"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore",
               PIBRIDGE_LEROBOT_PYTHON=str(LR_PYTHON), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, "-m", "pibridge.cli", "parity", "run", "--openpi", str(ck), "--lerobot", str(out),
           "--obs", str(obs), "--shared-preprocessing", "--steps", "2", "--tolerances", str(root / "loose.json"),
           "--torch-stack", "lerobot", "--json", str(root / "lr.json"), "--workdir", str(root / "lr")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rep = json.loads((root / "lr.json").read_text())
    acts = next(s for s in rep["stages"] if s["name"] == "actions")
    assert acts["status"] == "pass" and acts["metrics"]["max_abs"] <= 1e-4
    assert any(n.startswith("B: lerobot stack") and "pibridge.parity.stacks.lerobot.tiny" in n for n in rep["notes"])
    assert any(n.startswith("comparison: shared preprocessing") for n in rep["notes"])
    assert str(LR_PYTHON) in proc.stdout  # the capture ran in the LeRobot interpreter
    # a precision LeRobot would silently ignore (OUT computes in float32) is refused before any capture
    bad = subprocess.run(cmd[:-4] + ["--precision", "bf16", "--workdir", str(root / "lr-bf16")], capture_output=True,
                         text=True, env=env)
    assert bad.returncode == 2 and "computes in float32" in bad.stderr and not (root / "lr-bf16").exists()


def test_lerobot_interpreter_is_found_or_explained(monkeypatch, tmp_path):
    from pibridge.parity.stacks.lerobot import capture as run_mod

    monkeypatch.delenv(run_mod.LEROBOT_PYTHON_ENV, raising=False)
    monkeypatch.setattr(run_mod, "LEROBOT_VENV", Path("no-such-venv") / "bin" / "python")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PibridgeError, match="no LeRobot environment found") as err:
        run_mod.lerobot_python(None)
    assert "make lerobot-env" in err.value.render() and "PIBRIDGE_LEROBOT_PYTHON" in err.value.render()
    with pytest.raises(PibridgeError, match="cannot import lerobot"):  # this venv has pibridge, not LeRobot
        run_mod.lerobot_python(sys.executable)
    monkeypatch.setenv(run_mod.LEROBOT_PYTHON_ENV, str(tmp_path / "missing-python"))
    with pytest.raises(PibridgeError, match="missing-python"):
        run_mod.lerobot_python(None)


def test_comparison_note_names_the_question():
    from pibridge.parity.run import comparison_note

    assert "is the conversion right" in comparison_note(RunRequest(Path("c"), Path("o"), shared_preprocessing=True))
    own = comparison_note(RunRequest(Path("c"), Path("o"), torch_stack="lerobot"))
    assert "LeRobot's own processors" in own and "--shared-preprocessing" in own


def _no_capture(monkeypatch):
    import pibridge.parity.run as R

    monkeypatch.setattr(R, "_run_capture", lambda *a, **k: pytest.fail("a capture started before the checks"))


def test_run_checks_report_paths_observation_and_source_before_any_capture(traces, tmp_path, monkeypatch):
    """Issue 15: what can be known before the captures is refused before them (exit 2, nothing started)."""
    import shutil

    from pibridge.convert.synth import write_synthetic_checkpoint

    root, ck, out, obs, *_ = traces
    _no_capture(monkeypatch)
    base = dict(openpi=ck, lerobot=out, obs=obs, tolerances=root / "loose.json")
    with pytest.raises(PibridgeError, match="--html .* does not exist"):
        run(RunRequest(**base, html=tmp_path / "nope" / "r.html"))
    with pytest.raises(PibridgeError, match="--json .* is a directory"):
        run(RunRequest(**base, json=tmp_path))
    short = tmp_path / "short.safetensors"
    obs_command(short, profile=str(out), horizon=7)
    with pytest.raises(PibridgeError, match="noise horizon 7, the profile's action_horizon is 15"):
        run(RunRequest(**(base | {"obs": short})))
    other = tmp_path / "other"  # same sizes, other weights (seed): converted OUT does not come from it
    write_synthetic_checkpoint(other, variant="tiny-pi05", profile="pi05_droid", asset_id="droid", seed=1,
                               progress=False)
    shutil.copyfile(ck / "assets" / "droid" / "norm_stats.json", other / "assets" / "droid" / "norm_stats.json")
    with pytest.raises(PibridgeError, match="params fingerprint"):
        run(RunRequest(**(base | {"openpi": other})))
    (other / "assets" / "droid" / "norm_stats.json").write_text(
        (ck / "assets" / "droid" / "norm_stats.json").read_text().replace("1", "2", 1))
    with pytest.raises(PibridgeError, match="norm stats of asset 'droid'"):
        run(RunRequest(**(base | {"openpi": other})))


def test_failed_run_removes_its_temporaries_or_keeps_and_names_them(traces, tmp_path, monkeypatch, capsys):
    import tempfile

    import pibridge.parity.run as R

    root, ck, out, obs, *_ = traces
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def fail(argv, side, console):
        Path(argv[argv.index("--out") + 1]).write_bytes(b"partial")
        raise PibridgeError(f"the {side} capture failed", "a trace", "see above")

    monkeypatch.setattr(R, "_run_capture", fail)
    base = dict(openpi=ck, lerobot=out, obs=obs, tolerances=root / "loose.json")
    with pytest.raises(PibridgeError, match="jax capture failed"):
        run(RunRequest(**base))
    assert not list(tmp_path.glob("pibridge-parity-*")) and "removed the temporaries" in capsys.readouterr().out
    with pytest.raises(PibridgeError):
        run(RunRequest(**base, keep_temp=True))
    (kept,) = tmp_path.glob("pibridge-parity-*")
    assert (kept / "jax.trace.safetensors").is_file() and f"kept in {kept}" in capsys.readouterr().out
