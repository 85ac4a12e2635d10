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


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_custom_profile_file_end_to_end(tmp_path, capsys):
    """Issue 14's acceptance: a profile file unlike every shipped one (7-dim single arm, robot none, mask (6,-1), no
    adapt_to_pi, default prompt "do the thing"), its OpenPI side the profile itself (pibridge's OpenPI host side +
    JAX stack): synth -> convert -> `parity run` passes by default -> `pibridge serve` (real LeRobot 0.6.1, real
    openpi-client) replies OpenPI's robot action, with and without a prompt, to a client at 240x320 (no
    --openpi-resize: the serve glue resizes with OpenPI's resize)."""
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np

    sys.path.insert(0, str(Path(__file__).parent / "lerobot"))
    import harness as h

    from pibridge.cli import main
    from pibridge.convert.profile import load_profile, profile_names
    from pibridge.convert.synth import write_synthetic_checkpoint
    from pibridge.serve.server import IMAGES_BY_HOST

    h.venv_python("lr-0.6.1")
    prof = write(tmp_path, arm_profile(default_prompt="do the thing"))
    p = load_profile(str(prof))
    key = lambda q: (q.state_dim, q.action_dim, q.delta_action_mask, q.adapt_to_pi, q.default_prompt)  # noqa: E731
    shipped = [load_profile(n) for n in profile_names()]
    assert all(key(q) != key(p) and q.default_prompt != p.default_prompt for q in shipped)
    ck, out = tmp_path / "ck", tmp_path / "out"
    write_synthetic_checkpoint(ck, variant="tiny-pi05", profile=str(prof), asset_id="my_arm", progress=False)
    with pytest.raises(SystemExit) as exc:
        main(["convert", str(ck), str(out), "--profile", str(prof), "--allow-tiny", "--tokenizer", str(h.TOKENIZER),
              "--camera-map", "base_0_rgb=front,left_wrist_0_rgb=wrist"])
    assert (exc.value.code or 0) == 0, capsys.readouterr().err

    report = tmp_path / "parity.json"
    r = subprocess.run([sys.executable, "-m", "pibridge.cli", "parity", "run", "--openpi", str(ck), "--lerobot",
                        str(out), "--json", str(report), "--summary"], capture_output=True, text=True,
                       env=h.plugin_env(), cwd=h.ROOT, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = json.loads(report.read_text())
    assert rep["passed"] and rep["first_diverging"] is None
    assert "actions/robot" in {s["name"] for s in rep["stages"]}, [s["name"] for s in rep["stages"]]

    sizes = {"base_0_rgb": (240, 320), "left_wrist_0_rgb": (240, 320)}
    obs, _ = h.observation(tmp_path, "pi05", state_dim=7, sizes=sizes, profile=str(prof), name="obs-arm")
    req = h.client_dict(obs, p)
    assert set(req) == {"state", "images", "prompt", "noise"} and set(req["images"]) == {"front", "wrist"}
    no_prompt = {k: v for k, v in req.items() if k != "prompt"}
    meta, (with_p, without_p) = h.served_replies(out, [req, no_prompt], tmp_path / "serve")
    assert meta == {"metadata": {}, "images": IMAGES_BY_HOST}
    errs = {}
    for name, reply, expected in (("prompt", with_p, h.openpi_robot_actions(ck, p, obs)[0]),
                                  ("default prompt", without_p, h.openpi_robot_actions(ck, p, obs, prompt=False)[0])):
        assert reply["actions"].shape == expected.shape == (10, 7)
        errs[name] = float(np.abs(reply["actions"] - expected).max())
    print(f"custom profile: parity run passed ({len(rep['stages'])} stages); served vs OpenPI's host side max-abs "
          f"{errs}")
    assert all(e <= 1e-4 for e in errs.values()), errs
    assert float(np.abs(with_p["actions"] - without_p["actions"]).max()) > 1e-3  # the prompt reaches the model
