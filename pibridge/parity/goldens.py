"""Goldens: JAX-stack traces of tiny variants, validated against OpenPI's own Pi0 when made
(tools/make_goldens.py, `make goldens OPENPI_SRC=...`), checked by tests/test_goldens.py.

Per variant (tiny-pi05 with profile pi05_droid, tiny-pi0 with pi0_droid) one deterministic synthetic checkpoint
(synth formula, seed 0, sharp attention + outlier channels) and one observation: batch 2, a long and a short
prompt, sample 1's left-wrist camera masked, non-square images. Goldens live in sets, one directory per host they were made on (tests/golden/<set>/; `foreign-host/` is the set
made at 07f4a86 before hosts were recorded, kept unchanged as the one real cross-host difference on record); each
set is checked under pibridge/parity/golden_rules.py. Files in a set:
  inputs-<variant>.safetensors   the model inputs after OpenPI's preprocessing (images as the resized uint8
                                 (B, C, 224, 224, 3); float = uint8 / 255 * 2 - 1, openpi model.py:115-118),
                                 masks, normalized state, tokens, the noise (B, A, 32); metadata: the observation
                                 fingerprint and prompts. Enough to rerun either stack without jax or PIL.
  (the raw observation is not stored, to keep the goldens small: golden_observation(spec) rebuilds it, and its
  fingerprint is recorded and checked.)
  <variant>-<precision>.safetensors  the trace (parity/trace.py) without `input/image` (it is in the inputs
                                 file); metadata: OpenPI commit, OpenPI-vs-ours actions max-abs, checkpoint and
                                 observation fingerprints, synth arguments, jax / flax versions, and the host
                                 (parity/hostinfo.py; a set made before that carries a host.json instead).
Axis legend: B batch, C cameras, L tokens, A action horizon.
Numpy + safetensors only at import time (the OpenPI scratch venv imports this module).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pibridge.errors import PibridgeError
from pibridge.parity.tensorfile import load_tensors, save_tensors

OPENPI_COMMIT = "15a9616a00943ada6c20a0f158e3adb39df2ccac"
NUM_STEPS = 5  # Euler steps recorded in the goldens (OpenPI's default is 10; 5 keeps the test gate short)
DROPPED_STAGES = ("input/image",)  # stored once per variant in inputs-<variant>.safetensors
FP32_LIMIT = 1e-5  # OpenPI vs ours, float32 actions max-abs (issue 5 item 6)
PROMPTS = ("pick up the red block on the left and put it in the gray bin next to the robot", "fold the towel")
MASKED = {1: ["left_wrist_0_rgb"]}
IMAGE_SIZES = {"base_0_rgb": (240, 320), "left_wrist_0_rgb": (120, 160)}  # right wrist: empty in *_droid


@dataclass(frozen=True)
class GoldenSpec:
    variant: str
    profile: str
    seed: int = 0
    sharp_attention: bool = True
    outliers: bool = True
    asset_id: str = "droid"

    def trace_name(self, precision: str) -> str:
        return f"{self.variant}-{precision}.safetensors"

    @property
    def inputs_name(self) -> str:
        return f"inputs-{self.variant}.safetensors"


SPECS = (GoldenSpec("tiny-pi05", "pi05_droid"), GoldenSpec("tiny-pi0", "pi0_droid"))
PRECISIONS = ("float32", "bf16")


FOREIGN_SET = "foreign-host"
HOST_FILE = "host.json"  # a set's host when its traces predate host recording


def golden_sets(root: Path) -> list[Path]:
    """The set directories under `root` that hold golden traces, sorted."""
    return sorted(d for d in root.iterdir() if d.is_dir() and any(d.glob("*-float32.safetensors")))


def set_name_for(host: dict) -> str:
    """A set name from the host: cpu vendor + widest vector ISA, e.g. amd-epyc-avx512."""
    import re

    isa = next((f for f in ("amx_tile", "avx512f", "avx2", "avx", "sse4_2") if f in host.get("isa", [])), "generic")
    cpu = re.sub(r"[^a-z0-9]+", "-", host.get("cpu", "cpu").lower()).strip("-")
    cpu = "-".join(w for w in cpu.split("-") if w not in {"r", "tm", "cpu", "processor"})[:40].strip("-")
    return f"{cpu}-{isa.replace('_tile', '').replace('avx512f', 'avx512')}"


def set_host(set_dir: Path, trace) -> dict:
    """The host a golden was made on: its own metadata, else the set's host.json."""
    import json

    if trace.meta.get("host"):
        return trace.meta["host"]
    f = set_dir / HOST_FILE
    return json.loads(f.read_text()) if f.is_file() else {}


def case_name(spec: "GoldenSpec", precision: str) -> str:
    return spec.trace_name(precision).removesuffix(".safetensors")


def spec_for(variant: str) -> GoldenSpec:
    for s in SPECS:
        if s.variant == variant:
            return s
    raise PibridgeError(f"no golden for variant {variant!r}", f"one of {[s.variant for s in SPECS]}",
                        "pick a variant that has goldens")


def write_checkpoint(spec: GoldenSpec, out: Path):
    """The golden's checkpoint, written with the version-stable synth formula (returns the SynthResult)."""
    from pibridge.convert.synth import write_synthetic_checkpoint

    return write_synthetic_checkpoint(out, variant=spec.variant, seed=spec.seed, profile=spec.profile,
                                      asset_id=spec.asset_id, sharp_attention=spec.sharp_attention,
                                      outliers=spec.outliers)


def golden_observation(spec: GoldenSpec):
    from pibridge.convert.profile import load_profile
    from pibridge.parity.observation import synthetic_observation

    prof = load_profile(spec.profile)
    return synthetic_observation(batch=2, horizon=prof.action_horizon, state_dim=prof.state_dim,
                                 prompts=list(PROMPTS), seed=spec.seed, image_sizes=IMAGE_SIZES, masked=MASKED)


def golden_inputs(spec: GoldenSpec, obs, ckpt: Path, tokenizer_path: Path):
    """OpenPI's host preprocessing (parity/openpi_preprocess.py) of the observation -> Preprocessed."""
    from pibridge.convert.profile import load_profile
    from pibridge.convert.reader import open_checkpoint
    from pibridge.parity.openpi_preprocess import observation_dict, preprocess_detailed
    from pibridge.parity.tokenizer import load_tokenizer

    stats = open_checkpoint(ckpt).norm_stats(spec.asset_id)
    return preprocess_detailed(observation_dict(obs), load_profile(spec.profile), stats, load_tokenizer(tokenizer_path))


INPUTS_KEY = "pibridge_golden_inputs"


def save_inputs(path: Path, pre, noise: np.ndarray, meta: dict) -> None:
    x = pre.inputs
    tensors = {"images_uint8": np.asarray(pre.images_uint8, np.uint8),
               "image_mask": x.image_mask.astype(np.uint8), "state": x.state, "tokens": x.tokens,
               "token_mask": x.token_mask.astype(np.uint8), "noise": np.asarray(noise, np.float32)}
    save_tensors(path, tensors, INPUTS_KEY, meta)


def load_inputs(path: Path):
    """-> (ModelInputs, noise (B, A, 32), metadata)."""
    from pibridge.parity.inputs import ModelInputs

    t, meta = load_tensors(path, INPUTS_KEY, what="golden inputs", made_by="tools/make_goldens.py",
                           fix="run `make goldens OPENPI_SRC=...`")
    images = t["images_uint8"].astype(np.float32) / 255.0 * 2.0 - 1.0  # openpi model.py:115-118 (uint8 -> [-1, 1])
    inputs = ModelInputs(images, t["image_mask"].astype(bool), t["state"], t["tokens"], t["token_mask"].astype(bool))
    return inputs, t["noise"], meta


def trace_meta(spec: GoldenSpec, precision: str, *, synth, obs_fingerprint: str, openpi_commit: str,
               openpi_max_abs: float, openpi_cosine: float) -> dict:
    import flax
    import jax

    from pibridge.parity.hostinfo import host_info

    return {"stack": "jax", "precision": precision, "golden": True, "num_steps": NUM_STEPS,
            "openpi_commit": openpi_commit, "openpi_actions_max_abs": openpi_max_abs,
            "openpi_actions_cosine": openpi_cosine, "checkpoint_fingerprint": synth.fingerprint,
            "observation_fingerprint": obs_fingerprint, "synth": asdict(spec), "profile": spec.profile,
            "dropped_stages": list(DROPPED_STAGES), "versions": {"jax": jax.__version__, "flax": flax.__version__},
            "host": host_info()}
