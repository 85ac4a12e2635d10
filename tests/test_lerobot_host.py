"""OpenPI's host transforms on the real LeRobot 0.6.1: OUT loaded the ordinary way (from_pretrained +
make_pre_post_processors + predict_action_chunk + postprocessor, with the pibridge plugin's steps) gives the robot
the action OpenPI's Policy gives it (the JAX stack + OpenPI's output transforms, pibridge.hostx), on the same raw
observation and noise. Tiny variants, float32, 224x224 images. An OUT without the plugin fails loudly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "lerobot"))
import harness as h  # noqa: E402

pytestmark = pytest.mark.timeout(900)
ROBOT_MAX_ABS = 1e-4  # tiny float32: model stages agree to ~1e-5 (test_lerobot_real.py)
CASES = {  # profile -> camera map (LeRobot names) and the empty slots of the observation
    "pi05_aloha": ("base_0_rgb=cam_high,left_wrist_0_rgb=cam_left_wrist,right_wrist_0_rgb=cam_right_wrist", ()),
    "pi0_libero": ("base_0_rgb=image,left_wrist_0_rgb=wrist_image", ("right_wrist_0_rgb",)),
    "pi05_droid": ("base_0_rgb=exterior_image_1_left,left_wrist_0_rgb=wrist_image_left", ("right_wrist_0_rgb",)),
}
PLUGIN = h.ROOT / "plugins" / "lerobot_policy_pibridge"


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore",
                PYTHONPATH=os.pathsep.join([str(h.ROOT), str(PLUGIN)]))


def _setup(work: Path, profile: str):
    from pibridge.convert.profile import load_profile

    p = load_profile(profile)
    cams, empty = CASES[profile]
    ck = h.make_ckpt(work, p.model, profile, asset=p.asset_id)
    out = h.make_tiny_out(work, p.model, "0.6.1", "float32", profile=profile, camera_map=cams, ckpt=ck)
    obs, path = h.observation(work, p.model, state_dim=p.state_dim, empty=empty, profile=profile, name=f"obs-{profile}")
    return p, ck, out, obs, path


def openpi_robot_actions(ck: Path, p, obs) -> np.ndarray:
    """OpenPI's Policy.infer on the JAX stack: host preprocessing, model, Unnormalize + AbsoluteActions + outputs."""
    from pibridge.configs import load_variant
    from pibridge.convert.detect import detect
    from pibridge.convert.reader import open_checkpoint
    from pibridge.parity.stacks.jax import run_policy
    from pibridge.parity.openpi_preprocess import observation_dict, postprocess_actions, preprocess
    from pibridge.tokenizer import load_tokenizer

    c = open_checkpoint(ck)
    stats = c.norm_stats(p.asset_id)
    inputs = preprocess(observation_dict(obs), p, stats, load_tokenizer(h.TOKENIZER))
    actions = run_policy(c.read_tree(), load_variant(detect(c.leaves).variant.name), inputs, obs.noise,
                         precision="float32")
    return postprocess_actions(np.asarray(actions), inputs.state, p, stats)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("lerobot-host")


@pytest.mark.parametrize("profiles", [("pi05_aloha", "pi0_libero"),  # host transforms: in the gate
                                      pytest.param(("pi05_droid",), marks=pytest.mark.slow)])  # none (gate budget)
def test_robot_action_matches_openpi_on_real_lerobot(work, profiles):
    from pibridge.parity import stages as st
    from pibridge.parity.trace import read_trace

    py = h.venv_python("lr-0.6.1")
    setups = {name: _setup(work, name) for name in profiles}
    argv = [str(py), str(Path(__file__).parent / "lerobot" / "capture_many.py")]
    for name, (_, _, out, _, path) in setups.items():
        argv += [str(out), str(path), str(work / f"lr-{name}.safetensors")]
    r = subprocess.run(argv, capture_output=True, text=True, env=_env(), cwd=h.ROOT, timeout=800)
    assert r.returncode == 0, r.stderr[-4000:]
    worst = {}
    for name, (p, ck, _, obs, _) in setups.items():
        lr = read_trace(work / f"lr-{name}.safetensors").stages
        expected = openpi_robot_actions(ck, p, obs)
        got = lr[st.ACTIONS_ROBOT].value
        assert got.shape == expected.shape == (1, p.action_horizon, p.action_dim)
        worst[name] = float(np.abs(got - expected).max())
        # the host transforms matter here: the unnormalized action alone is far from the robot's for delta/aloha
        gap = float(np.abs(lr[st.ACTIONS_UNNORMALIZED].value - expected).max())
        print(f"{name}: robot action max-abs {worst[name]:.2e} (Unnormalize alone vs OpenPI's robot action {gap:.2e})")
        if p.adapt_to_pi or p.delta_action_mask:
            assert gap > 100 * ROBOT_MAX_ABS, (name, gap)
    assert all(v <= ROBOT_MAX_ABS for v in worst.values()), worst


def test_out_without_the_plugin_fails_naming_the_package(work):
    py = h.ROOT / ".venvs" / "lr-0.6.1-bare" / "bin" / "python"
    if not py.exists():
        pytest.skip("no .venvs/lr-0.6.1-bare (LeRobot without the pibridge plugin)")
    _, _, out, _, _ = _setup(work, "pi05_aloha")
    code = ("import sys; from pibridge.parity.stacks.lerobot.tiny import apply; apply()\n"
            "from lerobot.policies.factory import make_pre_post_processors\n"
            "from lerobot.policies.pi05.configuration_pi05 import PI05Config\n"
            "from lerobot.configs.policies import PreTrainedConfig\n"
            f"cfg = PreTrainedConfig.from_pretrained({str(out)!r})\n"
            f"make_pre_post_processors(cfg, pretrained_path={str(out)!r})\n")
    env = dict(_env(), PYTHONPATH=str(h.ROOT))  # pibridge, but not the plugin
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, env=env, cwd=h.ROOT, timeout=300)
    assert r.returncode != 0
    assert "lerobot_policy_pibridge.steps" in r.stderr and "ImportError" in r.stderr, r.stderr[-2000:]


def test_default_prompt_and_cleaning_on_real_lerobot(work):
    """pi0_aloha_sim (OpenPI injects "Transfer cube"; its sim client sends no prompt): LeRobot's preprocessor on a
    frame without `task` gives the tokens of the default prompt (stock LeRobot: KeyError 'task'), and a prompt that
    needs OpenPI's cleaning gives the cleaned prompt's tokens; both equal OpenPI's token ids."""
    import json

    from pibridge.parity.openpi_preprocess import tokenize_prompt
    from pibridge.tokenizer import load_tokenizer

    py = h.venv_python("lr-0.6.1")
    ck = h.make_ckpt(work, "pi0", "pi0_aloha_sim", asset="trossen")
    out = h.make_tiny_out(work, "pi0", "0.6.1", "float32", profile="pi0_aloha_sim", camera_map="base_0_rgb=cam_high",
                          ckpt=ck)
    code = ("import json, torch\nfrom pibridge.parity.stacks.lerobot.tiny import apply; apply()\n"
            "from lerobot.configs.policies import PreTrainedConfig\n"
            "from lerobot.policies.factory import make_pre_post_processors\n"
            f"out = {str(out)!r}\n"
            "pre, _ = make_pre_post_processors(PreTrainedConfig.from_pretrained(out), pretrained_path=out,\n"
            "    preprocessor_overrides={'device_processor': {'device': 'cpu'}})\n"
            "frame = {'observation.state': torch.full((14,), 0.5), 'observation.images.cam_high': torch.rand(3, 224, 224)}\n"
            "ids = lambda b: b['observation.language.tokens'][0][b['observation.language.attention_mask'][0]].tolist()\n"
            "print(json.dumps([ids(pre(dict(frame))), ids(pre(dict(frame, task='  Transfer_cube\\n')))]))\n")
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, env=_env(), cwd=h.ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    no_task, dirty = json.loads(r.stdout.strip().splitlines()[-1])
    tokens, mask, _ = tokenize_prompt("Transfer cube", None, load_tokenizer(h.TOKENIZER), 48)
    assert no_task == dirty == tokens[mask].tolist()
