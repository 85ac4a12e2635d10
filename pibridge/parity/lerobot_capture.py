"""`parity capture --stack lerobot` (and `parity run --torch-stack lerobot`): an adapter from CaptureRequest to the
real-LeRobot stack (pibridge.parity.lerobot_stack.capture_lerobot), run in a LeRobot environment's interpreter
(`parity run --torch-python .venvs/lr-0.6.1/bin/python`). Never imports jax.

Shared inputs (the safetensors of `--save-inputs`) are handed to LeRobot as its .npz of ModelInputs fields.
Python files named in the environment variable PIBRIDGE_LEROBOT_PRELOAD (os.pathsep-separated) run first: tests
use it for tests/lerobot/tiny_patch.py, which lets LeRobot build the tiny variants.
"""

from __future__ import annotations

import os
import runpy
import tempfile
from pathlib import Path

import numpy as np

from pibridge.parity import stages as st
from pibridge.parity.capture import CaptureRequest, load_model_inputs
from pibridge.parity.stages import Stage

PRELOAD_ENV = "PIBRIDGE_LEROBOT_PRELOAD"


def capture_lerobot_stack(req: CaptureRequest) -> tuple[list[Stage], dict]:
    from pibridge.convert.convert import load_provenance
    from pibridge.parity.lerobot_stack import capture_lerobot
    from pibridge.parity.observation import load_observation
    from pibridge.parity.trace import read_trace

    for f in filter(None, os.environ.get(PRELOAD_ENV, "").split(os.pathsep)):
        runpy.run_path(f, run_name="__pibridge_preload__")
    prov, obs = load_provenance(req.lerobot), load_observation(req.obs)
    with tempfile.TemporaryDirectory() as tmp:
        npz = None
        if req.shared_inputs is not None:
            x = load_model_inputs(req.shared_inputs)
            npz = Path(tmp) / "inputs.npz"
            np.savez(npz, images=x.images, image_mask=x.image_mask, state=x.state, tokens=x.tokens,
                     token_mask=x.token_mask)
        r = capture_lerobot(req.lerobot, obs, Path(tmp) / "t.safetensors", fixes=req.fixes, model_inputs=npz,
                            num_steps=req.steps)
        trace = read_trace(Path(tmp) / "t.safetensors")
    stages = list(trace.stages.values())
    if st.ACTIONS_UNNORMALIZED not in trace.stages:
        stages.append(Stage(st.ACTIONS_UNNORMALIZED, np.asarray(r.actions_unnormalized, np.float32), None, 0.0))
    meta = {k: v for k, v in trace.meta.items() if k != "format"}
    meta.update(packages=r.meta.get("versions", {}), fixes_applied=r.fixes, profile=prov["profile"]["name"],
                checkpoint={"path": str(req.lerobot), "fingerprint": prov["source"]["fingerprint"],
                            "variant": prov["variant"], "target": prov.get("target")},
                observation={"path": str(req.obs), "fingerprint": obs.fingerprint(), "batch": obs.batch},
                preprocessing={"kind": "lerobot-real"})
    return stages, meta
