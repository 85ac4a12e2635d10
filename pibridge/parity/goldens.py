"""Goldens: JAX-stack traces of tiny variants, validated against OpenPI's own Pi0 when made
(tools/make_goldens.py, `make goldens OPENPI_SRC=...`), checked by tests/test_goldens.py.

Per variant (tiny-pi05 with profile pi05_droid, tiny-pi0 with pi0_droid) one deterministic synthetic checkpoint
(synth formula, seed 0, sharp attention + outlier channels) and one observation: batch 2, a long and a short
prompt, sample 1's left-wrist camera masked, non-square images. LORA_SPECS (issue 17): tiny-pi05 with LoRA on both
experts (`synth --lora`, rank 4 alpha 8, rsLoRA on PaliGemma: scalings 4 and 2), the JAX stack running it
unmerged; its observation and norm stats are tiny-pi05's, so it shares inputs-tiny-pi05 (found in any set), and to
keep tests/golden/ under 20 MB its traces hold the suffix stages only (GoldenSpec.stages: LoRA on PaliGemma
reaches them through the KV cache, so a LoRA defect shows at expert/step00/block00 at the latest). Goldens live in sets, one directory per host they were made on (tests/golden/<set>/; `foreign-host/` is the set
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
    lora: tuple | None = None  # (experts, rank, alpha, rslora experts) as `synth --lora` takes them
    stages: tuple[str, ...] | None = None  # stage-name prefixes the trace keeps (None: all)

    @property
    def name(self) -> str:
        return self.variant + ("-lora" if self.lora else "")

    def trace_name(self, precision: str) -> str:
        return f"{self.name}-{precision}.safetensors"

    def keeps(self, stage: str) -> bool:
        return stage not in DROPPED_STAGES and (self.stages is None or stage.startswith(self.stages))

    def lora_request(self):
        """The synth LoraRequest (None without LoRA)."""
        if not self.lora:
            return None
        from pibridge.convert.synth import LoraRequest

        experts, rank, alpha, rslora = self.lora
        return LoraRequest(tuple(experts), dict.fromkeys(experts, rank), dict.fromkeys(experts, alpha),
                           {e: e in rslora for e in experts})

    @property
    def convert_flags(self) -> dict:
        """ConvertRequest's lora_alpha / lora_rslora for this spec's checkpoint (alpha and rsLoRA are not in it)."""
        if not self.lora:
            return {}
        from pibridge.convert.lora import EXPERTS

        experts, _, alpha, rslora = self.lora
        rs = "both" if set(rslora) == {0, 1} else ",".join(EXPERTS[e] for e in rslora) or None
        return {"lora_alpha": f"{alpha:g}", "lora_rslora": rs}

    @property
    def inputs_name(self) -> str:
        return f"inputs-{self.variant}.safetensors"


SPECS = (GoldenSpec("tiny-pi05", "pi05_droid"), GoldenSpec("tiny-pi0", "pi0_droid"))
SUFFIX_STAGES = ("input/", "prefix/mask", "suffix/", "expert/", "velocity/", "actions")
LORA_SPECS = (GoldenSpec("tiny-pi05", "pi05_droid", lora=((0, 1), 4, 8.0, (0,)), stages=SUFFIX_STAGES),)
ALL_SPECS = SPECS + LORA_SPECS
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


def set_cases(set_dir: Path) -> list[tuple["GoldenSpec", str]]:
    """The (spec, precision) cases a set holds (a set may hold some specs only, e.g. the LoRA ones)."""
    return [(s, p) for s in ALL_SPECS for p in PRECISIONS if (set_dir / s.trace_name(p)).is_file()]


def inputs_path(sets: list[Path], spec: "GoldenSpec") -> Path:
    """The spec's inputs file: in the first set holding it (a LoRA spec shares its base variant's)."""
    for d in sets:
        if (d / spec.inputs_name).is_file():
            return d / spec.inputs_name
    raise PibridgeError(f"no golden set holds {spec.inputs_name}", f"it in one of {[d.name for d in sets]}",
                        "run `make goldens OPENPI_SRC=...` for the base variant first")


def spec_for(variant: str) -> GoldenSpec:
    for s in SPECS:
        if s.variant == variant:
            return s
    raise PibridgeError(f"no golden for variant {variant!r}", f"one of {[s.variant for s in SPECS]}",
                        "pick a variant that has goldens")


def write_checkpoint(spec: GoldenSpec, out: Path):
    """The golden's checkpoint, written with the version-stable synth formula (returns the SynthResult)."""
    from pibridge.convert.synth import write_synthetic_checkpoint

    lora = spec.lora_request()
    return write_synthetic_checkpoint(out, variant=spec.variant, seed=spec.seed, profile=spec.profile,
                                      asset_id=spec.asset_id, sharp_attention=spec.sharp_attention,
                                      outliers=spec.outliers, lora=lora, layout="training" if lora else "released")


def stack_params(spec: GoldenSpec, ckpt: Path):
    """What the JAX stack runs for a golden: the tree read from the checkpoint; for a LoRA spec the opened checkpoint,
    whose synth record carries alpha / rsLoRA (parity/stacks/jax/params.py lora_settings_for)."""
    from pibridge.convert.reader import open_checkpoint

    ck = open_checkpoint(ckpt)
    return ck if spec.lora else ck.read_tree()


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
    from pibridge.tokenizer import load_tokenizer

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
