"""`pibridge parity obs --from-client`: an observation file from OpenPI client dicts (msgpack frame or .npz), mapped
by serve/policy.py's client_frame; the same dict saved both ways gives the same observation, and parity's
observation check against a converted OUT accepts it."""

from __future__ import annotations

import numpy as np
import pytest

from pibridge.cli import main
from pibridge.parity.observation import load_observation
from pibridge.serve.wire import pack

ALOHA_CAMS = "base_0_rgb=cam_high,left_wrist_0_rgb=cam_left_wrist,right_wrist_0_rgb=cam_right_wrist"


def cli(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(map(str, args)))
    return exc.value.code or 0, capsys.readouterr().err


def save_both(tmp_path, obs: dict, name: str):
    flat = {k: v for k, v in obs.items() if k != "images"}
    flat.update({f"images/{k}": v for k, v in obs.get("images", {}).items()})
    np.savez(tmp_path / f"{name}.npz", **flat)
    (tmp_path / f"{name}.msgpack").write_bytes(pack(obs))
    return tmp_path / f"{name}.npz", tmp_path / f"{name}.msgpack"


def aloha_dict(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    chw = lambda: rng.integers(0, 256, (3, 48, 64), dtype=np.uint8)  # noqa: E731  (ALOHA sends (3, H, W))
    return {"state": rng.uniform(-1, 1, 14), "images": {"cam_high": chw(), "cam_left_wrist": chw()}}  # no right wrist


def test_aloha_client_dict_both_ways_same_observation(tmp_path, capsys):
    obs = aloha_dict(0)
    npz, mp = save_both(tmp_path, obs, "aloha")
    outs = {}
    for src in (npz, mp):
        code, err = cli(capsys, "parity", "obs", tmp_path / f"{src.suffix[1:]}.safetensors", "--profile", "pi05_aloha",
                        "--from-client", src, "--prompt", "fold the towel", "--seed", 5)
        assert code == 0, err
        outs[src.suffix] = load_observation(tmp_path / f"{src.suffix[1:]}.safetensors")
    a, b = outs[".npz"], outs[".msgpack"]
    assert a.fingerprint() == b.fingerprint()
    assert a.slots == ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
    np.testing.assert_array_equal(a.images["base_0_rgb"][0], obs["images"]["cam_high"].transpose(1, 2, 0))  # CHW->HWC
    np.testing.assert_array_equal(a.images["left_wrist_0_rgb"][0], obs["images"]["cam_left_wrist"].transpose(1, 2, 0))
    assert not a.images["right_wrist_0_rgb"].any() and a.image_mask.tolist() == [[True, True, False]]
    np.testing.assert_array_equal(a.state, obs["state"][None].astype(np.float32))  # the robot's space: no adapt_to_pi
    assert a.prompts == ("fold the towel",) and a.noise.shape == (1, 50, 32)
    np.testing.assert_array_equal(a.noise[0], np.random.default_rng(5).standard_normal((50, 32)).astype(np.float32))


def test_droid_client_dict_with_image_file_and_batch(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(1)
    ext = rng.uniform(0, 1, (36, 64, 3)).astype(np.float32)  # float HWC: OpenPI's (255 x).astype(uint8)
    wrist = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(wrist).save(tmp_path / "wrist.png")
    noise = rng.standard_normal((15, 32)).astype(np.float32)
    files = []
    for i in range(2):
        d = {"observation/joint_position": rng.uniform(-1, 1, 7), "observation/gripper_position": np.array([0.25 * i]),
             "observation/exterior_image_1_left": ext, "observation/wrist_image_left": np.zeros((30, 40, 3), np.uint8),
             "prompt": f"pick_up block {i}\n", "noise": noise}
        files.append((save_both(tmp_path, d, f"droid{i}")[i], d))  # one npz, one msgpack: a mixed batch
    code, err = cli(capsys, "parity", "obs", tmp_path / "o.safetensors", "--profile", "pi05_droid",
                    "--from-client", files[0][0], "--from-client", files[1][0],
                    "--image", f"observation/wrist_image_left={tmp_path / 'wrist.png'}")
    assert code == 0, err
    o = load_observation(tmp_path / "o.safetensors")
    assert o.batch == 2 and o.slots == ("base_0_rgb", "left_wrist_0_rgb") and o.image_mask.all()
    np.testing.assert_array_equal(o.images["base_0_rgb"][1], (255 * ext).astype(np.uint8))
    np.testing.assert_array_equal(o.images["left_wrist_0_rgb"][0], wrist)  # the image file, not the dict's zeros
    for b, (_, d) in enumerate(files):
        np.testing.assert_allclose(o.state[b], np.r_[d["observation/joint_position"], 0.25 * b].astype(np.float32))
    assert o.prompts == ("pick_up block 0\n", "pick_up block 1\n")  # raw: prompt cleaning is the stacks' job
    np.testing.assert_array_equal(o.noise, np.stack([noise, noise]))


def test_bad_client_files_exit_2(tmp_path, capsys):
    npz, mp = save_both(tmp_path, aloha_dict(2), "aloha")
    code, err = cli(capsys, "parity", "obs", tmp_path / "o.safetensors", "--profile", "pi05_aloha", "--from-client", mp)
    assert code == 2 and "no 'prompt'" in err and "--prompt" in err
    (tmp_path / "bad.msgpack").write_bytes(b"\xc1junk")
    code, err = cli(capsys, "parity", "obs", tmp_path / "o.safetensors", "--profile", "pi05_aloha",
                    "--from-client", tmp_path / "bad.msgpack", "--prompt", "x")
    assert code == 2 and "not a msgpack frame" in err
    code, err = cli(capsys, "parity", "obs", tmp_path / "o.safetensors", "--profile", "pi05_droid",
                    "--from-client", npz, "--prompt", "x")
    assert code == 2 and "no 'observation/joint_position' key" in err and "aloha.npz" in err
    assert not (tmp_path / "o.safetensors").exists()


def test_parity_accepts_the_client_observation(tmp_path, capsys):
    """What `parity run --obs` / `parity capture` check first: load + validate + the fit to OUT's profile."""
    from pibridge.convert.convert import ConvertRequest, convert
    from pibridge.convert.synth import write_synthetic_checkpoint
    from pibridge.parity.capture import check_observation_fits
    from pibridge.provenance import load_provenance

    ck, out = tmp_path / "ck", tmp_path / "out"
    write_synthetic_checkpoint(ck, variant="tiny-pi05", profile="pi05_aloha", asset_id="trossen", progress=False)
    convert(ConvertRequest(ckpt=ck, out=out, profile="pi05_aloha", camera_map=ALOHA_CAMS, allow_tiny=True))
    npz, _ = save_both(tmp_path, aloha_dict(3), "aloha")
    code, err = cli(capsys, "parity", "obs", tmp_path / "o.safetensors", "--profile", out, "--from-client", npz,
                    "--prompt", "fold")
    assert code == 0, err
    check_observation_fits(tmp_path / "o.safetensors", load_provenance(out), out)
    short = tmp_path / "short.safetensors"
    assert cli(capsys, "parity", "obs", short, "--profile", "pi05_aloha", "--from-client", npz, "--prompt", "fold",
               "--horizon", 7)[0] == 0
    with pytest.raises(Exception, match="noise horizon 7"):  # the check can fail
        check_observation_fits(short, load_provenance(out), out)
