"""`parity capture` / `parity obs`: each stack captured on a tiny converted checkpoint, with shared ModelInputs
(float32): every model stage agrees (cosine >= 0.99999) and actions within 1e-4, for tiny-pi05 and tiny-pi0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _parity_helpers import PROFILES, TOKENIZER, make_policy

from pibridge.configs import load_variant
from pibridge.errors import PibridgeError
from pibridge.parity import stages as st
from pibridge.parity.capture import capture, obs_command
from pibridge.parity.compare import Rule, compare
from pibridge.parity.observation import load_observation
from pibridge.parity.request import CaptureRequest, load_model_inputs
from pibridge.parity.trace import read_trace

MODEL_RULES = [Rule("input/*", "*", 0.0, 0.9999999), Rule("actions*", "*", 1e-4, 0.99999), Rule("*", "*", 1e9, 0.99999)]


@pytest.fixture(scope="module", params=["tiny-pi05", "tiny-pi0"])
def shared_traces(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    ck, out, obs = make_policy(root, request.param)
    inputs = root / "inputs.safetensors"
    rj = capture(CaptureRequest("jax", obs, root / "jax.trace", ckpt=ck, profile=str(out), tokenizer=TOKENIZER,
                                save_inputs=inputs))
    rt = capture(CaptureRequest("torch", obs, root / "torch.trace", lerobot=out, shared_inputs=inputs))
    return request.param, root, rj, rt


def test_shared_inputs_float32_every_model_stage_agrees(shared_traces):
    variant, root, rj, rt = shared_traces
    a, b = read_trace(rj.out), read_trace(rt.out)
    c = compare(a, b, MODEL_RULES)
    v = load_variant(variant)
    assert a.order == st.stage_order(v.siglip.depth, v.paligemma.depth, 10, unnormalized=True)
    assert [r.name for r in c.results] == a.order and not c.only_in_a and not c.only_in_b
    worst = min(c.results, key=lambda r: r.metrics.cosine)
    actions = {r.name: r.metrics.max_abs for r in c.results if r.name.startswith("actions")}
    print(f"{variant}: worst stage {worst.name} cosine {worst.metrics.cosine:.8f}; actions max-abs {actions}")
    assert c.passed, [(r.name, r.metrics.cosine, r.metrics.max_abs) for r in c.results if r.failed]
    assert all(r.metrics.cosine >= 0.99999 for r in c.results)
    assert actions["actions"] <= 1e-4 and actions["actions/unnormalized"] <= 1e-4
    horizon = load_observation(root / "obs.safetensors").noise.shape[1]
    assert b.stages["actions/unnormalized"].value.shape == (2, horizon, 8)


def test_trace_metadata(shared_traces):
    variant, root, rj, rt = shared_traces
    a, b = read_trace(rj.out).meta, read_trace(rt.out).meta
    assert (a["stack"], b["stack"]) == ("jax", "torch") and a["precision"] == b["precision"] == "float32"
    assert "jax" in a["packages"] and "flax" in a["packages"] and "torch" not in a["packages"]
    assert "torch" in b["packages"] and "transformers" in b["packages"] and "jax" not in b["packages"]
    assert a["checkpoint"]["fingerprint"] == b["checkpoint"]["fingerprint"]
    assert a["checkpoint"]["fingerprint"].startswith("sha256:")
    assert a["observation"]["fingerprint"] == b["observation"]["fingerprint"]
    assert a["profile"] == b["profile"] == PROFILES[variant]
    assert b["fixes_applied"] == {} and b["not_comparable"] == {} and b["shared_inputs"]
    assert a["timings"]["sample_s"] > 0 and b["timings"]["peak_rss_mb"] > 0
    assert b["preprocessing"]["resize"]["base_0_rgb"]["shape"] == [480, 640]


def test_shared_inputs_are_what_both_models_saw(shared_traces):
    _, root, rj, rt = shared_traces
    inputs = load_model_inputs(root / "inputs.safetensors")
    for t in (read_trace(rj.out), read_trace(rt.out)):
        np.testing.assert_array_equal(t.stages["input/tokens"].value, inputs.tokens.astype(np.float32))
        np.testing.assert_array_equal(t.stages["input/image_mask"].value, inputs.image_mask.astype(np.float32))
    assert inputs.image_mask.tolist() == [[True, True, False], [True, False, False]]


def test_capture_errors(tmp_path):
    obs = tmp_path / "o.safetensors"
    with pytest.raises(PibridgeError, match="--openpi"):
        capture(CaptureRequest("jax", obs, tmp_path / "t"))
    with pytest.raises(PibridgeError, match="stack 'nope'"):
        capture(CaptureRequest("nope", obs, tmp_path / "t"))
    with pytest.raises(PibridgeError, match="precision"):
        capture(CaptureRequest("torch", obs, tmp_path / "t", lerobot=tmp_path, precision="fp16"))
    with pytest.raises(PibridgeError, match="resize"):
        capture(CaptureRequest("torch", obs, tmp_path / "t", lerobot=tmp_path, resize="cv2"))


def test_a_stack_whose_environment_is_missing_exits_2_with_the_command_that_builds_it(shared_traces, monkeypatch):
    """Through the real command line: this venv has no LeRobot, so `--stack lerobot` stops before any work."""
    import subprocess
    import sys

    from pibridge.parity.stacks import STACKS, StackSpec

    _, root, _, rt = shared_traces
    out, obs = rt.meta["checkpoint"]["path"], rt.meta["observation"]["path"]
    p = subprocess.run([sys.executable, "-m", "pibridge.cli", "parity", "capture", "--stack", "lerobot", "--lerobot",
                        out, "--obs", obs, "--out", str(root / "lr.trace")], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "the lerobot stack needs lerobot" in p.stderr and "build it: make lerobot-env" in p.stderr, p.stderr
    assert not (root / "lr.trace").exists()
    # any registered stack: its own env modules and command (the entry is never imported)
    monkeypatch.setitem(STACKS, "other", StackSpec("other", "no_such_pkg.capture:run", ("no_such_module_pb",),
                                                   "tools/build_other_env.sh", "lerobot"))
    with pytest.raises(PibridgeError, match="no_such_module_pb") as err:
        capture(CaptureRequest("other", Path(obs), root / "o.trace", lerobot=Path(out)))
    assert "build it: tools/build_other_env.sh" in err.value.render() and err.value.exit_code == 2


def test_obs_command_follows_the_profile(tmp_path):
    a = obs_command(tmp_path / "a.safetensors", profile="pi0_droid", batch=3, seed=5)
    b = obs_command(tmp_path / "b.safetensors", profile="pi0_droid", batch=3, seed=5)
    assert a.fingerprint() == b.fingerprint() == load_observation(tmp_path / "a.safetensors").fingerprint()
    assert a.noise.shape == (3, 10, 32) and a.state.shape == (3, 8)
    assert a.slots == ("base_0_rgb", "left_wrist_0_rgb")  # the profile's empty right wrist stays absent
    assert a.images["base_0_rgb"].shape[1:3] == (480, 640)
    c = obs_command(tmp_path / "c.safetensors", profile="pi05_droid", batch=1, horizon=4, state_dim=3)
    assert c.noise.shape == (1, 4, 32) and c.state.shape == (1, 3)
    m = obs_command(tmp_path / "m.safetensors", profile="pi0_droid", masked=["1:left_wrist_0_rgb"])
    assert m.image_mask.tolist() == [[True, True], [True, False]]
    with pytest.raises(PibridgeError, match="--mask"):
        obs_command(tmp_path / "e.safetensors", profile="pi0_droid", masked=["1:right_wrist_0_rgb"])
    with pytest.raises(PibridgeError, match="unknown profile"):
        obs_command(tmp_path / "d.safetensors", profile="nope")
