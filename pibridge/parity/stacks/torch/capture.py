"""The torch side of `pibridge parity capture --stack torch`: LeRobot's preprocessing (lerobot_preprocess), our
LeRobot-structured torch stack (torch_stack) on OUT with the runtime fixes, LeRobot's unnormalization.
Never imports jax; torch is imported inside the functions (so importing this module stays light).

Also measures preprocessing parity on the observation: OpenPI's client resize (PIL, uint8) vs LeRobot's torch
resize (float [0, 1]) on every present non-224 camera image, on the 0-255 scale.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pibridge.errors import PibridgeError
from pibridge.parity import stages as st
from pibridge.parity.request import (CaptureRequest, load_model_inputs, package_versions, preprocessing_record,
                                     save_model_inputs)
from pibridge.parity.observation import Observation, load_observation
from pibridge.parity.stages import StageRecorder


def _runtime(precision: str) -> str:
    return "bfloat16" if precision == "bf16" else "float32"


def resize_parity(obs: Observation) -> dict[str, dict]:
    """Per slot with a present non-224x224 image: OpenPI's vs LeRobot's resize on the 0-255 scale
    (cosine, max-abs, mean-abs over the whole resized batch of that slot)."""
    from pibridge.parity.lerobot_preprocess import resize_with_pad_lerobot, to_float01
    from pibridge.hostx import resize_with_pad

    out = {}
    for c, (slot, img) in enumerate(obs.images.items()):
        rows = obs.image_mask[:, c]
        if not rows.any() or img.shape[1:3] == (224, 224):
            continue
        a = resize_with_pad(img[rows]).astype(np.float64)  # OpenPI: uint8 result
        b = resize_with_pad_lerobot(to_float01(img[rows])).astype(np.float64) * 255.0
        cos = float((a * b).sum() / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
        out[slot] = {"shape": list(img.shape[1:3]), "cosine": cos, "max_abs": float(np.abs(a - b).max()),
                     "mean_abs": float(np.abs(a - b).mean())}
    return out


def capture_torch(req: CaptureRequest) -> tuple[StageRecorder, dict]:
    import torch

    from pibridge.configs import load_variant
    from pibridge.fixes.runtime import apply_runtime_fixes
    from pibridge.fixes.table import embedding_semantics
    from pibridge.parity import lerobot_preprocess as lp
    from pibridge.tokenizer import load_tokenizer
    from pibridge.parity.stacks.torch.forward import sample_actions
    from pibridge.parity.stacks.torch.model import load_policy

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (DESIGN "Parity")
    torch.backends.cudnn.allow_tf32 = False
    from pibridge.parity.progress import Progress

    prog = Progress(req.stack, req.steps)
    prog.phase("read OUT")
    t0 = time.perf_counter()
    files = lp.load_lerobot_files(req.lerobot)
    prov = files.provenance
    variant, runtime = load_variant(prov["variant"]), _runtime(req.precision)
    lerobot_version = prov.get("target", {}).get("lerobot_version", "0.6.1")
    obs = load_observation(req.obs)
    _check_horizon(obs, files)
    t1 = time.perf_counter()
    prog.phase("preprocess")
    tok_path = req.tokenizer or lp.default_tokenizer_path(req.lerobot)
    pre = lp.preprocess(obs, files, load_tokenizer(tok_path) if tok_path else None, req.resize)  # always: recorded
    inputs = pre.inputs if req.shared_inputs is None else load_model_inputs(req.shared_inputs)
    if req.save_inputs is not None:
        save_model_inputs(req.save_inputs, inputs)
    t2 = time.perf_counter()
    prog.phase("load weights")
    policy = load_policy(Path(req.lerobot), variant, runtime)
    fixes = apply_runtime_fixes(policy, runtime_dtype=runtime, lerobot_version=lerobot_version) if req.fixes else {}
    t3 = time.perf_counter()
    rec = StageRecorder(on_record=prog.on_record)
    semantics = embedding_semantics(lerobot_version)
    actions = sample_actions(policy, inputs, obs.noise, num_steps=req.steps, recorder=rec, semantics=semantics)
    t4 = time.perf_counter()
    unnorm = lp.unnormalize_actions(actions, files)
    rec.record(st.ACTIONS_UNNORMALIZED, unnorm, seconds=time.perf_counter() - t4)
    t5 = time.perf_counter()
    rec.record(st.ACTIONS_ROBOT, lp.robot_actions(unnorm, obs, files), seconds=time.perf_counter() - t5)
    prog.done()
    meta = {
        "packages": package_versions("torch", "transformers", "safetensors", "sentencepiece"),
        "checkpoint": {"path": str(req.lerobot), "fingerprint": prov["source"]["fingerprint"],
                       "synth": prov["source"].get("synth"), "variant": prov["variant"], "target": prov.get("target")},
        "observation": {"path": str(req.obs), "fingerprint": obs.fingerprint(), "batch": obs.batch},
        "profile": prov["profile"]["name"], "prompt_format": prov.get("prompt_format"),
        "runtime_dtype": runtime, "semantics": semantics, "fixes_applied": fixes, "not_comparable": {},
        "resize": None if req.shared_inputs else req.resize,
        "notes": ["cameras in OpenPI slot order; per-sample image masks of the observation are kept "
                  "(LeRobot's _preprocess_images can only drop a camera for the whole batch)"],
        "preprocessing": {"kind": "lerobot", **preprocessing_record(pre.prompt_texts, pre.inputs),
                          "resize": resize_parity(obs)},
        "timings": {"open_s": round(t1 - t0, 4), "preprocess_s": round(t2 - t1, 4), "load_s": round(t3 - t2, 4),
                    "sample_s": round(t4 - t3, 4)},
    }
    return rec, meta


def _check_horizon(obs: Observation, files) -> None:
    horizon = int(files.config.get("chunk_size", obs.noise.shape[1]))
    if obs.noise.shape[1] != horizon:
        raise PibridgeError(f"observation noise horizon {obs.noise.shape[1]}", f"{horizon} (config.json chunk_size)",
                            "make the observation with `pibridge parity obs --profile ...` for this policy")
