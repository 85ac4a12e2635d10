"""Check pibridge's profiles and numpy preprocessing against OpenPI's own code (run outside the test gate).

    PYTHONPATH=EXTRA:OPENPI/src:OPENPI/packages/openpi-client/src:. OPENPI_VENV/bin/python \
        tools/check_preprocess_vs_openpi.py [--pibridge-python .venv/bin/python] [--jax053-python JAX053/bin/python]

Needs an OpenPI source checkout (commit 15a9616a) and an environment that imports openpi.training.config
(jax, flax, torch, transformers, sentencepiece, pillow, numpydantic, tyro, ml_collections, chex, ...; see
shared/tools/openpi-reference-env; EXTRA is a `pip install --target` dir with what that venv lacks:
`pip install --no-deps --target EXTRA pillow==11.2.1 numpydantic==1.6.9 tyro tqdm-loggable docstring-parser
typeguard shtab ml_collections chex toolz`). For --jax053-python: a venv with jax==0.5.3 jaxlib==0.5.3
numpy==1.26.4 ml_dtypes==0.4.1 (OpenPI's pins).
For each profile with an upstream TrainConfig it builds the config with OpenPI's get_config and checks:
1. the profile's fields against the config objects (horizon, token length, state format, norm type,
   asset id, default prompt, delta mask, adapt_to_pi) and against the robot transforms run on test inputs
   (which camera feeds which slot, masks, native state / action dims);
2. bit equality of the model inputs: OpenPI's input transforms exactly as create_trained_policy chains them
   (policy_config.py:75-83; norm stats read by OpenPI from a norm_stats.json; PaligemmaTokenizer with
   tests/data/test_spm.model patched in for the unreachable gs:// file), then Policy.infer's batching and
   Observation.from_dict, vs pibridge.parity.openpi_preprocess.preprocess on the same raw observation;
3. bit equality of the robot actions: OpenPI's output transforms (policy_config.py:84-89) vs
   postprocess_actions;
4. with --pibridge-python: resize_with_pad under that interpreter's Pillow vs openpi_client's here;
5. with --jax053-python: OpenPI's eager uint8 -> [-1, 1] expression under jax 0.5.3 (its pin) vs ours. Newer
   jax (0.10) divides by the reciprocal there, 1 ulp off on 111 of 256 values; check 2 reports that case.
Exit 0 when everything matches; prints one line per check.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPM = ROOT / "tests" / "data" / "test_spm.model"
SIZES = [(2, 4), (1, 3), (8, 9), (180, 320), (224, 224), (480, 640), (300, 200), (97, 13)]
FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        FAILURES.append(what)


def patch_tokenizer_download() -> None:
    import openpi.shared.download as download

    real = download.maybe_download

    def fake(url, **kw):
        return SPM if url == "gs://big_vision/paligemma_tokenizer.model" else real(url, **kw)

    download.maybe_download = fake


def write_stats(root: pathlib.Path, asset_id: str, sd: int, ad: int, rng) -> pathlib.Path:
    def entry(d):
        q01 = rng.uniform(-2, 0, d)
        return {"mean": rng.normal(size=d).tolist(), "std": rng.uniform(0.1, 2, d).tolist(), "q01": q01.tolist(),
                "q99": (q01 + rng.uniform(0.5, 3, d)).tolist()}

    path = root / asset_id / "norm_stats.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"norm_stats": {"state": entry(sd), "actions": entry(ad)}}, indent=2))
    return path.parent


PROMPT = "  pick_up the\nblack bowl "
LONG_PROMPT = "put the zebra-striped mug (Ω) next to the 3rd plate_on the left, then " * 8  # truncates at 48 and 200


def raw_observation(robot: str, rng, size, state_dim: int, prompt: str) -> tuple[dict, dict]:
    """A robot-format observation for OpenPI and the slot-keyed one for pibridge (same pixels, same state)."""
    h, w = size
    imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(3)]
    state = rng.uniform(-1.5, 1.5, state_dim)
    if robot == "droid":
        up = {"observation/exterior_image_1_left": imgs[0], "observation/wrist_image_left": imgs[1],
              "observation/joint_position": state[:7], "observation/gripper_position": state[7:], "prompt": prompt}
        ours = {"base_0_rgb": imgs[0], "left_wrist_0_rgb": imgs[1]}
    elif robot == "libero":
        up = {"observation/image": imgs[0], "observation/wrist_image": imgs[1], "observation/state": state,
              "prompt": prompt}
        ours = {"base_0_rgb": imgs[0], "left_wrist_0_rgb": imgs[1]}
    else:  # aloha: CHW images (aloha_policy.py:170-171); state in [0, 1] keeps the gripper arcsin defined
        state = rng.uniform(0.05, 0.95, state_dim)
        names = ["cam_high"] if robot == "aloha_sim" else ["cam_high", "cam_left_wrist", "cam_right_wrist"]
        up = {"images": {n: im.transpose(2, 0, 1) for n, im in zip(names, imgs)}, "state": state, "prompt": prompt}
        ours = dict(zip(["base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"][: len(names)], imgs))
    return up, {"state": state, "images": ours, "prompt": prompt}


def openpi_model_inputs(cfg, data_config, up_obs: dict):
    import jax
    import jax.numpy as jnp
    import openpi.transforms as T
    from openpi.models import model as _model

    chain = [T.InjectDefaultPrompt(None), *data_config.data_transforms.inputs,
             T.Normalize(data_config.norm_stats, use_quantiles=data_config.use_quantile_norm),
             *data_config.model_transforms.inputs]  # policy_config.py:77-83
    inputs = T.compose(chain)(jax.tree.map(lambda x: x, up_obs))
    inputs = jax.tree.map(lambda x: jnp.asarray(x)[np.newaxis, ...], inputs)  # policy.py:74
    uint8 = {k: np.asarray(v) for k, v in inputs["image"].items()}  # from_dict converts inputs["image"] in place
    return inputs, uint8, _model.Observation.from_dict(inputs)


def compare_inputs(name: str, uint8: dict, obs, ours) -> None:
    import jax
    from openpi.models import model as _model

    from pibridge.parity.openpi_preprocess import image_to_float

    keys = _model.IMAGE_KEYS
    up_u8 = np.stack([uint8[k] for k in keys], axis=1)  # 3 x (1,224,224,3) -> (1,3,224,224,3)
    up_img = np.stack([np.asarray(obs.images[k]) for k in keys], axis=1)
    up_mask = np.stack([np.asarray(obs.image_masks[k]) for k in keys], axis=1)
    x = ours.inputs
    pairs = {"uint8 images": (up_u8, ours.images_uint8), "image_mask": (up_mask, x.image_mask),
             "state": (np.asarray(obs.state), x.state), "tokens": (np.asarray(obs.tokenized_prompt), x.tokens),
             "token_mask": (np.asarray(obs.tokenized_prompt_mask), x.token_mask)}
    for key, (a, b) in pairs.items():
        check(_same(a, b), f"{name}: {key} {a.dtype}{a.shape} vs {b.dtype}{b.shape}{_diff(a, b)}")
    check(_same(image_to_float(up_u8), x.images), f"{name}: float images == image_to_float(OpenPI's uint8)")
    if _same(up_img, x.images):
        check(True, f"{name}: float images == OpenPI's Observation.from_dict under jax {jax.__version__}")
        return
    recip = up_u8.astype(np.float32) * np.float32(1 / 255) * np.float32(2) - np.float32(1)
    check(jax.__version__ != "0.5.3" and _same(up_img, recip),
          f"{name}: float images differ{_diff(up_img, x.images)} only because jax {jax.__version__} divides by "
          "the reciprocal (x*(1/255)); OpenPI's pinned jax 0.5.3 divides exactly: see --jax053-python")


def _same(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def _diff(a, b) -> str:
    if _same(a, b) or a.shape != b.shape:
        return ""
    return f" max-abs {np.max(np.abs(a.astype(np.float64) - b)):.3g}"


def check_float_conversion_on_jax053(python: str) -> None:
    """OpenPI's uint8 -> [-1, 1] expression (model.py:117-118, eager on jax arrays) under jax 0.5.3 vs ours."""
    from pibridge.parity.openpi_preprocess import image_to_float

    code = ("import sys, numpy as np, jax, jax.numpy as jnp; x = jnp.asarray(np.arange(256, dtype=np.uint8)[None]); "
            "y = np.asarray(x.astype(np.float32) / 255.0 * 2.0 - 1.0); np.save(sys.argv[1], y); print(jax.__version__)")
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp, "y.npy")
        ver = _run(python, code, str(out))
        theirs = np.load(out)
    ours = image_to_float(np.arange(256, dtype=np.uint8)[None])
    check(_same(theirs, ours), f"uint8 -> [-1, 1]: jax {ver} (OpenPI's pin) == image_to_float for all 256 values")


def _run(python: str, code: str, *args: str) -> str:
    """Run code under another interpreter with a clean environment (no PYTHONPATH from this one)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([python, "-c", code, *args], check=True, capture_output=True, text=True, cwd=ROOT,
                          env=env).stdout.strip()


def compare_outputs(name, data_config, inputs, ours_inputs, profile, stats, rng) -> None:
    import jax
    import openpi.transforms as T

    from pibridge.parity.openpi_preprocess import postprocess_actions

    actions = rng.normal(size=(1, profile.action_horizon, 32)).astype(np.float32)
    up = {"state": np.asarray(inputs["state"]), "actions": actions}
    up = jax.tree.map(lambda x: np.asarray(x[0, ...]), up)  # policy.py:100
    chain = [*data_config.model_transforms.outputs,
             T.Unnormalize(data_config.norm_stats, use_quantiles=data_config.use_quantile_norm),
             *data_config.data_transforms.outputs]  # policy_config.py:84-89
    up_actions = T.compose(chain)(up)["actions"]
    mine = postprocess_actions(actions, ours_inputs.inputs.state, profile, stats)[0]
    check(up_actions.dtype == mine.dtype and np.array_equal(up_actions, mine),
          f"{name}: robot actions {up_actions.dtype}{up_actions.shape} vs {mine.dtype}{mine.shape}")


def check_config_fields(profile, cfg, data_config) -> None:
    import openpi.policies.aloha_policy as aloha_policy
    import openpi.transforms as T
    from openpi.models.model import ModelType

    m = cfg.model
    got = {"model": "pi05" if m.model_type == ModelType.PI05 else "pi0", "action_horizon": m.action_horizon,
           "max_token_len": m.max_token_len, "discrete_state_input": bool(m.discrete_state_input),
           "norm": "quantile" if data_config.use_quantile_norm else "zscore", "asset_id": data_config.asset_id}
    deltas = [t.mask for t in data_config.data_transforms.inputs if isinstance(t, T.DeltaActions)]
    got["delta_action_mask"] = tuple(deltas[0]) if deltas else ()
    alohas = [t for t in data_config.data_transforms.inputs if isinstance(t, aloha_policy.AlohaInputs)]
    got["adapt_to_pi"] = alohas[0].adapt_to_pi if alohas else False
    prompts = [t.prompt for t in data_config.model_transforms.inputs if isinstance(t, T.InjectDefaultPrompt)]
    got["default_prompt"] = prompts[0] if prompts else None
    for key, value in got.items():
        check(getattr(profile, key) == value, f"{profile.name}: {key} profile {getattr(profile, key)!r} vs "
              f"OpenPI {value!r}")


def check_profile(name: str, robot: str, stats_root: pathlib.Path, tok, rng) -> None:
    import openpi.training.config as _config

    from pibridge.convert.profile import load_profile
    from pibridge.parity.openpi_preprocess import load_norm_stats, preprocess_detailed

    profile = load_profile(name)
    write_stats(stats_root, profile.asset_id, profile.state_dim, 14 if robot.startswith("aloha") else 32, rng)
    cfg = _config.get_config(profile.openpi_config)
    data_config = cfg.data.create(stats_root, cfg.model)
    check(data_config.norm_stats is not None, f"{name}: OpenPI loaded the test norm stats")
    check_config_fields(profile, cfg, data_config)
    stats = load_norm_stats(stats_root / profile.asset_id)
    for size in SIZES:
        prompt = LONG_PROMPT if size == SIZES[-1] else PROMPT
        up_obs, our_obs = raw_observation(robot, rng, size, profile.state_dim, prompt)
        inputs, uint8, obs = openpi_model_inputs(cfg, data_config, up_obs)
        ours = preprocess_detailed(our_obs, profile, stats, tok)
        compare_inputs(f"{name} {size[0]}x{size[1]}", uint8, obs, ours)
        if prompt is LONG_PROMPT:
            check(all(ours.truncated), f"{name}: the long prompt was truncated to {profile.max_token_len} tokens")
    compare_outputs(name, data_config, inputs, ours, profile, stats, rng)


def check_base_profiles() -> None:
    from openpi.models.pi0_config import Pi0Config

    from pibridge.convert.profile import load_profile

    for pi05 in (False, True):
        p, c = load_profile("pi05_base" if pi05 else "pi0_base"), Pi0Config(pi05=pi05)
        check((p.action_horizon, p.max_token_len, p.discrete_state_input) ==
              (c.action_horizon, c.max_token_len, c.discrete_state_input), f"{p.name}: Pi0Config defaults")


def check_resize_across_pillow(python: str) -> None:
    """pibridge's resize under another interpreter's Pillow vs openpi_client's under this one."""
    import PIL
    from openpi_client import image_tools

    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES + [(3, 500), (720, 1280)]]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = pathlib.Path(tmp, "in.npz"), pathlib.Path(tmp, "out.npz")
        np.savez(src, *images)
        code = ("import sys, numpy as np, PIL; from pibridge.hostx import resize_with_pad; "
                "d = np.load(sys.argv[1]); np.savez(sys.argv[2], *[resize_with_pad(d[k]) for k in d.files]); "
                "print(PIL.__version__)")
        ver = _run(python, code, str(src), str(dst))
        out = np.load(dst)
        same = all(np.array_equal(image_tools.resize_with_pad(im, 224, 224), out[f"arr_{i}"])
                   for i, im in enumerate(images))
    check(same, f"resize_with_pad: pibridge on Pillow {ver} == openpi_client on Pillow {PIL.__version__}, "
          f"{len(images)} sizes")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pibridge-python", help="also compare resize_with_pad under this interpreter's Pillow")
    ap.add_argument("--jax053-python", help="an interpreter with jax 0.5.3 (OpenPI's pin) for the uint8 -> float check")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    patch_tokenizer_download()
    from pibridge.tokenizer import load_tokenizer

    tok, rng = load_tokenizer(SPM), np.random.default_rng(0)
    check_base_profiles()
    with tempfile.TemporaryDirectory() as tmp:
        for name, robot in [("pi0_droid", "droid"), ("pi05_droid", "droid"), ("pi0_libero", "libero"),
                            ("pi05_libero", "libero"), ("pi0_aloha", "aloha"), ("pi05_aloha", "aloha"),
                            ("pi0_aloha_towel", "aloha"), ("pi0_aloha_sim", "aloha_sim")]:
            check_profile(name, robot, pathlib.Path(tmp), tok, rng)
    if args.pibridge_python:
        check_resize_across_pillow(args.pibridge_python)
    if args.jax053_python:
        check_float_conversion_on_jax053(args.jax053_python)
    print(f"{len(FAILURES)} failed" if FAILURES else "all checks passed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
