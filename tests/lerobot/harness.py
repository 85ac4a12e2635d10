"""Helpers for the real-LeRobot tests (run in the project venv; LeRobot itself runs in .venvs/lr-* subprocesses).

make_tiny_out: synth a tiny OpenPI checkpoint + `pibridge convert` for a LeRobot release (with the test tokenizer).
jax_trace: OpenPI host preprocessing + the JAX stack on an observation (in this process: the project venv).
lerobot_capture: `python -m pibridge.cli parity capture --stack lerobot` in a LeRobot venv (tiny OUTs patched by the
capture itself).
robot_action_cases: the robot's action, real LeRobot on OUT (one capture_many subprocess) vs OpenPI's host side on
the JAX stack (openpi_robot_actions), per (profile, image size, --openpi-resize) case; bench/robot_actions.py and
tests/test_lerobot_host.py use it. serve_robot_action_cases: the same through `pibridge serve --lerobot OUT` queried by
the real openpi-client (start_server / wait_ready / stop_server, client_dict, served_replies).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pibridge.convert.profile import serving_profile_names

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "tests" / "data" / "test_spm.model"


def venv_python(name: str) -> Path:
    """The interpreter of .venvs/<name>; skip when absent locally, fail when CI is set (CI must build them)."""
    py = ROOT / ".venvs" / name / "bin" / "python"
    if not py.exists():
        msg = f"LeRobot venv .venvs/{name} not built (run `make lerobot-env`)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + " -- CI=true requires it")
        pytest.skip(msg)
    return py


def make_ckpt(root: Path, model: str, profile: str | None = None, asset: str = "droid") -> Path:
    from pibridge.convert.synth import write_synthetic_checkpoint

    profile = profile or f"{model}_droid"
    ck = root / f"ck-{model}-{profile}"
    if not ck.exists():
        write_synthetic_checkpoint(ck, variant=f"tiny-{model}", profile=profile, asset_id=asset)
    return ck


def make_tiny_out(root: Path, model: str, lerobot: str, runtime: str, *, profile: str | None = None,
                  camera_map: str = "base_0_rgb=top,left_wrist_0_rgb=wrist", ckpt: Path | None = None,
                  openpi_resize: bool = False) -> Path:
    from pibridge.convert.convert import ConvertRequest, convert

    out = root / f"out-{model}-{lerobot}-{runtime}-{profile or 'droid'}{'-resize' if openpi_resize else ''}"
    if not out.exists():
        convert(ConvertRequest(ckpt=ckpt or make_ckpt(root, model, profile), out=out, profile=profile or f"{model}_droid",
                               camera_map=camera_map, lerobot_version=lerobot, runtime_dtype=runtime,
                               tokenizer=TOKENIZER, allow_tiny=True, openpi_resize=openpi_resize))
    return out


def observation(root: Path, model: str, *, horizon: int | None = None, state_dim: int = 8, sizes=None, seed: int = 3,
                name: str = "obs", empty: tuple[str, ...] = ("right_wrist_0_rgb",), profile: str | None = None):
    from pibridge.convert.profile import load_profile
    from pibridge.parity.observation import save_observation, synthetic_observation

    horizon = horizon or load_profile(profile or f"{model}_droid").action_horizon
    sizes = sizes or {s: (224, 224) for s in ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb") if s not in empty}
    obs = synthetic_observation(batch=1, horizon=horizon, state_dim=state_dim, seed=seed, image_sizes=sizes,
                                prompts=["pick up the red block and put it in the bin"])
    path = root / f"{name}-{model}.safetensors"
    save_observation(path, obs)
    return obs, path


def jax_trace(ckpt: Path, out: Path, obs, precision: str, trace: Path, *, npz: Path | None = None,
              asset: str = "droid"):
    """OpenPI preprocessing + the JAX stack; writes the trace (and, to `npz`, the ModelInputs as the
    --save-inputs file that `parity capture --shared-inputs` reads)."""
    from pibridge.configs import load_variant
    from pibridge.provenance import load_provenance
    from pibridge.convert.profile import profile_from_dict
    from pibridge.convert.reader import open_checkpoint
    from pibridge.parity.stacks.jax import run_policy
    from pibridge.parity.openpi_preprocess import observation_dict, preprocess
    from pibridge.parity.stages import StageRecorder
    from pibridge.tokenizer import load_tokenizer
    from pibridge.parity.trace import write_trace

    prov = load_provenance(out)
    ck = open_checkpoint(ckpt)
    profile = profile_from_dict(prov["profile"])
    inputs = preprocess(observation_dict(obs), profile, ck.norm_stats(asset), load_tokenizer(TOKENIZER))
    rec = StageRecorder()
    run_policy(ck.read_tree(), load_variant(prov["variant"]), inputs, obs.noise, precision=precision, record=rec)
    write_trace(trace, rec, {"stack": "jax", "precision": precision,
                             "observation": {"fingerprint": obs.fingerprint(), "batch": obs.batch}})
    if npz is not None:
        from pibridge.parity.request import save_model_inputs

        save_model_inputs(npz, inputs)
    return inputs


def lerobot_capture(venv: str, out: Path, obs_path: Path, trace: Path, *, fixes: bool = True,
                    model_inputs: Path | None = None, progress: bool = False) -> dict:
    """`pibridge parity capture --stack lerobot` in the venv (at OUT's runtime precision); a summary read from the
    trace it wrote; with progress=True also its relayed progress lines under "progress"."""
    runtime = json.loads((Path(out) / "pibridge.json").read_text())["target"]["runtime_dtype"]
    cmd = [str(venv_python(venv)), "-m", "pibridge.cli", "parity", "capture", "--stack", "lerobot", "--lerobot",
           str(out), "--obs", str(obs_path), "--out", str(trace), "--precision", runtime]
    if not fixes:
        cmd.append("--no-fixes")
    if model_inputs is not None:
        cmd += ["--shared-inputs", str(model_inputs)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
    if progress:
        from pibridge.parity.progress import ENV

        env[ENV] = "1"
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if p.returncode != 0:
        raise AssertionError(f"lerobot capture failed (rc {p.returncode}):\n{p.stderr[-4000:]}\n{p.stdout[-2000:]}")
    from pibridge.parity.trace import read_trace

    meta = read_trace(trace).meta
    summary = {"trace": str(trace), "fixes": meta["fixes"], "versions": meta["versions"],
               "load_keys": meta["load"]["keys"], "not_comparable": sorted(set(meta["not_comparable"]))}
    if progress:
        from pibridge.parity.progress import PREFIX

        summary["progress"] = [x[len(PREFIX):].rsplit(" (", 1)[0] for x in p.stderr.splitlines() if x.startswith(PREFIX)]
    return summary


def stage_table(jax_path: Path, lr_path: Path):
    """{stage: (cosine, max_abs)} over every stage both traces hold (validity masks of the JAX side)."""
    from pibridge.parity.compare import stage_metrics
    from pibridge.parity.trace import read_trace

    a, b = read_trace(jax_path), read_trace(lr_path)
    table = {}
    for name in a.order:
        if name in b.stages:
            m = stage_metrics(a.stages[name], b.stages[name])
            table[name] = m if isinstance(m, str) else (m.cosine, m.max_abs)
    return table, b.meta


# ------------------------------------------------------------------------------- the robot's action, per case
PLUGIN = ROOT / "plugins" / "lerobot_policy_pibridge"
NATIVE_SIZES = {"aloha": (480, 640), "droid": (720, 1280), "libero": (256, 256)}  # the example clients' cameras
CAPTURE_MANY = Path(__file__).with_name("capture_many.py")
SWEEP_PROFILES = tuple(serving_profile_names())  # the shipped profiles with an OpenPI TrainConfig (not pi0/pi05_base)


def sweep_cases(profiles=SWEEP_PROFILES, native: dict | None = None) -> list[tuple]:
    """Issue 14's sweep: each profile at 224x224 with OUT's defaults, then at its client's native size (native
    overrides NATIVE_SIZES per robot family) with --openpi-resize."""
    from pibridge.convert.profile import load_profile

    sizes = {**NATIVE_SIZES, **(native or {})}
    return [(n, None, False) for n in profiles] + [(n, sizes[load_profile(n).robot], True) for n in profiles]


def plugin_env() -> dict:
    """A LeRobot subprocess's environment: offline, this checkout's pibridge and its plugin first on the path."""
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore",
                PYTHONPATH=os.pathsep.join([str(ROOT), str(PLUGIN)]))


def profile_cameras(p) -> tuple[str, tuple[str, ...]]:
    """(--camera-map, empty slots) naming each LeRobot camera after the OpenPI client's key (cam_high, image, ...)."""
    cams = p.require("cameras")
    return (",".join(f"{c.slot}={c.source.split('/')[-1]}" for c in cams if not c.empty),
            tuple(c.slot for c in cams if c.empty))


def openpi_robot_actions(ck: Path, p, obs, *, prompt: bool = True) -> np.ndarray:
    """OpenPI's Policy.infer on the JAX stack: host preprocessing (resize included), model, Unnormalize +
    AbsoluteActions + robot outputs. prompt=False: the observation without its prompt (InjectDefaultPrompt's case)."""
    from pibridge.configs import load_variant
    from pibridge.convert.detect import detect
    from pibridge.convert.reader import open_checkpoint
    from pibridge.parity.stacks.jax import run_policy
    from pibridge.parity.openpi_preprocess import observation_dict, postprocess_actions, preprocess
    from pibridge.tokenizer import load_tokenizer

    c = open_checkpoint(ck)
    stats = c.norm_stats(p.asset_id)
    raw = observation_dict(obs)
    if not prompt:
        del raw["prompt"]
    inputs = preprocess(raw, p, stats, load_tokenizer(TOKENIZER))
    actions = run_policy(c.read_tree(), load_variant(detect(c.leaves).variant.name), inputs, obs.noise,
                         precision="float32")
    return postprocess_actions(np.asarray(actions), inputs.state, p, stats)


def _case_setups(work: Path, cases) -> list[tuple]:
    """Per case (profile, (H, W) or None, openpi_resize): a tiny float32 OUT (LeRobot 0.6.1) with OUT's defaults
    (plus --openpi-resize if asked) and one observation with every camera at that size.
    -> [(profile, ckpt, out, obs, obs_path, (H, W), resize)]."""
    from pibridge.convert.profile import load_profile

    setups = []
    for profile, size, resize in cases:
        p = load_profile(profile)
        cams, _ = profile_cameras(p)
        ck = make_ckpt(work, p.model, profile, asset=p.asset_id)
        out = make_tiny_out(work, p.model, "0.6.1", "float32", profile=profile, camera_map=cams, ckpt=ck,
                            openpi_resize=resize)
        h, w = size or (224, 224)
        sizes = {c.slot: (h, w) for c in p.require("cameras") if not c.empty}
        obs, path = observation(work, p.model, state_dim=p.state_dim, sizes=sizes, profile=profile,
                                name=f"obs-{profile}-{h}x{w}")
        setups.append((p, ck, out, obs, path, (h, w), resize))
    return setups


def robot_action_cases(work: Path, cases, timeout: int = 1800) -> list[dict]:
    """cases: (profile, (H, W) or None for 224x224, openpi_resize) (_case_setups). The robot's action from the real
    LeRobot (all cases in one subprocess) and from OpenPI's host side on the JAX stack, same observation and noise.
    -> per case {profile, size, openpi_resize, max_abs, unnormalized_gap, shape, openpi_s, lerobot_s}."""
    import time

    from pibridge.parity import stages as st
    from pibridge.parity.trace import read_trace

    py = venv_python("lr-0.6.1")
    setups, argv = [], [str(py), str(CAPTURE_MANY)]
    for p, ck, out, obs, path, (h, w), resize in _case_setups(work, cases):
        trace = work / f"lr-{p.name}-{h}x{w}{'-resize' if resize else ''}.safetensors"
        setups.append((p, ck, obs, trace, (h, w), resize))
        argv += [str(out), str(path), str(trace)]
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, env=plugin_env(), cwd=ROOT, timeout=timeout)
    assert r.returncode == 0, r.stderr[-4000:]
    lerobot_s = time.perf_counter() - t0
    results = []
    for p, ck, obs, trace, size, resize in setups:
        t0 = time.perf_counter()
        lr = read_trace(trace).stages
        expected = openpi_robot_actions(ck, p, obs)
        got = lr[st.ACTIONS_ROBOT].value
        assert got.shape == expected.shape == (1, p.action_horizon, p.action_dim), (got.shape, expected.shape)
        results.append({"profile": p.name, "size": size, "openpi_resize": resize, "shape": tuple(got.shape),
                        "max_abs": float(np.abs(got - expected).max()),
                        "unnormalized_gap": float(np.abs(lr[st.ACTIONS_UNNORMALIZED].value - expected).max()),
                        "openpi_s": time.perf_counter() - t0, "lerobot_s": lerobot_s / len(setups)})
    return results


# ------------------------------------------------------------------ the robot's action through `pibridge serve`
DRIVER = ROOT / "tests" / "openpi_client" / "driver.py"


def client_dict(obs, p) -> dict:
    """Sample 0 of an Observation as the raw request OpenPI's example client for p.robot sends (the inverse of
    serve/policy.py's key / layout map, written out here independently): ALOHA "state" + "images" {camera: (3, H, W)}
    (aloha_real/env.py:35-53), DROID "observation/joint_position" (7,) + "observation/gripper_position" (1,) + HWC
    images under their keys (droid main.py), LIBERO "observation/state" + HWC images (libero main.py), robot none
    "state" + "images" {camera: HWC}; the prompt; the noise (H, 32) (pibridge's extension). State float64."""
    state = np.asarray(obs.state[0], np.float64)
    robot = p.robot or "none"
    d: dict = {"prompt": obs.prompts[0], "noise": np.asarray(obs.noise[0], np.float32)}
    if robot == "droid":
        d["observation/joint_position"], d["observation/gripper_position"] = state[:7], state[7:8]
    else:
        d["observation/state" if robot == "libero" else "state"] = state
    images = {c.source: obs.images[c.slot][0] for c in p.require("cameras") if not c.empty}
    if robot == "aloha":
        d["images"] = {k: np.ascontiguousarray(np.transpose(v, (2, 0, 1))) for k, v in images.items()}
    elif robot == "none":
        d["images"] = images
    else:
        d.update(images)
    return d


def start_server(args: list[str], log: Path):
    """`python -m pibridge.cli serve ARGS` (this venv; --lerobot finds .venvs/lr-0.6.1 by itself), output to log."""
    import sys

    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "pibridge.cli", "serve", *args], stdout=f,
                                stderr=subprocess.STDOUT, env=plugin_env(), cwd=ROOT)


def wait_ready(proc, log: Path, timeout: float = 300) -> int:
    """The port from serve's READY line; AssertionError with the log when it exits or times out first."""
    import time

    from pibridge.serve.server import READY

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = log.read_text() if log.exists() else ""
        for line in text.splitlines():
            if line.startswith(READY):
                return int(line.split()[4].rsplit(":", 1)[1])
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}:\n{text[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"serve not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def stop_server(proc) -> None:
    from pibridge.serve.command import stop_server as stop

    stop(proc, timeout=30)


def served_replies(out: Path, requests: list[dict], work: Path, extra: tuple[str, ...] = ()) -> tuple[dict, list]:
    """`pibridge serve --lerobot OUT --port 0` (plus extra args), queried by the REAL openpi-client
    (WebsocketClientPolicy in .venvs/openpi-client, driver.py replies) with each request;
    -> ({"metadata": the server's metadata frame, "images": serve's line on who resizes}, replies)."""
    import json

    from pibridge.serve.wire import pack, unpack

    client = venv_python("openpi-client")
    work.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i, req in enumerate(requests):
        (work / f"req-{i}.bin").write_bytes(pack(req))
        pairs += [str(work / f"req-{i}.bin"), str(work / f"reply-{i}.bin")]
    proc = start_server(["--lerobot", str(out), "--port", "0", *extra], work / "serve.log")
    try:
        port = wait_ready(proc, work / "serve.log")
        r = subprocess.run([str(client), str(DRIVER), "replies", str(port), str(work / "metadata.json"), *pairs],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-4000:]
    finally:
        stop_server(proc)
    log = (work / "serve.log").read_text()
    meta = {"metadata": json.loads((work / "metadata.json").read_text()),
            "images": next((x.split("images ", 1)[1] for x in log.splitlines() if x.startswith("pibridge serve: images ")),
                           None)}
    return meta, [unpack((work / f"reply-{i}.bin").read_bytes()) for i in range(len(requests))]


def serve_robot_action_cases(work: Path, cases) -> list[dict]:
    """As robot_action_cases, through `pibridge serve`: one server per OUT (real LeRobot 0.6.1), queried by the real
    openpi-client with the raw client dict (client_dict) and noise; vs OpenPI's host side on the JAX stack.
    -> per case {profile, size, openpi_resize, max_abs, shape, metadata, images (serve's line), serve_s}."""
    import time

    results = []
    for p, ck, out, obs, _, (h, w), resize in _case_setups(work, cases):
        t0 = time.perf_counter()
        meta, (reply,) = served_replies(out, [client_dict(obs, p)],
                                        work / f"serve-{p.name}-{h}x{w}{'-resize' if resize else ''}")
        serve_s = time.perf_counter() - t0
        got, expected = reply["actions"], openpi_robot_actions(ck, p, obs)[0]
        assert got.dtype == np.float64 and got.shape == expected.shape == (p.action_horizon, p.action_dim), \
            (got.dtype, got.shape, expected.shape)
        results.append({"profile": p.name, "size": (h, w), "openpi_resize": resize, "shape": tuple(got.shape),
                        "max_abs": float(np.abs(got - expected).max()), "metadata": meta["metadata"],
                        "images": meta["images"], "serve_s": serve_s})
    return results
