"""The `lerobot` parity stack: a converted OUT run by the real LeRobot package (PI05Policy / PI0Policy), recorded
under the shared stage names. `pibridge parity capture --stack lerobot` run by a LeRobot environment's interpreter
(`parity run --torch-stack lerobot` finds it: precheck), e.g.

    .venvs/lr-0.6.1/bin/python -m pibridge.cli parity capture --stack lerobot --lerobot OUT --obs OBS --out TRACE

What is real LeRobot: `from_pretrained` and OUT's processors (loader.py), `predict_action_chunk(batch, noise=...)`;
the stages are read by hooks on the loaded instance (recorder.py); its inputs are the raw observation through OUT's
processors, or shared ModelInputs straight to the model (batches.py). Everything stays in this process: shared
inputs are handed over as ModelInputs, the recorder's stages go to the trace pibridge.parity.capture writes.

An OUT of a tiny variant (converted with --allow-tiny) gets tiny.py applied first (recorded in the trace as
lerobot_tiny_patch). Python files named in the environment variable PIBRIDGE_LEROBOT_PRELOAD (os.pathsep-separated)
run first too. --precision must match OUT's runtime dtype: LeRobot computes in config.json's `dtype`, so any other
precision is refused rather than silently ignored.
"""

from __future__ import annotations

import os
import runpy
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pibridge.errors import PibridgeError
from pibridge.parity import stages as st
from pibridge.parity.inputs import ModelInputs
from pibridge.parity.request import CaptureRequest, load_model_inputs
from pibridge.parity.stacks.lerobot.batches import model_inputs_batch, not_comparable, pipeline_batch
from pibridge.parity.stacks.lerobot.loader import LoadCheck, load_policy, make_processors, versions
from pibridge.parity.stages import StageRecorder
from pibridge.provenance import load_provenance

PRELOAD_ENV = "PIBRIDGE_LEROBOT_PRELOAD"
LEROBOT_PYTHON_ENV = "PIBRIDGE_LEROBOT_PYTHON"
LEROBOT_VENV = Path(".venvs") / "lr-0.6.1" / "bin" / "python"  # what `make lerobot-env` builds
PROJECT_ROOT = Path(__file__).resolve().parents[4]  # the checkout (its .venvs/) when pibridge runs from source


@dataclass(frozen=True)
class CaptureResult:
    stages: StageRecorder
    actions: np.ndarray  # (B, A, 32) model actions
    actions_unnormalized: np.ndarray  # (B, A, action_dim) after LeRobot's whole postprocessor (= actions/robot)
    load: LoadCheck
    fixes: dict
    meta: dict = field(default_factory=dict)


def capture_lerobot(out_dir: Path, observation, *, fixes: bool = True, model_inputs: ModelInputs | None = None,
                    num_steps: int | None = None, exact_fp32: bool = False) -> CaptureResult:
    """Load OUT in the installed LeRobot, run one observation (an Observation or its file), record every stage."""
    import torch

    from pibridge.parity.observation import Observation, load_observation
    from pibridge.parity.progress import Progress
    from pibridge.fixes.runtime import apply_runtime_fixes
    from pibridge.parity.stacks.common import to_numpy
    from pibridge.parity.stacks.lerobot.recorder import LeRobotRecorder

    out_dir = Path(out_dir)
    obs = observation if isinstance(observation, Observation) else load_observation(Path(observation))
    prov = load_provenance(out_dir)
    cams, empty, slots = prov["camera_names"], prov["empty_slots"], list(obs.slots)
    torch.manual_seed(0)
    prog = Progress("lerobot", num_steps or 10)  # 10: LeRobot's default num_inference_steps
    prog.phase("load weights (LeRobot from_pretrained)")
    policy, check = load_policy(out_dir, prov["model"])
    ver = versions()
    extra = {"exact_fp32": True} if exact_fp32 else {}  # opt-in record kind "runtime-opt-in" of fixes.json
    done = apply_runtime_fixes(policy, runtime_dtype=policy.config.dtype, lerobot_version=ver["lerobot"],
                               **extra) if fixes else {}
    prog.phase("preprocess (OUT's processors)")
    pre, post = make_processors(policy, out_dir)
    batch = pre(pipeline_batch(obs, cams, empty))
    if model_inputs is not None:
        # the model gets the shared inputs; the preprocessor still ran on the raw frame above, as deployed, so its
        # host steps hold what the postprocessor needs (the relative-actions step caches the state that the
        # absolute-actions step adds back)
        batch = model_inputs_batch(model_inputs, cams, empty)
    noise = torch.from_numpy(np.asarray(obs.noise, np.float32))
    recorder = StageRecorder(on_record=prog.on_record)
    hooks = LeRobotRecorder(policy, recorder)
    try:
        kw = {"num_steps": num_steps} if num_steps else {}
        with torch.no_grad():
            chunk = policy.predict_action_chunk(batch, noise=noise, **kw)
    finally:
        hooks.remove()
    recorder.record(st.ACTIONS_UNNORMALIZED, to_numpy(post[:1](chunk)))  # the unnormalizer step alone
    unnorm = post(chunk)  # every output transform of OUT: the robot's action
    recorder.record(st.ACTIONS_ROBOT, to_numpy(unnorm))
    prog.done()
    actions = recorder[st.ACTIONS].value
    meta = {"stack": "lerobot", "versions": ver, "fixes": done, "fixes_enabled": fixes,
            "precision": "bf16" if policy.config.dtype == "bfloat16" else "float32", "runtime_dtype": policy.config.dtype,
            "inputs": "model_inputs" if model_inputs is not None else "pipeline", "checkpoint": str(out_dir),
            "observation": {"fingerprint": obs.fingerprint(), "batch": obs.batch},
            "load": {"keys": check.keys, "missing": 0, "unexpected": 0},
            "not_comparable": not_comparable(obs.image_mask, slots, empty)}
    return CaptureResult(recorder, actions, to_numpy(unnorm), check, done, meta)


# --- `parity capture --stack lerobot` -----------------------------------------------------------------------------

def check_precision(prov: dict, precision: str, out: Path) -> None:
    """LeRobot runs in OUT's config.json dtype: refuse a --precision that says otherwise."""
    from pibridge.vocab import PRECISION_TOKENS

    runtime = (prov.get("target") or {}).get("runtime_dtype") or "float32"
    if PRECISION_TOKENS.get(runtime, runtime) != precision:
        raise PibridgeError(f"--precision {precision} with the real LeRobot stack, but {out} computes in {runtime} "
                            "(config.json `dtype`, which LeRobot follows)",
                            f"--precision {runtime} for this OUT",
                            f"pass --precision {runtime}, or convert again with --runtime-dtype "
                            f"{'bfloat16' if precision == 'bf16' else 'float32'} for the other precision")


def capture_lerobot_stack(req: CaptureRequest) -> tuple[StageRecorder, dict]:
    from pibridge.parity.observation import load_observation
    from pibridge.parity.stacks.lerobot import tiny as lerobot_tiny

    prov, obs = load_provenance(req.lerobot), load_observation(req.obs)
    check_precision(prov, req.precision, req.lerobot)
    tiny = lerobot_tiny.needed(prov)
    if tiny:
        lerobot_tiny.apply()
    for f in filter(None, os.environ.get(PRELOAD_ENV, "").split(os.pathsep)):
        runpy.run_path(f, run_name="__pibridge_preload__")
    shared = load_model_inputs(req.shared_inputs) if req.shared_inputs is not None else None
    r = capture_lerobot(req.lerobot, obs, fixes=req.fixes, model_inputs=shared, num_steps=req.steps)
    meta = dict(r.meta)
    meta.update(packages=r.meta.get("versions", {}), fixes_applied=r.fixes, profile=prov["profile"]["name"],
                checkpoint={"path": str(req.lerobot), "fingerprint": prov["source"]["fingerprint"],
                            "variant": prov["variant"], "target": prov.get("target")},
                observation={"path": str(req.obs), "fingerprint": obs.fingerprint(), "batch": obs.batch},
                preprocessing={"kind": "lerobot-real"},
                lerobot_tiny_patch="pibridge.parity.stacks.lerobot.tiny (tiny variant: LeRobot config values patched)"
                if tiny else None)
    return r.stages, meta


# --- `parity run --torch-stack lerobot`: before any capture ------------------------------------------------------

def precheck(req) -> str:
    """A precision LeRobot can honour, and the interpreter of a LeRobot environment (returned)."""

    check_precision(load_provenance(req.lerobot), req.precision, req.lerobot)
    return lerobot_python(req.torch_python)


def lerobot_python(given: str | None, flag: str = "--torch-python") -> str:
    """The interpreter of the LeRobot environment: `flag` (--torch-python; `serve`: --lerobot-python), else
    $PIBRIDGE_LEROBOT_PYTHON, else the venv `make lerobot-env` built (in the current directory or this checkout); it
    must import lerobot and pibridge."""
    candidates = [given] if given else [os.environ.get(LEROBOT_PYTHON_ENV)] if os.environ.get(LEROBOT_PYTHON_ENV) \
        else [str(root / LEROBOT_VENV) for root in (Path.cwd(), PROJECT_ROOT) if (root / LEROBOT_VENV).is_file()][:1]
    how = (f"{flag} PATH (a Python 3.12 env with lerobot[pi] and pibridge), or set "
           f"{LEROBOT_PYTHON_ENV}=PATH, or build one with `make lerobot-env` (.venvs/lr-0.6.1)")
    if not candidates:
        raise PibridgeError(f"no LeRobot environment found (no {flag}, no "
                            f"{LEROBOT_PYTHON_ENV}, no {LEROBOT_VENV})", "the interpreter of a LeRobot environment", how)
    py = candidates[0]
    probe = "import importlib.util as u, sys; sys.exit(sum(2 ** i for i, m in enumerate(('lerobot', 'pibridge')) " \
            "if u.find_spec(m) is None))"
    try:
        rc = subprocess.run([py, "-c", probe], capture_output=True, timeout=120).returncode
    except OSError as err:
        raise PibridgeError(f"LeRobot interpreter {py}: {err.strerror or err}", "an executable Python", how) from None
    if rc:
        lacks = " and ".join(m for i, m in enumerate(("lerobot", "pibridge")) if rc & 2 ** i) or f"(exit {rc})"
        raise PibridgeError(f"LeRobot interpreter {py} cannot import {lacks}", "lerobot[pi] and pibridge installed there",
                            "pip install 'lerobot[pi]' pibridge into that env (pibridge --no-deps is enough), or " + how)
    return py
