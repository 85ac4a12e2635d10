"""pibridge.hostx: OpenPI's host transforms, checked against OpenPI's own functions (parsed from the checkout at
/work/openpi-src, 15a9616; only the pure numpy functions are executed, without OpenPI's dependencies)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import pytest

from pibridge import hostx
from pibridge.convert.profile import load_profile, parse_delta_mask, profile_names

OPENPI_SRC = Path(os.environ.get("PIBRIDGE_OPENPI_SRC", "/work/openpi-src"))
needs_openpi = pytest.mark.skipif(not (OPENPI_SRC / "src/openpi").is_dir(), reason=f"no OpenPI checkout at {OPENPI_SRC}")


def upstream_functions(rel: str, names: list[str]) -> dict:
    """Module-level functions `names` of an OpenPI source file, executed with numpy only."""
    tree = ast.parse((OPENPI_SRC / rel).read_text())
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    assert sorted(n.name for n in body) == sorted(names)
    ns: dict = {"np": np}
    exec(compile(ast.Module(body=body, type_ignores=[]), rel, "exec"), ns)  # noqa: S102 - upstream test oracle
    return ns


@pytest.fixture(scope="module")
def aloha():
    return upstream_functions("src/openpi/policies/aloha_policy.py", [
        "_joint_flip_mask", "_normalize", "_unnormalize", "_gripper_to_angular", "_gripper_from_angular",
        "_gripper_from_angular_inv", "_decode_state", "_encode_actions", "_encode_actions_inv"])


def _aloha_state(rng):
    s = rng.uniform(-1.5, 1.5, 14)
    s[[6, 13]] = rng.uniform(0.05, 0.95, 2)  # linear gripper in [0, 1]
    return s


@needs_openpi
def test_aloha_adapt_to_pi_equals_openpi(aloha):
    rng = np.random.default_rng(0)
    for _ in range(5):
        s = _aloha_state(rng)
        np.testing.assert_array_equal(hostx.aloha_state_to_pi(s), aloha["_decode_state"](s.copy(), adapt_to_pi=True))
        a = rng.normal(size=(4, 14))
        np.testing.assert_array_equal(hostx.aloha_actions_from_pi(a), aloha["_encode_actions"](a.copy(), adapt_to_pi=True))
        np.testing.assert_array_equal(hostx.aloha_actions_to_pi(a),
                                      aloha["_encode_actions_inv"](a.copy(), adapt_to_pi=True))
    a = rng.normal(size=(2, 3, 14))  # batched leading axes, inverse pair
    np.testing.assert_allclose(hostx.aloha_actions_from_pi(hostx.aloha_actions_to_pi(a)), a, atol=1e-12)


@needs_openpi
def test_delta_mask_notation_equals_make_bool_mask():
    ns = upstream_functions("src/openpi/transforms.py", ["make_bool_mask"])
    for dims in ((6, -1, 6, -1), (6, -1), (3, -2, 1)):
        assert parse_delta_mask(",".join(map(str, dims))) == ns["make_bool_mask"](*dims)


def test_absolute_and_delta_actions():
    rng = np.random.default_rng(1)
    mask = parse_delta_mask("6,-1,6,-1")
    actions, state = rng.normal(size=(2, 5, 16)), rng.normal(size=(2, 32))
    out = hostx.absolute_actions(actions, state, mask)
    m = np.array(mask)
    np.testing.assert_array_equal(out[..., :14][..., m], actions[..., :14][..., m] + state[:, None, :14][..., m])
    np.testing.assert_array_equal(out[..., :14][..., ~m], actions[..., :14][..., ~m])  # grippers absolute
    np.testing.assert_array_equal(out[..., 14:], actions[..., 14:])  # past the mask: untouched
    np.testing.assert_allclose(hostx.delta_actions(out, state, mask), actions, atol=1e-12)
    np.testing.assert_array_equal(hostx.absolute_actions(actions, state, ()), actions)


def test_prompt_cleaning_and_default():
    assert hostx.clean_prompt("  put_the_black_bowl on the\nplate ") == "put the black bowl on the plate"
    assert hostx.inject_default_prompt(None, "Transfer cube") == "Transfer cube"
    assert hostx.inject_default_prompt("", "Transfer cube") == ""  # only an absent prompt is replaced
    assert hostx.inject_default_prompt(None, None) is None


def test_droid_state_assembly():
    np.testing.assert_array_equal(hostx.droid_state(np.arange(7.0), np.float64(0.5)), [0, 1, 2, 3, 4, 5, 6, 0.5])
    assert hostx.droid_state(np.zeros(7), np.ones(1)).shape == (8,)


@pytest.mark.parametrize("name", profile_names())
def test_action_names_give_openpi_mask(name):
    p = load_profile(name)
    if p.delta_action_mask is None or p.action_dim is None:
        pytest.skip("base profile: mask given by flag")
    names = hostx.action_names(p.delta_action_mask, p.action_dim, p.robot)
    full = list(p.delta_action_mask) + [False] * (p.action_dim - len(p.delta_action_mask))
    assert len(names) == p.action_dim and hostx.lerobot_mask(names, [hostx.EXCLUDE_TOKEN]) == full
    if p.robot == "aloha" and p.delta_action_mask:
        assert names[6] == "left_gripper" and names[13] == "right_gripper"


def test_profiles_carry_robot_family():
    assert {n: load_profile(n).robot for n in ("pi05_aloha", "pi0_droid", "pi0_libero", "pi05_base")} == {
        "pi05_aloha": "aloha", "pi0_droid": "droid", "pi0_libero": "libero", "pi05_base": None}


def test_unknown_robot_family_is_refused():
    from pibridge.errors import PibridgeError

    with pytest.raises(PibridgeError, match="robot 'ur5' not in"):
        load_profile("pi05_base").with_overrides(robot="ur5")


def test_base_profile_with_serving_flags_writes_pi05_alohas_processors(tmp_path, capsys):
    """serve_policy --env ALOHA serves pi05_base under the pi05_aloha config (scripts/serve_policy.py:60-63): the flags
    give OUT the same config.json and processors as --profile pi05_aloha; without them, convert names the flag."""
    import json

    from pibridge.cli import main
    from pibridge.convert.synth import write_synthetic_checkpoint

    ck = tmp_path / "ck"
    write_synthetic_checkpoint(ck, variant="tiny-pi05", profile="pi05_aloha", asset_id="trossen", progress=False)
    cams = "base_0_rgb=cam_high,left_wrist_0_rgb=cam_left_wrist,right_wrist_0_rgb=cam_right_wrist"
    common = ["convert", str(ck), "--camera-map", cams, "--allow-tiny"]
    base = ["--profile", "pi05_base", "--state-dim", "14", "--action-dim", "14"]
    flags = ["--adapt-to-pi", "--delta-action-mask", "6,-1,6,-1", "--robot", "aloha"]

    def run(*args):
        with pytest.raises(SystemExit) as exc:
            main(list(args))
        return exc.value.code or 0, capsys.readouterr().err

    assert run(*common, str(tmp_path / "a"), "--profile", "pi05_aloha")[0] == 0
    assert run(*common, str(tmp_path / "b"), *base, *flags)[0] == 0
    for name in ("config.json", "policy_preprocessor.json", "policy_postprocessor.json"):
        a, b = (json.loads((tmp_path / d / name).read_text()) for d in "ab")
        assert a == b, name
    pre = json.loads((tmp_path / "b" / "policy_preprocessor.json").read_text())["steps"]
    assert any(s.get("class", "").endswith("AdaptToPiInputsStep") for s in pre)
    code, err = run(*common, str(tmp_path / "c"), *base, "--robot", "aloha", "--adapt-to-pi")
    assert code == 2 and "--delta-action-mask" in err and not (tmp_path / "c").exists()


def test_delta_out_records_the_rollout_note(tmp_path):
    import json

    from pibridge.convert.convert import DELTA_NOTE, ConvertRequest, convert
    from pibridge.convert.synth import write_synthetic_checkpoint

    ck = tmp_path / "ck"
    write_synthetic_checkpoint(ck, variant="tiny-pi0", profile="pi0_libero", asset_id="physical-intelligence/libero",
                               progress=False)
    rec = convert(ConvertRequest(ckpt=ck, out=tmp_path / "out", profile="pi0_libero", allow_tiny=True,
                                 camera_map="base_0_rgb=image,left_wrist_0_rgb=wrist_image"))
    host = rec["host_transforms"]
    assert host["notes"] == [DELTA_NOTE] and "--inference.type=rtc" in DELTA_NOTE
    assert host["delta_action_mask"] == [True] * 6 + [False] and host["action_feature_names"][-1] == "gripper"
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["use_relative_actions"] is True and cfg["relative_exclude_joints"] == ["gripper"]


# ------------------------------------------------------------------------------------ openpi_resize
CLIENT_PY = Path(__file__).resolve().parents[1] / ".venvs" / "openpi-client" / "bin" / "python"


@pytest.mark.skipif(not CLIENT_PY.exists(), reason="no .venvs/openpi-client (tools/openpi_client_env.sh)")
def test_resize_equals_the_real_openpi_client(tmp_path):
    """hostx.resize_with_pad / image_to_uint8 vs openpi_client.image_tools (the real package, its own venv and Pillow)
    on ALOHA's and LIBERO's sizes and odd ones, and a float image as OpenPI's convert_to_uint8 quantizes it."""
    import subprocess

    rng = np.random.default_rng(1)
    imgs = {f"u{i}": rng.integers(0, 256, (*s, 3), dtype=np.uint8)
            for i, s in enumerate([(480, 640), (256, 256), (7, 13), (300, 100), (224, 224)])}
    imgs["f"] = rng.uniform(0, 1, (45, 61, 3)).astype(np.float32)
    np.savez(tmp_path / "in.npz", **imgs)
    code = ("import sys, numpy as np; from openpi_client import image_tools as t\n"
            "d = np.load(sys.argv[1]); out = {k: t.resize_with_pad(d[k], 224, 224) for k in d.files if k != 'f'}\n"
            "out['f'] = t.convert_to_uint8(d['f'])\nnp.savez(sys.argv[2], **out)\n")
    subprocess.run([str(CLIENT_PY), "-c", code, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")], check=True)
    theirs = np.load(tmp_path / "out.npz")
    for k, img in imgs.items():
        ours = hostx.image_to_uint8(img) if k == "f" else hostx.resize_with_pad(img)
        np.testing.assert_array_equal(ours, theirs[k], err_msg=k)
    assert not np.array_equal(theirs["u0"], hostx.resize_with_pad(imgs["u0"][:, ::-1]))  # the test can fail


def test_openpi_resize_of_a_lerobot_frame_is_openpis_resize_of_the_uint8():
    """A LeRobot frame's image is u / 255 in float32: OpenPI's float -> uint8 (truncating) gives u back for every
    value, so the plugin step's resize of the frame is OpenPI's resize of the client's uint8."""
    u = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(hostx.image_to_uint8(u.astype(np.float32) / np.float32(255)), u)
    img = np.random.default_rng(2).integers(0, 256, (2, 480, 640, 3), dtype=np.uint8)
    out = hostx.openpi_resize_float01(img.astype(np.float32) / np.float32(255))
    assert out.dtype == np.float32 and out.shape == (2, 224, 224, 3)
    np.testing.assert_array_equal(out, hostx.resize_with_pad(img).astype(np.float32) / np.float32(255))


def test_convert_openpi_resize_writes_the_step_and_the_torch_stack_runs_it(tmp_path):
    """--openpi-resize: OUT's preprocessor has pibridge's resize step (class path), pibridge.json records it, and the
    torch stack's chain reader applies it: its images equal OpenPI's host side's on a 480x640 observation (without
    the step: LeRobot's torch resize, different)."""
    import json

    from pibridge.convert.convert import ConvertRequest, convert
    from pibridge.convert.reader import open_checkpoint
    from pibridge.convert.synth import write_synthetic_checkpoint
    from pibridge.parity import lerobot_preprocess as lp
    from pibridge.parity import openpi_preprocess as op
    from pibridge.parity.observation import synthetic_observation
    from pibridge.tokenizer import load_tokenizer

    ck = tmp_path / "ck"
    write_synthetic_checkpoint(ck, variant="tiny-pi0", profile="pi0_libero", asset_id="physical-intelligence/libero",
                               progress=False)
    outs = {}
    for flag in (True, False):
        outs[flag] = tmp_path / f"out-{flag}"
        rec = convert(ConvertRequest(ckpt=ck, out=outs[flag], profile="pi0_libero", allow_tiny=True, openpi_resize=flag,
                                     camera_map="base_0_rgb=image,left_wrist_0_rgb=wrist_image"))
        assert rec["host_transforms"]["openpi_resize"] is flag
    steps = json.loads((outs[True] / "policy_preprocessor.json").read_text())["steps"]
    resize = [s for s in steps if s.get("class", "").endswith(".OpenPIResizeStep")]
    assert resize == [{"class": "lerobot_policy_pibridge.steps.OpenPIResizeStep", "config": {"height": 224, "width": 224}}]
    assert not any("Resize" in s.get("class", "") for s in json.loads(
        (outs[False] / "policy_preprocessor.json").read_text())["steps"])

    p = load_profile("pi0_libero")
    obs = synthetic_observation(batch=1, horizon=p.action_horizon, state_dim=p.state_dim, seed=4,
                                image_sizes={"base_0_rgb": (480, 640), "left_wrist_0_rgb": (480, 640)})
    tok = load_tokenizer(Path(__file__).parent / "data" / "test_spm.model")
    want = op.preprocess(op.observation_dict(obs), p, open_checkpoint(ck).norm_stats(p.asset_id), tok).images[:, :2]
    files = {flag: lp.load_lerobot_files(outs[flag]) for flag in outs}
    assert files[True].chain.openpi_resize and not files[False].chain.openpi_resize
    with_step = lp.preprocess(obs, files[True], tok, resize="lerobot")
    without = lp.preprocess(obs, files[False], tok, resize="lerobot")
    np.testing.assert_array_equal(with_step.inputs.images[:, :2], want)
    assert np.abs(without.inputs.images[:, :2] - want).max() > 0.05
