"""Parity to the robot's action on every shipped profile: stage actions/robot on the JAX stack (OpenPI's output
transforms) and the torch stack (OUT's processor chain, read from its policy_*processor.json).

1. `pibridge parity run` with its defaults (torch stack "ours", generated observation, default tolerances) passes on
   every shipped profile; pi0_base / pi05_base converted with the flags of a serving config (pi05_aloha's).
2. For each host step of each profile's OUT (converted with --openpi-resize), an observation that exercises it
   (a sample without a prompt where the profile has a default, a prompt with `_`, `\\n` and a trailing space,
   480x640 / 240x320 images, states away from zero) and the OUT with that one step removed from its processor JSON
   failing at the stage measured and pinned in REMOVED.
Gate: FAST_RUN and FAST_REMOVED (between them every kind of host step); the rest under -m slow.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
from _parity_helpers import TOKENIZER

from pibridge.errors import ParityFailure, PibridgeError
from pibridge.parity.capture import capture
from pibridge.parity.request import CaptureRequest
from pibridge.parity.run import compare_command

STEPS = 2
DIRTY_PROMPT = "put_the_black_bowl on the\nplate "  # OpenPI cleans `_`, `\n`, the trailing space (tokenizer.py:23)
# pi05_base / pi0_base: OpenPI serves them with a robot's config; these flags make pi05_base what pi05_aloha is
# (scripts/serve_policy.py:60-63), pi0_base likewise pi0_aloha.
BASE_FLAGS = {"state_dim": 14, "action_dim": 14, "delta_action_mask": "6,-1,6,-1", "adapt_to_pi": True,
              "robot": "aloha"}
BASE_AS = {"pi05_base": "pi05_aloha", "pi0_base": "pi0_aloha"}  # synthetic checkpoint dims / assets from these
PROFILES = ["pi05_aloha", "pi05_base", "pi05_droid", "pi05_libero", "pi0_aloha", "pi0_aloha_sim", "pi0_aloha_towel",
            "pi0_base", "pi0_droid", "pi0_libero"]
FAST_RUN = {"pi0_aloha_sim"}  # parity run in the gate (~40 s each, measured; the rest -m slow)
FAST_REMOVED = {"pi05_aloha", "pi0_aloha_sim"}  # between them every kind of host step
# (profile, step removed from OUT) -> first diverging stage (measured). "refused": the torch side stops with the
# error LeRobot's own tokenizer step gives too (a sample without a prompt), naming the missing default prompt.
_ALOHA = {"AdaptToPiInputsStep": "input/tokens", "AdaptToPiOutputsStep": "actions/robot",
          "absolute_actions_processor": "actions/robot", "OpenPIResizeStep": "img/embed"}
_ALOHA0 = {**_ALOHA, "AdaptToPiInputsStep": "input/state", "PromptCleanStep": "input/tokens"}
REMOVED = {
    "pi05_aloha": _ALOHA,
    "pi05_base": _ALOHA,
    "pi05_droid": {"OpenPIResizeStep": "img/embed"},
    "pi05_libero": {"OpenPIResizeStep": "img/embed", "PromptCleanStep": "input/tokens"},
    "pi0_aloha": _ALOHA0,
    "pi0_aloha_sim": {**{k: v for k, v in _ALOHA0.items() if k != "absolute_actions_processor"},
                      "DefaultPromptStep": "refused"},
    "pi0_aloha_towel": {**_ALOHA0, "DefaultPromptStep": "refused"},
    "pi0_base": _ALOHA0,
    "pi0_droid": {"OpenPIResizeStep": "img/embed", "PromptCleanStep": "input/tokens"},
    "pi0_libero": {"OpenPIResizeStep": "img/embed", "PromptCleanStep": "input/tokens",
                   "absolute_actions_processor": "actions/robot"},
}
HOST_STEPS = ("DefaultPromptStep", "PromptCleanStep", "AdaptToPiInputsStep", "AdaptToPiOutputsStep",
              "OpenPIResizeStep", "absolute_actions_processor")


def _gate(names: list[str], fast: set[str]) -> list:
    return [p if p in fast else pytest.param(p, marks=pytest.mark.slow) for p in names]


def _convert(root: Path, profile: str, *, openpi_resize: bool = False) -> tuple[Path, Path]:
    from pibridge.convert.convert import ConvertRequest, convert
    from pibridge.convert.profile import load_profile
    from pibridge.convert.synth import write_synthetic_checkpoint

    synth = load_profile(BASE_AS.get(profile, profile))
    p = load_profile(profile)
    cams = ",".join(f"{c.slot}={'empty' if c.empty else f'cam{i}'}" for i, c in enumerate(synth.cameras))
    ck, out = root / f"ck-{profile}", root / f"out-{profile}{'-resize' if openpi_resize else ''}"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        if not ck.exists():
            write_synthetic_checkpoint(ck, variant=f"tiny-{p.model}", profile=synth.name, asset_id=synth.asset_id,
                                       progress=False)
        convert(ConvertRequest(ckpt=ck, out=out, profile=profile, camera_map=cams, tokenizer=TOKENIZER,
                               allow_tiny=True, asset_id=synth.asset_id, openpi_resize=openpi_resize,
                               overrides=BASE_FLAGS if profile in BASE_AS else {}))
    return ck, out


@pytest.mark.parametrize("profile", _gate(PROFILES, FAST_RUN))
def test_parity_run_passes_by_default(tmp_path, profile):
    """`pibridge parity run --openpi CK --lerobot OUT`: every default (obs, steps, stack, resize, tolerances)."""
    from rich.console import Console

    from pibridge.parity.run import RunRequest, run

    ck, out = _convert(tmp_path, profile)
    res = run(RunRequest(openpi=ck, lerobot=out, json=tmp_path / "run.json"), console=Console(file=io.StringIO()))
    rep = {s["name"]: s for s in json.loads((tmp_path / "run.json").read_text())["stages"]}
    assert res.comparison.passed and rep["actions/robot"]["status"] == "pass", rep["actions/robot"]
    print(f"{profile}: actions/robot max-abs {rep['actions/robot']['metrics']['max_abs']:.2e}")


def _observation(path: Path, profile: str) -> Path:
    """Batch 2: sample 0 without a prompt where the profile has a default (else the dirty prompt), sample 1 the
    dirty prompt; the profile's cameras at 480x640 / 240x320; states in [-1.5, 1.5] (ALOHA flips and grippers)."""
    from pibridge.convert.profile import load_profile
    from pibridge.parity.capture import obs_command

    default = load_profile(profile).default_prompt
    with contextlib.redirect_stdout(io.StringIO()):
        obs_command(path, profile=BASE_AS.get(profile, str(path.parent / f"out-{profile}-resize")),  # base: no cameras
                    prompts=[None if default else DIRTY_PROMPT, DIRTY_PROMPT])
    return path


def _without(out: Path, dst: Path, step: str) -> Path:
    """A copy of OUT with one processor step removed from its JSON (the absolute step: disabled instead)."""
    shutil.copytree(out, dst)
    for name in ("policy_preprocessor.json", "policy_postprocessor.json"):
        js = json.loads((dst / name).read_text())
        if step == "absolute_actions_processor":
            js["steps"] = [dict(s, config={**s["config"], "enabled": False}) if s.get("registry_name") == step else s
                           for s in js["steps"]]
        else:
            js["steps"] = [s for s in js["steps"] if not s.get("class", "").endswith("." + step)]
        (dst / name).write_text(json.dumps(js, indent=2))
    return dst


def _host_steps(out: Path) -> set[str]:
    names = set()
    for name in ("policy_preprocessor.json", "policy_postprocessor.json"):
        for s in json.loads((out / name).read_text())["steps"]:
            if s.get("registry_name") == "absolute_actions_processor" and s["config"].get("enabled"):
                names.add("absolute_actions_processor")
            names.add(s.get("class", "").rpartition(".")[2])
    return names & set(HOST_STEPS)


@pytest.mark.parametrize("profile", _gate(PROFILES, FAST_REMOVED))
def test_each_removed_host_step_fails_at_its_stage(tmp_path, profile):
    ck, out = _convert(tmp_path, profile, openpi_resize=True)
    assert _host_steps(out) == set(REMOVED[profile]), "OUT's host steps changed: measure REMOVED again"
    obs = _observation(tmp_path / "obs.safetensors", profile)
    jax = capture(CaptureRequest("jax", obs, tmp_path / "jax.trace", ckpt=ck, profile=str(out), tokenizer=TOKENIZER,
                                 steps=STEPS)).out

    def torch(policy: Path, name: str) -> Path:  # resize "lerobot": what OUT does (its own step resizes first)
        return capture(CaptureRequest("torch", obs, tmp_path / f"{name}.trace", lerobot=policy, resize="lerobot",
                                      steps=STEPS)).out

    compare_command(jax, torch(out, "torch"), json_out=tmp_path / "ok.json")  # the whole OUT passes
    found = {}
    for step in REMOVED[profile]:
        broken = _without(out, tmp_path / f"out-no-{step}", step)
        try:
            compare_command(jax, torch(broken, step), console=_quiet())
            found[step] = "pass"
        except ParityFailure as err:
            found[step] = str(err).split("first diverging stage ")[1].split(" ")[0]
        except PibridgeError as err:
            assert err.exit_code == 2 and "default_prompt" in str(err), err
            found[step] = "refused"
    print(f"{profile}: {found}")
    assert found == REMOVED[profile]


def _quiet():
    from rich.console import Console

    return Console(file=io.StringIO())


def test_unknown_step_in_out_exits_2(tmp_path):
    from pibridge.parity.lerobot_preprocess import load_lerobot_files

    _, out = _convert(tmp_path, "pi0_libero")
    post = json.loads((out / "policy_postprocessor.json").read_text())
    post["steps"].insert(1, {"class": "my_pkg.steps.Clip", "config": {}})
    (out / "policy_postprocessor.json").write_text(json.dumps(post))
    with pytest.raises(PibridgeError, match="my_pkg.steps.Clip") as err:
        load_lerobot_files(out)
    assert err.value.exit_code == 2 and not isinstance(err.value, ParityFailure)
