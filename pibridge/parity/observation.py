"""Observation files: what both stacks read, so they see the same inputs and the same noise.

One safetensors file: `image/<slot>` uint8 (B, H, W, 3) per OpenPI camera slot (any size, sizes may differ
between slots), `image_mask` bool as uint8 (B, ncam) in slot order, `state` float32 (B, native state dim, not
normalized), `noise` float32 (B, horizon, 32), optional `tokens` int32 (B, L) + `token_mask` uint8 (B, L).
`__metadata__["pibridge_observation"]`: JSON with slots, prompts (one per sample; null: the client sent none, so
the default-prompt step / the profile's default fills it), seed, format version.
Axis legend: B batch, H/W image height/width, L tokens.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pibridge.errors import PibridgeError
from pibridge.parity.tensorfile import load_tensors, save_tensors
from pibridge.vocab import MODEL_ACTION_DIM, OPENPI_SLOTS

OBS_FORMAT = 1
OBS_KEY = "pibridge_observation"
IMAGE_SIDE = 224  # every camera is resized with padding to 224x224 (openpi models/model.py:47 IMAGE_RESOLUTION)


@dataclass(frozen=True)
class Observation:
    images: dict[str, np.ndarray]  # slot -> uint8 (B, H, W, 3), OpenPI slot order
    image_mask: np.ndarray  # bool (B, ncam)
    state: np.ndarray  # float32 (B, S) raw, native dims
    prompts: tuple[str | None, ...]  # one per sample; None: no prompt sent (InjectDefaultPrompt fills it)
    noise: np.ndarray  # float32 (B, horizon, 32)
    seed: int
    tokens: np.ndarray | None = None  # int32 (B, L): given token ids bypass the tokenizer
    token_mask: np.ndarray | None = None  # bool (B, L)

    @property
    def batch(self) -> int:
        return self.state.shape[0]

    @property
    def slots(self) -> tuple[str, ...]:
        return tuple(self.images)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for name, arr in sorted(_tensors(self).items()):
            h.update(name.encode() + str(arr.shape).encode() + np.ascontiguousarray(arr).tobytes())
        h.update(json.dumps(list(self.prompts)).encode())
        return h.hexdigest()[:16]


def _tensors(obs: Observation) -> dict[str, np.ndarray]:
    t = {f"image/{slot}": np.ascontiguousarray(img, np.uint8) for slot, img in obs.images.items()}
    t["image_mask"] = obs.image_mask.astype(np.uint8)
    t["state"] = np.ascontiguousarray(obs.state, np.float32)
    t["noise"] = np.ascontiguousarray(obs.noise, np.float32)
    if obs.tokens is not None:
        t["tokens"] = np.ascontiguousarray(obs.tokens, np.int32)
        t["token_mask"] = np.ascontiguousarray(obs.token_mask, np.uint8)
    return t


def validate(obs: Observation) -> None:
    B = obs.state.shape[0]
    problems = []
    for slot, img in obs.images.items():
        if slot not in OPENPI_SLOTS:
            problems.append(f"unknown camera slot {slot!r}")
        elif img.dtype != np.uint8 or img.ndim != 4 or img.shape[0] != B or img.shape[-1] != 3:
            problems.append(f"image {slot}: {img.dtype} {img.shape}, expected uint8 (B={B}, H, W, 3)")
        elif not _resizable(*img.shape[1:3]):
            problems.append(f"image {slot}: {img.shape[1]}x{img.shape[2]} pixels, which resize-with-pad to "
                            f"{IMAGE_SIDE}x{IMAGE_SIDE} turns into an empty image (OpenPI's resize fails on it too)")
    if obs.image_mask.shape != (B, len(obs.images)):
        problems.append(f"image_mask shape {obs.image_mask.shape}, expected ({B}, {len(obs.images)})")
    if obs.noise.ndim != 3 or obs.noise.shape[0] != B or obs.noise.shape[2] != MODEL_ACTION_DIM:
        problems.append(f"noise shape {obs.noise.shape}, expected ({B}, horizon, {MODEL_ACTION_DIM})")
    if len(obs.prompts) != B:
        problems.append(f"{len(obs.prompts)} prompts for batch {B}")
    if any(p is not None and not isinstance(p, str) for p in obs.prompts):
        problems.append(f"prompts {list(obs.prompts)}: each a string or null")
    if obs.tokens is not None and (obs.token_mask is None or obs.tokens.shape != obs.token_mask.shape
                                   or obs.tokens.shape[0] != B):
        problems.append("tokens and token_mask must both be (B, L)")
    if problems:
        raise PibridgeError("invalid observation: " + "; ".join(problems),
                            "images uint8 (B,H,W,3) per OpenPI slot, masks (B,ncam), state (B,S), noise (B,horizon,32)",
                            "write it with `pibridge parity obs` or fix the producer")


def _resizable(height: int, width: int) -> bool:
    """Both sides stay >= 1 pixel in the aspect-keeping resize to IMAGE_SIDE (openpi-client image_tools.py:48-50)."""
    if height < 1 or width < 1:
        return False
    ratio = max(width / IMAGE_SIDE, height / IMAGE_SIDE)
    return int(height / ratio) >= 1 and int(width / ratio) >= 1


def save_observation(path: Path, obs: Observation) -> None:
    validate(obs)
    meta = {"format": OBS_FORMAT, "slots": list(obs.images), "prompts": list(obs.prompts), "seed": obs.seed}
    save_tensors(path, _tensors(obs), OBS_KEY, meta)


def load_observation(path: Path) -> Observation:
    fix = "write it again with `pibridge parity obs`"
    t, meta = load_tensors(path, OBS_KEY, what="observation file", made_by="`pibridge parity obs`", fix=fix)
    try:
        obs = Observation(
            images={s: t[f"image/{s}"] for s in meta["slots"]}, image_mask=t["image_mask"].astype(bool),
            state=t["state"], prompts=tuple(meta["prompts"]), noise=t["noise"], seed=int(meta["seed"]),
            tokens=t.get("tokens"), token_mask=None if "token_mask" not in t else t["token_mask"].astype(bool))
    except (KeyError, ValueError, TypeError) as err:
        raise PibridgeError(f"observation file {path} is unreadable or corrupted ({type(err).__name__}: {err})",
                            "a safetensors observation written by `pibridge parity obs`", fix) from None
    validate(obs)
    return obs


# --- deterministic synthetic observations -------------------------------------------------------------------

def synthetic_image(height: int, width: int, seed: int) -> np.ndarray:
    """A natural-looking uint8 (H, W, 3) scene: lit floor and wall, a few objects, sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    horizon = height * rng.uniform(0.35, 0.55)
    wall = np.array(rng.uniform(150, 220, 3), np.float32) * (1 - 0.25 * y / height)[..., None]
    floor = np.array(rng.uniform(60, 140, 3), np.float32) * (0.7 + 0.3 * y / height)[..., None]
    img = np.where((y < horizon)[..., None], wall, floor)
    for _ in range(int(rng.integers(3, 6))):
        cy, cx = rng.uniform(0.3, 0.95) * height, rng.uniform(0.05, 0.95) * width
        ry, rx = rng.uniform(0.04, 0.15) * height, rng.uniform(0.04, 0.15) * width
        inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0 if rng.uniform() < 0.5 else \
            (np.abs(y - cy) <= ry) & (np.abs(x - cx) <= rx)
        shade = 0.75 + 0.25 * (x - cx) / max(rx, 1.0)
        img = np.where(inside[..., None], rng.uniform(20, 250, 3).astype(np.float32) * np.clip(shade, 0.5, 1.2)[..., None], img)
    img = img + rng.normal(0, 3.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def synthetic_observation(*, batch: int, horizon: int, state_dim: int, prompts: list[str] | None = None,
                          seed: int = 0, image_sizes: dict[str, tuple[int, int]] | None = None,
                          masked: dict[int, list[str]] | None = None) -> Observation:
    """Deterministic observation: non-square camera images (default 480x640 base, 240x320 wrists)."""
    sizes = image_sizes or {"base_0_rgb": (480, 640), "left_wrist_0_rgb": (240, 320), "right_wrist_0_rgb": (240, 320)}
    masked = masked or {}
    images, mask = {}, np.ones((batch, len(sizes)), bool)
    for c, (slot, (h, w)) in enumerate(sizes.items()):
        frames = []
        for b in range(batch):
            if slot in masked.get(b, []):
                frames.append(np.zeros((h, w, 3), np.uint8))  # OpenPI fills an absent camera with zeros, mask False
                mask[b, c] = False
            else:
                frames.append(synthetic_image(h, w, seed * 1000 + b * 10 + c))
        images[slot] = np.stack(frames)
    rng = np.random.default_rng(seed)
    state = rng.uniform(-1.5, 1.5, (batch, state_dim)).astype(np.float32)
    noise = rng.standard_normal((batch, horizon, MODEL_ACTION_DIM)).astype(np.float32)
    default = ["pick up the red block and put it in the bin", "fold_the towel\n"]
    prompts = prompts or [default[b % 2] for b in range(batch)]
    return Observation(images, mask, state, tuple(prompts), noise, seed)
