"""The request / dispatch layer the stacks call down into (numpy only): what a capture is asked to do
(CaptureRequest), the ModelInputs file a capture shares with another (--save-inputs / --shared-inputs), and the
helpers every stack's capture uses to describe its run (package versions, the preprocessing record, the profile).

A stack's capture function takes a CaptureRequest and returns (stages, meta); pibridge.parity.capture runs it (the
registry pibridge.parity.stacks names it by string) and writes the trace. Stacks import this module, never
pibridge.parity.capture.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pibridge.convert.profile import Profile, load_profile, profile_from_dict
from pibridge.errors import PibridgeError
from pibridge.parity.inputs import ModelInputs
from pibridge.parity.tensorfile import load_tensors, save_tensors

PRECISIONS = ("float32", "bf16")
RESIZES = ("openpi", "lerobot")
INPUTS_KEY = "pibridge_model_inputs"
# the keys pibridge.parity.capture adds to every trace's meta (a stack run in another process strips them)
CAPTURE_META_KEYS = ("format", "stack", "precision", "steps", "fixes_enabled", "shared_inputs", "python")


@dataclass(frozen=True)
class CaptureRequest:
    stack: str  # a name in the registry (pibridge.parity.stacks.STACKS)
    obs: Path
    out: Path
    ckpt: Path | None = None  # OpenPI checkpoint (jax)
    lerobot: Path | None = None  # converted OUT (torch, lerobot)
    precision: str = "float32"
    fixes: bool = True  # torch: apply the runtime fixes of configs/fixes.json
    shared_inputs: Path | None = None  # consume these ModelInputs instead of preprocessing
    save_inputs: Path | None = None  # write the ModelInputs this capture fed its model
    resize: str = "lerobot"  # torch: which resize its LeRobot preprocessing uses
    steps: int = 10
    tokenizer: Path | None = None  # SentencePiece model (torch default: OUT/tokenizer/tokenizer.model)
    profile: str | None = None  # jax: profile name, or an OUT dir whose pibridge.json records the profile


def package_versions(*names: str) -> dict[str, str]:
    out = {}
    for n in ("pibridge", "numpy", *names):
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out


def save_model_inputs(path: Path, inputs: ModelInputs) -> None:
    tensors = {"images": inputs.images, "image_mask": inputs.image_mask.astype(np.uint8), "state": inputs.state,
               "tokens": inputs.tokens, "token_mask": inputs.token_mask.astype(np.uint8)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_tensors(path, tensors, INPUTS_KEY, {"format": 1})


def load_model_inputs(path: Path) -> ModelInputs:
    t, _ = load_tensors(path, INPUTS_KEY, what="shared inputs file", made_by="`parity capture --save-inputs`",
                        fix="capture the jax stack again with --save-inputs")
    return ModelInputs(t["images"], t["image_mask"].astype(bool), t["state"], t["tokens"], t["token_mask"].astype(bool))


def state_bins_from_text(text: str) -> list[int] | None:
    """The discretised state written in a pi05 prompt ("...State: 1 2 3;\\nAction: "), or None."""
    if "State: " not in text:
        return None
    return [int(v) for v in text.split("State: ", 1)[1].split(";", 1)[0].split()]


def preprocessing_record(texts: tuple[str, ...], inputs: ModelInputs) -> dict:
    """What the preprocessing-parity section compares: prompt texts, real token ids, discretised state bins."""
    return {"prompt_texts": list(texts),
            "tokens": [row[m].tolist() for row, m in zip(inputs.tokens, inputs.token_mask)],
            "state_bins": [state_bins_from_text(t) for t in texts] if texts else []}


def resolve_profile(spec: str | None, synth: dict | None) -> Profile:
    """A profile name, or an OUT directory (or its pibridge.json) whose recorded profile (with overrides) is used;
    without one, the profile a synthetic checkpoint was made for."""
    if spec is None:
        if synth and synth.get("profile"):
            return load_profile(synth["profile"])
        raise PibridgeError("no profile for the jax capture", "--profile NAME, or --profile OUT (a converted dir)",
                            "pass the profile the policy was trained with, e.g. --profile pi05_droid")
    path = Path(spec)
    if path.is_dir() or path.name == "pibridge.json":
        from pibridge.provenance import load_provenance

        return profile_from_dict(load_provenance(path if path.is_dir() else path.parent)["profile"])
    return load_profile(spec)
