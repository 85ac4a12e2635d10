"""OpenPI's host transforms on the real LeRobot 0.6.1: OUT loaded the ordinary way (from_pretrained +
make_pre_post_processors + predict_action_chunk + postprocessor, with the pibridge plugin's steps) gives the robot
the action OpenPI's Policy gives it (the JAX stack + OpenPI's output transforms, pibridge.hostx), on the same raw
observation and noise. Tiny variants, float32, 224x224 images and (with --openpi-resize) a client's native size.
An OUT without the plugin fails loudly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "lerobot"))
import harness as h  # noqa: E402

pytestmark = pytest.mark.timeout(900)
ROBOT_MAX_ABS = 1e-4  # tiny float32: model stages agree to ~1e-5 (test_lerobot_real.py)
ALOHA = h.NATIVE_SIZES["aloha"]
# (profile, image size (None: 224x224), --openpi-resize); the slow sweep is bench/robot_actions.py's
GATE = [("pi05_aloha", None, False), ("pi0_libero", None, False),  # host transforms at 224x224
        ("pi05_aloha", ALOHA, True), ("pi05_aloha", ALOHA, False)]  # ALOHA's 480x640 with / without OpenPI's resize


def _env() -> dict:
    return h.plugin_env()


def _setup(work: Path, profile: str):
    from pibridge.convert.profile import load_profile

    p = load_profile(profile)
    cams, empty = h.profile_cameras(p)
    ck = h.make_ckpt(work, p.model, profile, asset=p.asset_id)
    out = h.make_tiny_out(work, p.model, "0.6.1", "float32", profile=profile, camera_map=cams, ckpt=ck)
    obs, path = h.observation(work, p.model, state_dim=p.state_dim, empty=empty, profile=profile, name=f"obs-{profile}")
    return p, ck, out, obs, path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("lerobot-host")


def _check(results):
    from pibridge.convert.profile import load_profile

    by = {(r["profile"], r["size"], r["openpi_resize"]): r for r in results}
    for r in results:
        p = load_profile(r["profile"])
        print(f"{r['profile']} {r['size'][0]}x{r['size'][1]} openpi_resize={r['openpi_resize']}: robot action max-abs "
              f"{r['max_abs']:.2e} (Unnormalize alone vs OpenPI's robot action {r['unnormalized_gap']:.2e})")
        if p.adapt_to_pi or p.delta_action_mask:  # the host transforms matter here
            assert r["unnormalized_gap"] > 100 * ROBOT_MAX_ABS, r
    good = {k: r["max_abs"] for k, r in by.items() if r["openpi_resize"] or k[1] == (224, 224)}
    assert all(v <= ROBOT_MAX_ABS for v in good.values()), good
    return by


def test_robot_action_matches_openpi_on_real_lerobot(work):
    """At 224x224 with OUT's defaults, and at ALOHA's 480x640 with --openpi-resize: OpenPI's robot action. Without
    the step, LeRobot's own torch resize (no antialias, float) gives a different action."""
    by = _check(h.robot_action_cases(work, GATE))
    without = by[("pi05_aloha", ALOHA, False)]["max_abs"]
    assert without > 10 * by[("pi05_aloha", ALOHA, True)]["max_abs"] and without > ROBOT_MAX_ABS, without


@pytest.mark.slow
def test_robot_action_sweep_over_the_shipped_profiles(work):
    """Issue 14's acceptance: the 8 profiles, 224x224 defaults and the clients' native sizes with --openpi-resize."""
    _check(h.robot_action_cases(work, h.sweep_cases()))


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
