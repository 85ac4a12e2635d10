"""OpenPI's host-side inference preprocessing (and action postprocessing), in numpy, bit for bit.

Upstream: Physical-Intelligence/openpi at 15a9616a00943ada6c20a0f158e3adb39df2ccac. The pipeline of
`policy_config.create_trained_policy` (policies/policy_config.py:75-93) for one observation:
robot inputs (policies/*_policy.py) -> Normalize (transforms.py:114-145) -> InjectDefaultPrompt ->
ResizeImages (openpi-client image_tools.py:15-58) -> TokenizePrompt (models/tokenizer.py:22-48) ->
PadStatesAndActions (transforms.py:327-337) -> batch + jnp.asarray (policy.py:74: float64 -> float32,
int64 -> int32) -> Observation.from_dict (model.py:115-118: uint8 -> x/255*2-1 in float32).
Outputs: Unnormalize (transforms.py:148-181) -> AbsoluteActions (:225-244) -> robot outputs.

Norm statistics are float64, as OpenPI parses norm_stats.json (shared/normalize.py:9-15), so normalized
values are computed in float64 and rounded to float32 once, where upstream batches them.

Axis legend: B batch, H/W image height/width (3 channels last), N image slots (3), S native state dim,
A native action dim, D model action dim (32), T action horizon, L max_token_len.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pibridge.convert import normstats
from pibridge.convert.normstats import NormStats
from pibridge.convert.profile import Profile
from pibridge.errors import PibridgeError
from pibridge.hostx import (IMAGE_SIZE, absolute_actions, aloha_actions_from_pi, aloha_state_to_pi, clean_prompt,  # noqa: F401
                            image_to_uint8, inject_default_prompt, resize_with_pad)  # images: one home, hostx
from pibridge.parity.inputs import ModelInputs
from pibridge.tokenizer import PAD_ID, SentencePieceTokenizer
from pibridge.vocab import MODEL_ACTION_DIM, OPENPI_SLOTS

STATE_BINS = 256  # models/tokenizer.py:26
_EPS = 1e-6  # transforms.py:139, :145, :173, :180-181

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- norm stats
def load_norm_stats(path: str | Path) -> dict[str, NormStats]:
    """OpenPI's norm_stats.json, or the assets/<asset_id> directory holding it (pibridge.convert.normstats.load)."""
    path = Path(path)
    path = path / "norm_stats.json" if path.is_dir() else path
    if not path.is_file():
        raise PibridgeError(f"norm stats {path} not found", expected="<ckpt>/assets/<asset_id>/norm_stats.json",
                            fix="pass the checkpoint's assets/<asset_id> directory (or --asset-id)")
    return normstats.load(path)


def _stats_for(norm_stats: Mapping[str, NormStats], key: str, norm: str, dim: int) -> NormStats:
    if key not in norm_stats:
        raise PibridgeError(f"norm stats have no {key!r} entry (keys: {', '.join(norm_stats)})",
                            expected=f"a {key!r} entry", fix="use the checkpoint's own norm_stats.json")
    st = norm_stats[key]
    if norm == "quantile" and (st.q01 is None or st.q99 is None):  # transforms.py:142-143 asserts
        raise PibridgeError(f"norm stats {key!r} have no q01/q99", expected="quantiles for a pi05 (quantile) policy",
                            fix="recompute the norm stats with OpenPI's compute_norm_stats")
    if st.mean.shape[-1] < dim:
        raise PibridgeError(f"norm stats {key!r} have {st.mean.shape[-1]} dims, the data {dim}",
                            expected=f"at least {dim} dims", fix="check --state-dim / --action-dim and the asset id")
    return st


def normalize(x: np.ndarray, stats: NormStats, norm: str) -> np.ndarray:
    """transforms.py:137-145; stats sliced to x's last dim; quantile output is NOT clipped."""
    d = x.shape[-1]
    if norm == "zscore":
        return (x - stats.mean[..., :d]) / (stats.std[..., :d] + _EPS)
    q01, q99 = stats.q01[..., :d], stats.q99[..., :d]
    return (x - q01) / (q99 - q01 + _EPS) * 2.0 - 1.0


def unnormalize(x: np.ndarray, stats: NormStats, norm: str) -> np.ndarray:
    """transforms.py:170-181. z-score: stats padded to x's dim with mean 0 / std 1 (so padded dims are scaled by
    1+1e-6); quantile: only the first len(q01) dims are mapped back, the rest pass through."""
    d = x.shape[-1]
    if norm == "zscore":
        mean, std = pad_to_dim(stats.mean, d, 0.0), pad_to_dim(stats.std, d, 1.0)
        return x * (std + _EPS) + mean
    q01, q99 = stats.q01, stats.q99
    k = q01.shape[-1]
    head = (x[..., :k] + 1.0) / 2.0 * (q99 - q01 + _EPS) + q01
    return np.concatenate([head, x[..., k:]], axis=-1) if k < d else head


def pad_to_dim(x: np.ndarray, dim: int, value: float = 0.0) -> np.ndarray:
    """Pad the last axis to dim with value (transforms.py:423-430); longer inputs are returned unchanged."""
    if x.shape[-1] >= dim:
        return x
    width = [(0, 0)] * (x.ndim - 1) + [(0, dim - x.shape[-1])]
    return np.pad(x, width, constant_values=value)


# --------------------------------------------------------------------------------------------- images
def image_to_float(img: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1], op by op in float32 as model.py:117-118: x / 255 * 2 - 1, a true division
    as OpenPI's pinned jax 0.5.3 computes it eagerly (jax 0.10 divides by the reciprocal instead: up to 1 ulp
    off on 111 of the 256 values; tools/check_preprocess_vs_openpi.py shows both)."""
    return img.astype(np.float32) / np.float32(255.0) * np.float32(2.0) - np.float32(1.0)


# --------------------------------------------------------------------------------------------- prompt
def discretize_state(state: np.ndarray) -> np.ndarray:
    """256 bins over [-1, 1) (models/tokenizer.py:26): digitize(x, linspace(-1, 1, 257)[:-1]) - 1.
    x < -1 -> -1; -1 -> 0; 0 -> 128; x >= 0.9921875 (1 - 1/128) -> 255."""
    return np.digitize(state, bins=np.linspace(-1, 1, STATE_BINS + 1)[:-1]) - 1


def prompt_text(prompt: str, state: np.ndarray | None) -> str:
    """The text OpenPI encodes. With a state (pi05 discrete_state_input): 'Task: ..., State: b0 b1 ...;\\nAction: '
    (models/tokenizer.py:28); without: the cleaned prompt (the "\\n" is encoded separately, :33)."""
    cleaned = clean_prompt(prompt)
    if state is None:
        return cleaned
    bins = " ".join(str(int(b)) for b in discretize_state(state))
    return f"Task: {cleaned}, State: {bins};\nAction: "


def tokenize_prompt(prompt: str, state: np.ndarray | None, tokenizer: SentencePieceTokenizer,
                    max_len: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """models/tokenizer.py:22-48 -> (tokens (L,) int64, mask (L,) bool, truncated). pi05 format: one encode with
    BOS; pi0 format: encode(cleaned, BOS) + encode("\\n")."""
    text = prompt_text(prompt, state)
    ids = tokenizer.encode(text, add_bos=True)
    if state is None:
        ids = ids + tokenizer.encode("\n")
    return pad_tokens(ids, max_len)


def pad_tokens(ids: Sequence[int], max_len: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Pad with id 0 / mask False to max_len, or truncate to max_len with a warning (models/tokenizer.py:34-46)."""
    ids = [int(i) for i in ids]
    n = len(ids)
    if n > max_len:
        log.warning("Token length (%d) exceeds max length (%d), truncating.", n, max_len)
    tokens = ids[:max_len] + [PAD_ID] * max(0, max_len - n)
    mask = [True] * min(n, max_len) + [False] * max(0, max_len - n)
    return np.asarray(tokens, dtype=np.int64), np.asarray(mask, dtype=bool), n > max_len


# ------------------------------------------------------------------------------------ whole observation
@dataclass(frozen=True, eq=False)
class Preprocessed:
    """preprocess_detailed's result: the model inputs and what produced them."""

    inputs: ModelInputs  # what OpenPI's model receives (Observation fields), batched, in OPENPI_SLOTS order
    images_uint8: np.ndarray  # (B, N, 224, 224, 3) uint8: resized, before the [-1, 1] mapping
    prompt_texts: tuple[str, ...]  # the text each sample's tokens encode (empty when token ids were given)
    truncated: tuple[bool, ...]  # per sample: the prompt had more than max_token_len tokens


def preprocess(obs: Mapping[str, Any], profile: Profile, norm_stats: Mapping[str, NormStats] | None,
               tokenizer: SentencePieceTokenizer | None = None) -> ModelInputs:
    """One raw observation -> model inputs (B, ...) as OpenPI's Policy.infer prepares them; see preprocess_detailed."""
    return preprocess_detailed(obs, profile, norm_stats, tokenizer).inputs


def preprocess_detailed(obs: Mapping[str, Any], profile: Profile, norm_stats: Mapping[str, NormStats] | None,
                        tokenizer: SentencePieceTokenizer | None = None) -> Preprocessed:
    """One raw observation -> model inputs, as OpenPI's Policy.infer prepares them.

    obs: "state" (S,) or (B, S); "images" {slot: uint8/float (H, W, 3) or (B, H, W, 3), or None / absent};
    optional "image_mask" {slot: bool or (B,) bool}; "prompt" str or B strings (else the profile's default
    prompt), or token ids instead of prompt + tokenizer: "token_ids" (one list, or B lists), or "tokens"
    (B, L) with "token_mask". An Observation file's object converts with observation_dict.
    norm_stats: {"state": NormStats, ...}; None skips normalization (OpenPI's Normalize(None) is a no-op).
    """
    state = _batched_state(obs, profile)
    b = state.shape[0]
    images, image_mask = _images(obs, profile, b)
    if norm_stats is not None:
        state = normalize(state, _stats_for(norm_stats, "state", profile.norm, state.shape[-1]), profile.norm)
    tokens, token_mask, texts, truncated = _tokens(obs, profile, state, tokenizer, b)
    inputs = ModelInputs(
        images=image_to_float(images), image_mask=image_mask,
        state=pad_to_dim(state, MODEL_ACTION_DIM).astype(np.float32),  # policy.py:74 jnp.asarray: f64 -> f32
        tokens=tokens.astype(np.int32), token_mask=token_mask,  # policy.py:74: int64 -> int32
    )
    return Preprocessed(inputs=inputs, images_uint8=images, prompt_texts=texts, truncated=truncated)


def _batched_state(obs: Mapping[str, Any], profile: Profile) -> np.ndarray:
    """(S,) or (B, S) -> (B, S) float64 (exact for float32 input), in pi's space for adapt_to_pi profiles."""
    if "state" not in obs:
        raise PibridgeError("observation has no 'state'", expected="a (S,) or (B, S) state array",
                            fix="add the robot state to the observation")
    state = np.asarray(obs["state"], dtype=np.float64)
    state = state[None] if state.ndim == 1 else state  # (S,) -> (1, S)
    dim = profile.require("state_dim")
    if state.ndim != 2 or state.shape[-1] != dim:
        raise PibridgeError(f"observation state has shape {state.shape}", expected=f"(B, {dim}) for {profile.name}",
                            fix="give the robot's native state, or --state-dim")
    return aloha_state_to_pi(state) if profile.require("adapt_to_pi") else state


def _images(obs: Mapping[str, Any], profile: Profile, b: int) -> tuple[np.ndarray, np.ndarray]:
    """-> images (B, N, 224, 224, 3) uint8 and image_mask (B, N) bool, in OPENPI_SLOTS order."""
    given, masks = obs.get("images") or {}, obs.get("image_mask") or {}
    unknown = sorted(set(given) - set(OPENPI_SLOTS)) + sorted(set(masks) - set(OPENPI_SLOTS))
    if unknown:
        raise PibridgeError(f"unknown image slot(s) {', '.join(unknown)}", expected=f"slots {', '.join(OPENPI_SLOTS)}",
                            fix="key observation images by OpenPI slot (map cameras with --camera-map)")
    cams, out, out_mask = profile.require("cameras"), [], []
    for cam in cams:
        img, mask = _slot_image(cam, given.get(cam.slot), masks.get(cam.slot), b)
        out.append(img)
        out_mask.append(mask)
    return np.stack(out, axis=1), np.stack(out_mask, axis=1)  # N x (B, 224, 224, 3) -> (B, N, 224, 224, 3)


def _slot_image(cam, img, mask, b: int) -> tuple[np.ndarray, np.ndarray]:
    """One slot -> (B, 224, 224, 3) uint8 and (B,) bool. An empty slot, or an absent camera whose mask is given
    as False, is black with mask False (np.zeros_like(base) resized stays 0: droid_policy.py:50-51)."""
    explicit = None if mask is None else np.broadcast_to(np.asarray(mask, dtype=bool), (b,))
    if cam.empty and (img is not None or (explicit is not None and explicit.any())):
        raise PibridgeError(f"slot {cam.slot} is empty in the profile but the observation fills it",
                            expected=f"no image and no True mask for {cam.slot}",
                            fix=f"drop it, or map a camera to it with --camera-map {cam.slot}=CAMERA")
    if img is None:
        if not cam.empty and (explicit is None or explicit.any()):
            raise PibridgeError(f"observation has no image for slot {cam.slot} (camera {cam.source})",
                                expected="an image, or image_mask False for a missing camera (aloha_policy.py:64-70)",
                                fix=f"add the {cam.source} image, or set image_mask[{cam.slot}] = False")
        return np.zeros((b, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), np.zeros(b, bool)
    img = image_to_uint8(img)
    img = img[None] if img.ndim == 3 else img  # (H, W, 3) -> (1, H, W, 3)
    if img.ndim != 4 or img.shape[0] != b or img.shape[-1] != 3:
        raise PibridgeError(f"slot {cam.slot} image has shape {img.shape}", expected=f"({b}, H, W, 3) uint8 (HWC)",
                            fix="give HWC images (transpose CHW ones) with the state's batch size")
    return resize_with_pad(img), np.ones(b, bool) if explicit is None else explicit.copy()


def _tokens(obs: Mapping[str, Any], profile: Profile, state: np.ndarray, tokenizer: SentencePieceTokenizer | None,
            b: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[bool, ...]]:
    """-> tokens (B, L) int64, token_mask (B, L), texts, truncated flags. The pi05 discrete state is the
    normalized, unpadded state (Normalize runs before TokenizePrompt, policy_config.py:81-82)."""
    ids = _given_token_ids(obs)
    if ids is not None:
        rows = [pad_tokens(r, profile.max_token_len) for r in _per_sample(ids, b, "token_ids")]
        texts: tuple[str, ...] = ()
    else:
        prompts = _per_sample(_prompts(obs, profile), b, "prompt")
        if tokenizer is None:
            raise PibridgeError("no tokenizer for the prompt", expected="a SentencePiece model or token_ids",
                                fix="pass --tokenizer PATH (PaliGemma's paligemma_tokenizer.model)")
        states = [state[i] if profile.discrete_state_input else None for i in range(b)]
        rows = [tokenize_prompt(p, s, tokenizer, profile.max_token_len) for p, s in zip(prompts, states)]
        texts = tuple(prompt_text(p, s) for p, s in zip(prompts, states))
    return (np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]), texts, tuple(r[2] for r in rows))


def _given_token_ids(obs: Mapping[str, Any]) -> list | None:
    """Token ids given instead of a prompt: "token_ids" (one list or B lists), or "tokens" (L,) / (B, L) with an
    optional "token_mask" selecting the real ids; they are re-padded / truncated to max_token_len."""
    if obs.get("token_ids") is not None:
        ids = obs["token_ids"]
        return [ids] if len(ids) == 0 or np.ndim(ids[0]) == 0 else list(ids)
    if obs.get("tokens") is None:
        return None
    tokens = np.atleast_2d(np.asarray(obs["tokens"]))  # (L,) -> (1, L)
    mask = obs.get("token_mask")
    mask = np.ones(tokens.shape, bool) if mask is None else np.atleast_2d(np.asarray(mask, bool))
    return [row[m].tolist() for row, m in zip(tokens, mask)]


def observation_dict(obs: Any) -> dict[str, Any]:
    """pibridge.parity.observation.Observation (attributes images, image_mask (B, ncam), state, prompts, tokens,
    token_mask) -> the dict preprocess takes. Mask columns follow the observation's slots, or all OPENPI_SLOTS."""
    slots = tuple(obs.images)
    mask = np.asarray(obs.image_mask, bool)
    cols = slots if mask.shape[1] == len(slots) else OPENPI_SLOTS
    out = {"state": obs.state, "images": dict(obs.images), "prompt": list(obs.prompts),
           "image_mask": {s: mask[:, i] for i, s in enumerate(cols)}}
    if getattr(obs, "tokens", None) is not None:
        out.update(tokens=obs.tokens, token_mask=obs.token_mask)
    return out


def _prompts(obs: Mapping[str, Any], profile: Profile) -> list[str]:
    """Prompt(s), else the profile's default prompt (InjectDefaultPrompt, transforms.py:104-111)."""
    raw = obs.get("prompt")
    items = [raw] if raw is None or isinstance(raw, str) else list(raw)  # per sample: OpenPI infers one at a time
    prompts = [inject_default_prompt(p, profile.default_prompt) for p in items]
    missing = [i for i, p in enumerate(prompts) if p is None]
    if missing:  # transforms.py:253-254
        raise PibridgeError(f"observation sample(s) {missing} have no prompt",
                            expected="a prompt (the profile has no default prompt)",
                            fix="add a prompt to the observation or pass --default-prompt")
    return [str(p) for p in prompts]


def _per_sample(items: list, b: int, what: str) -> list:
    if len(items) == 1:
        return items * b
    if len(items) != b:
        raise PibridgeError(f"{len(items)} {what} entries for a batch of {b}", expected=f"1 or {b}",
                            fix=f"give one {what} per sample")
    return items


# ------------------------------------------------------------------------------------------- outputs
def unnormalize_actions(actions: np.ndarray, profile: Profile, norm_stats: Mapping[str, NormStats] | None) -> np.ndarray:
    """Model actions (B, T, D) -> Unnormalize alone (transforms.py:158-168), sliced to the native action dim."""
    actions = np.asarray(actions)
    if norm_stats is not None:
        actions = unnormalize(actions, _stats_for(norm_stats, "actions", profile.norm, 0), profile.norm)
    return actions[..., : profile.require("action_dim")]


def postprocess_actions(actions: np.ndarray, model_state: np.ndarray, profile: Profile,
                        norm_stats: Mapping[str, NormStats] | None) -> np.ndarray:
    """Model actions (B, T, D) -> robot actions (B, T, A), as Policy.infer's output transforms
    (policy_config.py:84-89): Unnormalize actions and the model-input state (B, D) (transforms.py:158-168),
    AbsoluteActions on the delta joints (transforms.py:234-244), keep the first A dims, aloha encoding."""
    state = np.asarray(model_state)
    if norm_stats is not None:
        state = unnormalize(state, _stats_for(norm_stats, "state", profile.norm, 0), profile.norm)
    actions = unnormalize_actions(actions, profile, norm_stats)  # slicing first: the mask covers <= A dims
    actions = absolute_actions(actions, state, profile.require("delta_action_mask"))
    return aloha_actions_from_pi(actions) if profile.require("adapt_to_pi") else actions
