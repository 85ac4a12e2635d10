"""Fine-tuning from a delta-action OUT keeps OpenPI's mask (issue 14): on the real LeRobot 0.6.1, make_policy with a
dataset whose action names lack "gripper" (factory.py:308-312 copies them into config.action_feature_names) and
lerobot-train's relative-actions overrides (lerobot_train.py:377-382). With the plugin: OUT's names come back, one
WARNING, the relative step's mask is OpenPI's 6,-1,6,-1 and one training batch's normalized target equals OpenPI's
AlohaInputs(adapt_to_pi) + DeltaActions + Normalize on the same batch. Without the plugin's wrapper
(PIBRIDGE_PLUGIN_WRAP=0): the dataset's names, every dim converted, grippers included (the failure guarded)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "lerobot"))
import harness as h  # noqa: E402

pytestmark = pytest.mark.timeout(900)
ALOHA_CAMS = "base_0_rgb=cam_high,left_wrist_0_rgb=cam_left_wrist,right_wrist_0_rgb=cam_right_wrist"
OPENPI_MASK = [True] * 6 + [False] + [True] * 6 + [False]  # make_bool_mask(6, -1, 6, -1), config.py:264


def _check(py: Path, out: Path, cwd: Path, wrap: str) -> dict:
    env = dict(h.plugin_env(), PIBRIDGE_PLUGIN_WRAP=wrap)
    r = subprocess.run([str(py), str(Path(h.__file__).with_name("mask_guard_check.py")), str(out)],
                       capture_output=True, text=True, env=env, cwd=cwd, timeout=800)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(next(l for l in r.stdout.splitlines() if l.startswith("{")))


def test_make_policy_with_a_datasets_names_keeps_openpis_mask(tmp_path):
    from pibridge import hostx
    from pibridge.convert.reader import open_checkpoint
    from pibridge.parity.openpi_preprocess import normalize

    py = h.venv_python("lr-0.6.1")
    ck = h.make_ckpt(tmp_path, "pi05", "pi05_aloha", asset="trossen")
    out = h.make_tiny_out(tmp_path, "pi05", "0.6.1", "float32", profile="pi05_aloha", camera_map=ALOHA_CAMS, ckpt=ck)
    recorded = json.loads((out / "config.json").read_text())["action_feature_names"]

    guarded = _check(py, out, tmp_path, "1")
    assert guarded["same_config"]  # make_policy's cfg is the policy's: lerobot-train reads the restored names
    assert guarded["names"] == recorded and guarded["mask"] == OPENPI_MASK
    assert len(guarded["warning"]) == 1 and "motor_0" in guarded["warning"][0] and str(out) in guarded["warning"][0]
    state, action = np.asarray(guarded["state"]), np.asarray(guarded["action"])
    stats = open_checkpoint(ck).norm_stats("trossen")["actions"]
    delta = hostx.delta_actions(hostx.aloha_actions_to_pi(action), hostx.aloha_state_to_pi(state), OPENPI_MASK)
    openpi = normalize(delta, stats, "quantile")  # pi05: quantile norm (config.py:187)
    gap = np.abs(np.asarray(guarded["target"]) - openpi).max()
    print(f"training target vs OpenPI: max-abs {gap:.2e}")
    assert gap < 1e-4, gap

    bare = _check(py, out, tmp_path, "0")  # the same set-up without the guard: the dataset's names win
    assert bare["names"][0] == "motor_0" and bare["mask"] == [True] * 14 and not bare["warning"]
    assert np.abs(np.asarray(bare["target"]) - openpi).max() > 1e-2  # grippers converted too: another target
