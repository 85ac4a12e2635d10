"""The plugin warns when select_action runs a delta-action OUT (issue 14): on the real LeRobot 0.6.1, a tiny
pi05_aloha OUT (delta mask 6,-1,6,-1) prints one WARNING on stderr on its first select_action tick and none on the
second; a pi05_droid OUT (absolute actions) prints none. The worktree's plugin and pibridge go first on the path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "lerobot"))
import harness as h  # noqa: E402

pytestmark = pytest.mark.timeout(900)
PLUGIN = h.ROOT / "plugins" / "lerobot_policy_pibridge"
ALOHA_CAMS = "base_0_rgb=cam_high,left_wrist_0_rgb=cam_left_wrist,right_wrist_0_rgb=cam_right_wrist"


def test_select_action_warns_once_for_delta_actions(tmp_path):
    py = h.venv_python("lr-0.6.1")
    aloha = h.make_tiny_out(tmp_path, "pi05", "0.6.1", "float32", profile="pi05_aloha", camera_map=ALOHA_CAMS,
                            ckpt=h.make_ckpt(tmp_path, "pi05", "pi05_aloha", asset="trossen"))
    droid = h.make_tiny_out(tmp_path, "pi05", "0.6.1", "float32")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join([str(h.ROOT), str(PLUGIN)]))
    r = subprocess.run([str(py), str(Path(h.__file__).with_name("select_action_check.py")), str(aloha), str(droid)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=800)
    assert r.returncode == 0, r.stderr[-4000:]
    rows = {Path(d["out"]).name: d for d in map(json.loads, (l for l in r.stdout.splitlines() if l.startswith("{")))}
    a, d = rows[aloha.name], rows[droid.name]
    assert Path(a["plugin"]).resolve().is_relative_to(PLUGIN.resolve())  # the code under test, not /work/main's
    first, second = a["stderr"]
    assert first.count("WARNING pibridge") == 1 and str(aloha) in first, first
    assert "[0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]" in first and "--inference.type=rtc" in first
    assert "re-anchor" in first and "predict_action_chunk" in first
    assert "WARNING" not in second, second
    assert not any("WARNING pibridge" in s for s in d["stderr"]), d["stderr"]
    assert len(a["action"][0]) == 14 and len(d["action"][0]) == 8  # the robot's action, after the postprocessor
