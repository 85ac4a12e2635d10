"""`parity capture --stack lerobot` (and `parity run --torch-stack lerobot`): an adapter from CaptureRequest to the
real-LeRobot stack (pibridge.parity.lerobot_stack.capture_lerobot), run in a LeRobot environment's interpreter
(`parity run --torch-python .venvs/lr-0.6.1/bin/python`). Never imports jax.

Shared inputs (the safetensors of `--save-inputs`) are handed to LeRobot as its .npz of ModelInputs fields.
An OUT of a tiny variant (converted with --allow-tiny) gets pibridge.parity.lerobot_tiny applied first (recorded in
the trace as lerobot_tiny_patch). Python files named in the environment variable PIBRIDGE_LEROBOT_PRELOAD
(os.pathsep-separated) run first too. --precision must match OUT's runtime dtype: LeRobot computes in config.json's
`dtype`, so any other precision is refused rather than silently ignored.
"""

from __future__ import annotations

import os
import runpy
import tempfile
from pathlib import Path

import numpy as np

from pibridge.errors import PibridgeError
from pibridge.parity import stages as st
from pibridge.parity.capture import CaptureRequest, load_model_inputs
from pibridge.parity.stages import Stage

PRELOAD_ENV = "PIBRIDGE_LEROBOT_PRELOAD"


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


def capture_lerobot_stack(req: CaptureRequest) -> tuple[list[Stage], dict]:
    from pibridge.convert.convert import load_provenance
    from pibridge.parity import lerobot_tiny
    from pibridge.parity.lerobot_stack import capture_lerobot
    from pibridge.parity.observation import load_observation
    from pibridge.parity.trace import read_trace

    prov, obs = load_provenance(req.lerobot), load_observation(req.obs)
    check_precision(prov, req.precision, req.lerobot)
    tiny = lerobot_tiny.needed(prov)
    if tiny:
        lerobot_tiny.apply()
    for f in filter(None, os.environ.get(PRELOAD_ENV, "").split(os.pathsep)):
        runpy.run_path(f, run_name="__pibridge_preload__")
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
                preprocessing={"kind": "lerobot-real"},
                lerobot_tiny_patch="pibridge.parity.lerobot_tiny (tiny variant: LeRobot config values patched)"
                if tiny else None)
    return stages, meta
