"""Shared set-up for the parity-harness tests: a tiny synthetic checkpoint, its LeRobot conversion, an observation."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

TOKENIZER = Path(__file__).parent / "data" / "test_spm.model"
PROFILES = {"tiny-pi05": "pi05_droid", "tiny-pi0": "pi0_droid"}


def make_policy(root: Path, variant: str) -> tuple[Path, Path, Path]:
    """-> (ckpt, out, obs): synth + convert (float32, no folds) + `parity obs` (batch 2, wrist masked in sample 1)."""
    from pibridge.convert.convert import ConvertRequest, convert
    from pibridge.convert.synth import write_synthetic_checkpoint
    from pibridge.parity.capture import obs_command

    profile = PROFILES[variant]
    ck, out, obs = root / "ck", root / "out", root / "obs.safetensors"
    with contextlib.redirect_stdout(io.StringIO()):
        write_synthetic_checkpoint(ck, variant=variant, profile=profile, asset_id="droid", progress=False)
        convert(ConvertRequest(ckpt=ck, out=out, profile=profile, camera_map="base_0_rgb=top,left_wrist_0_rgb=wrist",
                               tokenizer=TOKENIZER, allow_tiny=True))
        obs_command(obs, profile=profile, masked={1: ["left_wrist_0_rgb"]})
    return ck, out, obs
