"""`--profile path/to/profile.json`: a user's own training config as a profile file (convert/profile.py
load_profile), validated with errors naming the field; a custom single-arm profile converts and OUT records it."""

from __future__ import annotations

import json

import pytest

from pibridge.convert.profile import KNOWN_FIELDS, REQUIRED_FIELDS, load_profile
from pibridge.errors import PibridgeError

MASK = [True] * 6 + [False]  # make_bool_mask(6, -1): six delta joints, an absolute gripper


def arm_profile(**changes) -> dict:
    """A 7-dim single arm (6 joints + gripper) trained with a pi05 config of one's own."""
    raw = {"name": "my_arm", "model": "pi05", "action_horizon": 10, "max_token_len": 200,
           "discrete_state_input": True, "state_dim": 7, "action_dim": 7,
           "cameras": [{"slot": "base_0_rgb", "source": "front"}, {"slot": "left_wrist_0_rgb", "source": "wrist"},
                       {"slot": "right_wrist_0_rgb", "source": "empty"}],
           "delta_action_mask": MASK, "norm": "quantile", "asset_id": "my_arm",
           "default_prompt": "stack the cups", "adapt_to_pi": False, "robot": "none"}
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not DROP}


DROP = object()


def write(tmp_path, raw, name="my_arm.json"):
    path = tmp_path / name
    path.write_text(json.dumps(raw) if not isinstance(raw, str) else raw)
    return path


def test_file_loads_and_mask_notation_is_accepted(tmp_path):
    p = load_profile(write(tmp_path, arm_profile()))
    assert (p.name, p.action_dim, p.delta_action_mask, p.default_prompt, p.adapt_to_pi) == \
        ("my_arm", 7, tuple(MASK), "stack the cups", False)
    assert load_profile(str(write(tmp_path, arm_profile(delta_action_mask="6,-1"), "b.json"))) == p
    assert load_profile("pi05_droid").name == "pi05_droid"  # a name still means a shipped profile
    assert set(REQUIRED_FIELDS) <= set(KNOWN_FIELDS)


@pytest.mark.parametrize("raw, messages", [
    (arm_profile(camera_fps=30, gripper="x"), ("unknown field(s) camera_fps, gripper", "delta_action_mask")),
    (arm_profile(action_dim=DROP, norm=DROP), ("lacks the required field(s) action_dim, norm",)),
    (arm_profile(delta_action_mask=[True] * 6), ("delta_action_mask has 6 entries but action_dim is 7", "6,-1")),
    (arm_profile(delta_action_mask=[6, -1]), ("delta_action_mask [6, -1] is neither booleans",)),
    (arm_profile(robot="ur5"), ("unknown robot family: robot 'ur5' not in aloha, droid, libero, none",)),
    ("{not json", ("is not readable JSON",)),
    ("[1, 2]", ("holds a JSON list",)),
])
def test_bad_profile_file_names_the_field(tmp_path, raw, messages):
    with pytest.raises(PibridgeError) as err:
        load_profile(write(tmp_path, raw))
    text = str(err.value)
    assert "my_arm.json" in text and all(m in text for m in messages), text


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(PibridgeError, match="does not exist"):
        load_profile(str(tmp_path / "nope.json"))
    with pytest.raises(PibridgeError, match="or a profile file path"):
        load_profile("my_arm")


def test_custom_profile_file_converts_and_out_records_it(tmp_path, capsys):
    from pibridge.cli import main
    from pibridge.convert.synth import write_synthetic_checkpoint

    prof = write(tmp_path, arm_profile())
    ck, out = tmp_path / "ck", tmp_path / "out"
    write_synthetic_checkpoint(ck, variant="tiny-pi05", profile=str(prof), asset_id="my_arm", progress=False)
    with pytest.raises(SystemExit) as exc:
        main(["convert", str(ck), str(out), "--profile", str(prof), "--allow-tiny",
              "--camera-map", "base_0_rgb=front,left_wrist_0_rgb=wrist"])
    assert (exc.value.code or 0) == 0, capsys.readouterr().err
    rec = json.loads((out / "pibridge.json").read_text())
    assert {k: rec["profile"][k] for k in ("name", "action_dim", "delta_action_mask", "default_prompt", "adapt_to_pi")} \
        == {"name": "my_arm", "action_dim": 7, "delta_action_mask": MASK, "default_prompt": "stack the cups",
            "adapt_to_pi": False}
    host = rec["host_transforms"]
    assert host["delta_action_mask"] == MASK and host["default_prompt"] == "stack the cups" and not host["adapt_to_pi"]
    assert rec["camera_names"] == ["front", "wrist"] and rec["empty_slots"] == ["right_wrist_0_rgb"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["use_relative_actions"] is True and cfg["chunk_size"] == 10
    pre = [s.get("registry_name") or s.get("class", "") for s in
           json.loads((out / "policy_preprocessor.json").read_text())["steps"]]
    squashed = " ".join(pre).lower().replace("_", "")
    assert "defaultprompt" in squashed and "adapttopi" not in squashed and "relativeactions" in squashed, pre
