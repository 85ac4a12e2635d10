"""pi0_base / pi05_base converted with the flags of a serving config give that config's OUT (issue 14 acceptance).

OpenPI serves the base checkpoints under a TrainConfig: `serve_policy --env ALOHA` is the pi05_aloha config over the
pi05_base checkpoint (scripts/serve_policy.py:60-63); pi0_base runs zero-shot on ALOHA (examples/aloha_real/README.md:60)
under the pi0_aloha "inference Aloha config" (training/config.py:561-571). The same
synthetic checkpoint converted twice, once `--profile <config>` and once `--profile <base>` + flags, must give the
same processors (policy_*processor.json steps and configs, their state files), config.json and weights, and OUT's
recorded profile must serve the same client dict and metadata (ALOHA's reset_pose, by --policy-metadata); the slow test shows the same robot action, OUT of each kind served
by `pibridge serve` to the real openpi-client, vs OpenPI's host side of the serving config on the JAX stack."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "lerobot"))
import harness as h  # noqa: E402

ALOHA_CAMS = "base_0_rgb=cam_high,left_wrist_0_rgb=cam_left_wrist,right_wrist_0_rgb=cam_right_wrist"
# (serving config, base profile, convert flags for the base that make it that config)
ALOHA_FLAGS = ["--camera-map", ALOHA_CAMS, "--state-dim", "14", "--action-dim", "14", "--robot", "aloha",
               "--adapt-to-pi", "--delta-action-mask", "6,-1,6,-1",
               "--policy-metadata", '{"reset_pose": [0, -1.5, 1.5, 0, 0, 0]}']  # config.py:570 / :578
CASES = {"pi05_aloha": ("pi05_base", ALOHA_FLAGS), "pi0_aloha": ("pi0_base", ALOHA_FLAGS)}
# what serving reads from OUT's recorded profile (serve/policy.py client_frame, the plugin's host steps)
SERVED_FIELDS = ("model", "action_horizon", "max_token_len", "discrete_state_input", "state_dim", "action_dim",
                 "cameras", "delta_action_mask", "norm", "default_prompt", "adapt_to_pi", "robot", "policy_metadata")


def _convert(ck: Path, out: Path, profile: str, flags: list[str]) -> Path:
    from pibridge.cli import main

    if not out.exists():
        with pytest.raises(SystemExit) as exc:
            main(["convert", str(ck), str(out), "--profile", profile, "--allow-tiny", "--tokenizer", str(h.TOKENIZER),
                  *flags])
        assert (exc.value.code or 0) == 0, f"convert {profile} {flags} failed"
    return out


@pytest.fixture(scope="module")
def outs(tmp_path_factory):
    """(work, get): get(config) -> (ckpt, OUT of --profile config, OUT of --profile base + flags), built once."""
    from pibridge.convert.profile import load_profile

    work = tmp_path_factory.mktemp("base-profiles")

    def get(config: str):
        base, flags = CASES[config]
        p = load_profile(config)
        ck = h.make_ckpt(work, p.model, config, asset=p.asset_id)
        cams, _ = h.profile_cameras(p)
        return (ck, _convert(ck, work / f"out-{config}", config, ["--camera-map", cams]),
                _convert(ck, work / f"out-{base}-as-{config}", base, flags))

    return work, get


def _text(out: Path, name: str) -> str:
    return (out / name).read_text().replace(str(out), "OUT")  # the tokenizer path names OUT itself


@pytest.mark.parametrize("config", ["pi05_aloha", pytest.param("pi0_aloha", marks=pytest.mark.slow)])
def test_base_with_serving_flags_writes_the_serving_configs_out(outs, config):
    _, get = outs
    _, want, base = get(config)
    files = sorted(f.name for f in want.iterdir() if f.is_file() and f.name != "pibridge.json")
    assert files == sorted(f.name for f in base.iterdir() if f.is_file() and f.name != "pibridge.json")
    procs = [f for f in files if f.startswith("policy_") and f.endswith("processor.json")]
    assert len(procs) == 2, files
    for f in procs:
        steps = json.loads(_text(base, f))["steps"]
        assert steps == json.loads(_text(want, f))["steps"], f"{config}: {f} differs from the base OUT's"
    for f in files:
        if f.endswith(".safetensors") or f == "config.json":  # step states (norm stats), weights, LeRobot config
            assert (want / f).read_bytes() == (base / f).read_bytes(), f"{config}: {f} differs"
    pw, pb = (json.loads((o / "pibridge.json").read_text()) for o in (want, base))
    assert pw["host_transforms"] == pb["host_transforms"] and pw["camera_names"] == pb["camera_names"]
    assert {k: pw["profile"][k] for k in SERVED_FIELDS} == {k: pb["profile"][k] for k in SERVED_FIELDS}
    print(f"{config}: {len(procs)} processor files, {len(files) - len(procs)} other files identical; "
          f"base overrides {pb['profile']['overrides']}")


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("config", list(CASES))
def test_base_with_serving_flags_serves_the_same_robot_action(outs, config):
    """Both OUTs served (real LeRobot 0.6.1, real openpi-client), the client dict of the serving config's robot,
    vs OpenPI's host side of the serving config on the JAX stack."""
    from pibridge.convert.profile import load_profile
    import numpy as np

    work, get = outs
    ck, want, base = get(config)
    p = load_profile(config)
    sizes = {c.slot: (224, 224) for c in p.require("cameras") if not c.empty}
    obs, _ = h.observation(work, p.model, state_dim=p.state_dim, sizes=sizes, profile=config, name=f"obs-{config}")
    expected = h.openpi_robot_actions(ck, p, obs)[0]
    actions, metadata = {}, {}
    for name, out in (("config", want), ("base", base)):
        meta, (reply,) = h.served_replies(out, [h.client_dict(obs, p)], work / f"serve-{config}-{name}")
        actions[name], metadata[name] = reply["actions"], meta["metadata"]
        print(f"{config}: served {out.name} vs OpenPI's host side: max-abs "
              f"{float(np.abs(reply['actions'] - expected).max()):.2e}; metadata {meta['metadata']}")
        assert float(np.abs(reply["actions"] - expected).max()) <= 1e-4
    assert np.array_equal(actions["config"], actions["base"])
    assert metadata["config"] == metadata["base"] == p.policy_metadata == {"reset_pose": [0, -1.5, 1.5, 0, 0, 0]}


@pytest.mark.parametrize("value, needle", [("[1, 2]", "is a list"), ("{reset", "is not JSON")])
def test_bad_policy_metadata_exits_2(outs, tmp_path, value, needle):
    import subprocess

    ck = h.make_ckpt(outs[0], "pi05", "pi05_aloha", asset="trossen")
    r = subprocess.run([sys.executable, "-m", "pibridge.cli", "convert", str(ck), str(tmp_path / "o"), "--allow-tiny",
                        "--profile", "pi05_base", "--policy-metadata", value], capture_output=True, text=True,
                       cwd=h.ROOT, timeout=120)
    assert r.returncode == 2 and needle in r.stderr and "--policy-metadata" in r.stderr, r.stderr
