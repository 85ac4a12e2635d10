"""Parity to the robot's action: stage actions/robot on the JAX stack (OpenPI's output transforms) and the torch
stack (OUT's processor chain, read from its policy_*processor.json). Default tolerances pass on a shipped profile
with host transforms; an OUT with one host step removed from its JSON fails at a named stage."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
from _parity_helpers import TOKENIZER

from pibridge.errors import ParityFailure, PibridgeError
from pibridge.parity.capture import capture, obs_command
from pibridge.parity.request import CaptureRequest
from pibridge.parity.run import compare_command

STEPS = 2
CASES = {  # profile -> camera map, prompt, {removed step (class) -> first diverging stage}
    "pi05_aloha": ("base_0_rgb=cam_high,left_wrist_0_rgb=cam_left_wrist,right_wrist_0_rgb=cam_right_wrist",
                   "fold the towel", {"AdaptToPiInputsStep": "input/tokens", "AdaptToPiOutputsStep": "actions/robot",
                                      "absolute_actions_processor": "actions/robot"}),
    "pi0_libero": ("base_0_rgb=image,left_wrist_0_rgb=wrist_image", "put_the_black_bowl on the\nplate ",
                   {"PromptCleanStep": "input/tokens", "absolute_actions_processor": "actions/robot"}),
}


def _policy(root: Path, profile: str):
    from pibridge.convert.convert import ConvertRequest, convert
    from pibridge.convert.profile import load_profile
    from pibridge.convert.synth import write_synthetic_checkpoint

    p = load_profile(profile)
    cams, prompt, _ = CASES[profile]
    ck, out, obs = root / f"ck-{profile}", root / f"out-{profile}", root / f"obs-{profile}.safetensors"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        write_synthetic_checkpoint(ck, variant=f"tiny-{p.model}", profile=profile, asset_id=p.asset_id, progress=False)
        convert(ConvertRequest(ckpt=ck, out=out, profile=profile, camera_map=cams, tokenizer=TOKENIZER, allow_tiny=True))
        obs_command(obs, profile=profile, prompts=[prompt])  # non-224 images: OpenPI's resize on both sides
    return ck, out, obs


def _without(out: Path, dst: Path, step: str) -> Path:
    """A copy of OUT with one processor step removed from its JSON (the absolute step: disabled instead)."""
    shutil.copytree(out, dst)
    for name in ("policy_preprocessor.json", "policy_postprocessor.json"):
        js = json.loads((dst / name).read_text())
        keep = [s for s in js["steps"] if not (s.get("class", "").endswith("." + step) or s.get("registry_name") == step)]
        if step == "absolute_actions_processor":
            keep = [dict(s, config={"enabled": False}) if s.get("registry_name") == step else s for s in js["steps"]]
        js["steps"] = keep
        (dst / name).write_text(json.dumps(js, indent=2))
    return dst


@pytest.mark.parametrize("profile", ["pi05_aloha", pytest.param("pi0_libero", marks=pytest.mark.slow)])  # gate budget
def test_robot_action_parity_and_a_removed_step_fails_at_its_stage(tmp_path, profile):
    ck, out, obs = _policy(tmp_path, profile)
    jax = capture(CaptureRequest("jax", obs, tmp_path / "jax.trace", ckpt=ck, profile=str(out), tokenizer=TOKENIZER,
                                 steps=STEPS)).out
    torch = capture(CaptureRequest("torch", obs, tmp_path / "torch.trace", lerobot=out, resize="openpi",
                                   steps=STEPS)).out
    c = compare_command(jax, torch, json_out=tmp_path / "ok.json")  # default tolerances
    rep = {s["name"]: s for s in json.loads((tmp_path / "ok.json").read_text())["stages"]}
    assert c.passed and rep["actions/robot"]["status"] == "pass", rep["actions/robot"]
    print(f"{profile}: actions/robot max-abs {rep['actions/robot']['metrics']['max_abs']:.2e}")
    for step, stage in CASES[profile][2].items():
        broken = _without(out, tmp_path / f"out-no-{step}", step)
        t = capture(CaptureRequest("torch", obs, tmp_path / f"t-{step}.trace", lerobot=broken, resize="openpi",
                                   steps=STEPS)).out
        with pytest.raises(ParityFailure, match=f"first diverging stage {stage}"):
            compare_command(jax, t)


def test_unknown_step_in_out_exits_2(tmp_path):
    from pibridge.parity.lerobot_preprocess import load_lerobot_files

    _, out, _ = _policy(tmp_path, "pi0_libero")
    post = json.loads((out / "policy_postprocessor.json").read_text())
    post["steps"].insert(1, {"class": "my_pkg.steps.Clip", "config": {}})
    (out / "policy_postprocessor.json").write_text(json.dumps(post))
    with pytest.raises(PibridgeError, match="my_pkg.steps.Clip") as err:
        load_lerobot_files(out)
    assert err.value.exit_code == 2 and not isinstance(err.value, ParityFailure)
