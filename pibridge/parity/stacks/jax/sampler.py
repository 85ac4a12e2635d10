"""run_policy: OpenPI's Pi0.sample_actions (pi0 and pi05) on OpenPI's parameter tree, with stage recording.

Axis legend: B batch, C cameras, T prefix tokens, S suffix tokens, A action horizon, E action dim (32),
D LLM width, De expert width, K kv heads, H head_dim.
Flow (openpi src/openpi/models/pi0.py:216-279 at commit 15a9616): SigLIP on every camera (batched b-major,
masked ones included), prefix = image tokens + text embeddings, one prefix pass of expert 0 filling the
KV cache, then Euler steps t = 1 -> 0 with dt = -1/num_steps, each a pass of expert 1 over the suffix
attending to the cache. Each layer is one jitted call, compiled once per shape; the same calls run whether
or not stages are recorded, so recording cannot change numerics (it only adds device->host copies and
block_until_ready for per-stage wall time; the first run of a shape includes compilation in its times).
"""

from __future__ import annotations

import time as _time
from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from pibridge.configs import Variant
from pibridge.errors import PibridgeError
from pibridge.parity import stages as st
from pibridge.parity.inputs import ModelInputs
from pibridge.parity.stacks.jax import gemma, pi0, siglip
from pibridge.parity.stacks.jax.params import ModelParams, prepare_params
from pibridge.parity.stacks.jax.precision import get_policy, use
from pibridge.parity.stages import StageRecorder

if TYPE_CHECKING:
    from pibridge.convert.reader import OpenPICheckpoint


# Every jitted call takes its parameters as stored (precision.py) and casts them to `pdtype`, the policy's
# param dtype, first (`use`): exact for bf16 -> float32, a no-op when already cast.
@partial(jax.jit, static_argnames=("dtype", "pdtype"))
def _vit_embed(p, images, dtype, pdtype):
    x = siglip.embed(use(p, pdtype), images)
    return x, x.astype(dtype)  # siglip.py:239: cast to dtype_mm after the f32 stem


@partial(jax.jit, static_argnames=("dtype", "pdtype"))
def _vit_block(p, x, dtype, pdtype):
    return siglip.block(use(p, pdtype), x, dtype)


@partial(jax.jit, static_argnames=("dtype", "pdtype"))
def _vit_norm(p, x, dtype, pdtype):
    return siglip.encoder_norm(use(p, pdtype), x, dtype)


@partial(jax.jit, static_argnames=("dtype", "pdtype"))
def _vit_project(p, x, dtype, pdtype):
    return siglip.project(use(p, pdtype), x, dtype)


@partial(jax.jit, static_argnames=("dtype", "pdtype"))
def _prefix(table, img_out, tokens, image_mask, token_mask, dtype, pdtype):
    b, n = tokens.shape[0], img_out.shape[1]
    img_tokens = img_out.reshape(b, -1, img_out.shape[-1])  # (B*C, 256, D) -> (B, C*256, D), cameras in order
    text = gemma.embed_tokens(table, tokens, dtype, pdtype)  # gathers rows, then casts: never the whole table
    embeds = jnp.concatenate([img_tokens, text], axis=1)
    valid, mask, positions = pi0.prefix_layout(image_mask, token_mask, n)
    return img_tokens, embeds.astype(dtype), valid, mask, positions  # gemma.py:400 casts inputs to embed_dtype


@partial(jax.jit, static_argnames=("pdtype", "lora"))
def _prefix_layer(p, x, positions, mask, pdtype, lora=(None, None)):
    (x, _), (k, v) = gemma.block(use(p, pdtype), (x, None), positions, mask, (None, None), lora_scaling=lora)
    return x, k, v


@partial(jax.jit, static_argnames=("width",))
def _time_embed(times, width):
    """(K_steps, B) -> (K_steps, B, De). An outer product (HIGHEST) and elementwise sin/cos: the same values as
    OpenPI's per-step call (pi0.py:161), computed once so `suffix/time` precedes the steps."""
    k, b = times.shape
    return pi0.posemb_sincos(times.reshape(k * b), width).reshape(k, b, width)  # (K*B, De) -> (K, B, De)


@partial(jax.jit, static_argnames=("pi05", "dtype", "pdtype"))
def _suffix(heads, state, x_t, time_emb, pi05, dtype, pdtype):
    tokens, cond = pi0.embed_suffix(use(heads, pdtype), pi05, state, x_t, time_emb)
    return tokens.astype(dtype), cond  # gemma.py:400


@partial(jax.jit, static_argnames=("pdtype", "lora"))
def _expert_layer(p, x, positions, mask, cond, k, v, pdtype, lora=(None, None)):
    (_, x), _ = gemma.block(use(p, pdtype), (None, x), positions, mask, (None, cond), (k, v), lora_scaling=lora)
    return x


@partial(jax.jit, static_argnames=("horizon", "dt", "pdtype"))
def _velocity(final_norm, out_proj, x, cond, x_t, horizon, dt, pdtype):
    final_norm, out_proj = use((final_norm, out_proj), pdtype)
    y, _ = gemma.rms_norm(final_norm, x, cond)  # final_norm_1; adaRMS gate discarded (gemma.py:409-411)
    v_t = pi0.linear(out_proj, y[:, -horizon:])  # bf16 params: bf16 LLM output -> bf16 velocity
    return v_t, x_t + dt * v_t  # dt is a Python float: dt * v_t stays in v_t's dtype (pi0.py:271)


def euler_times(num_steps: int) -> tuple[float, list[np.float32]]:
    """dt and the float32 times of the steps OpenPI's while_loop runs (pi0.py:228, :271-278)."""
    if num_steps < 1:
        raise PibridgeError(f"num_steps={num_steps}", expected="an integer >= 1", fix="pass num_steps >= 1")
    dt = -1.0 / num_steps
    t, times = np.float32(1.0), []
    while t >= np.float32(-dt / 2):
        times.append(t)
        t = np.float32(t + np.float32(dt))
    return dt, times


class _Tape:
    """Runs calls (timed and synchronized only when recording) and records stages into an optional recorder."""

    def __init__(self, recorder: StageRecorder | None):
        self.recorder = recorder

    def run(self, fn, *args, **kwargs):
        if self.recorder is None:
            return fn(*args, **kwargs), 0.0
        start = _time.perf_counter()
        out = jax.block_until_ready(fn(*args, **kwargs))
        return out, _time.perf_counter() - start

    def put(self, name: str, value, valid=None, seconds: float = 0.0) -> None:
        if self.recorder is not None:
            self.recorder.record(name, np.asarray(value, dtype=np.float32), valid, seconds)


def _record_inputs(tape: _Tape, x: ModelInputs) -> None:
    tape.put(st.INPUT_IMAGE, x.images, x.image_mask[:, :, None, None, None])
    tape.put(st.INPUT_IMAGE_MASK, x.image_mask)
    tape.put(st.INPUT_TOKENS, x.tokens, x.token_mask)
    tape.put(st.INPUT_TOKEN_MASK, x.token_mask)
    tape.put(st.INPUT_STATE, x.state)


def _encode_images(m: ModelParams, x: ModelInputs, dtype: str, pdtype: str, tape: _Tape) -> jax.Array:
    """(B, C, 224, 224, 3) -> (B*C, 256, D); masked cameras run too (pi0.py:113-114)."""
    b, c = x.images.shape[:2]
    images = jnp.asarray(x.images.reshape(b * c, *x.images.shape[2:]))  # (B, C, h, w, 3) -> (B*C, h, w, 3)
    cam_valid = x.image_mask.reshape(b * c)[:, None, None]  # (B, C) -> (B*C, 1, 1), b-major
    (x_f32, h), sec = tape.run(_vit_embed, m.img_embed, images, dtype=dtype, pdtype=pdtype)
    tape.put(st.IMG_EMBED, x_f32, cam_valid, sec)
    for i, p in enumerate(m.img_blocks):
        h, sec = tape.run(_vit_block, p, h, dtype=dtype, pdtype=pdtype)
        tape.put(st.img_block(i), h, cam_valid, sec)
    h, sec = tape.run(_vit_norm, m.img_head, h, dtype=dtype, pdtype=pdtype)
    tape.put(st.IMG_OUT, h, cam_valid, sec)
    out, sec = tape.run(_vit_project, m.img_head, h, dtype=dtype, pdtype=pdtype)
    return out


def _fill_cache(m: ModelParams, x: ModelInputs, img_out, dtype: str, pdtype: str, tape: _Tape):
    """Prefix embedding and the expert-0 pass. Returns (prefix valid (B, T), [(k, v) per layer])."""
    args = (m.embedder, img_out, jnp.asarray(x.tokens), jnp.asarray(x.image_mask), jnp.asarray(x.token_mask))
    (img_tokens, h, valid, mask, positions), sec = tape.run(_prefix, *args, dtype=dtype, pdtype=pdtype)
    if tape.recorder is not None:
        row_valid = np.asarray(valid)[:, :, None]  # (B, T) -> (B, T, 1)
        tape.put(st.IMG_TOKENS, img_tokens, row_valid[:, :img_tokens.shape[1]])
        tape.put(st.PREFIX_EMBEDS, h, row_valid, sec)
        tape.put(st.PREFIX_MASK, valid)
    cache = []
    for i, p in enumerate(m.llm_layers):
        (h, k, v), sec = tape.run(_prefix_layer, p, h, positions, mask, pdtype=pdtype, lora=m.lora_scaling)
        cache.append((k, v))
        if tape.recorder is not None:
            tape.put(st.llm_kv(i, "k"), k, row_valid[:, :, :, None])
            tape.put(st.llm_kv(i, "v"), v, row_valid[:, :, :, None])
            tape.put(st.llm_block(i), h, row_valid, sec)
    return valid, cache


def _denoise(m: ModelParams, x: ModelInputs, noise: np.ndarray, valid, cache, dtype, pdtype, num_steps, tape):
    """Euler integration of the velocity field from t=1 (noise) to t=0 (pi0.py:239-278)."""
    b, horizon = noise.shape[:2]
    suffix_len = horizon if m.pi05 else horizon + 1  # pi0: state token first (pi0.py:151-157)
    mask, positions = pi0.suffix_layout(valid, suffix_len, horizon)
    dt, times = euler_times(num_steps)
    times_b = jnp.asarray(np.repeat(np.asarray(times, np.float32)[:, None], b, axis=1))  # (K,) -> (K, B)
    width = m.heads["action_in_proj"]["kernel"].shape[1]
    time_embs, sec = tape.run(_time_embed, times_b, width=width)
    tape.put(st.SUFFIX_TIME, time_embs, seconds=sec)
    state, x_t = jnp.asarray(x.state), jnp.asarray(noise, dtype=jnp.float32)
    for k in range(len(times)):
        (h, cond), sec0 = tape.run(_suffix, m.heads, state, x_t, time_embs[k], pi05=m.pi05, dtype=dtype,
                                  pdtype=pdtype)
        for i, (p, (ck, cv)) in enumerate(zip(m.llm_layers, cache)):
            h, sec = tape.run(_expert_layer, p, h, positions, mask, cond, ck, cv, pdtype=pdtype,
                                   lora=m.lora_scaling)
            tape.put(st.expert_block(k, i), h, seconds=sec + (sec0 if i == 0 else 0.0))
        (v_t, x_t), sec = tape.run(_velocity, m.final_norm_expert, m.heads["action_out_proj"], h, cond, x_t,
                                   horizon=horizon, dt=dt, pdtype=pdtype)
        tape.put(st.velocity(k), v_t, seconds=sec)
    return x_t


def _check_noise(noise, inputs: ModelInputs, variant: Variant) -> np.ndarray:
    noise = np.asarray(noise, dtype=np.float32)
    if noise.ndim != 3 or noise.shape[0] != inputs.batch_size or noise.shape[2] != variant.action_dim:
        raise PibridgeError(f"noise has shape {noise.shape}",
                            expected=f"(batch {inputs.batch_size}, horizon, {variant.action_dim})",
                            fix="draw the noise as (B, action_horizon, action_dim) float32")
    if inputs.state.shape[1] != variant.action_dim:
        raise PibridgeError(f"state has shape {inputs.state.shape}",
                            expected=f"(batch, {variant.action_dim}): normalized and zero-padded",
                            fix="pad the normalized state to the action dim (OpenPI PadStatesAndActions)")
    return noise


def _model_params(params: Mapping | ModelParams | OpenPICheckpoint, variant: Variant, policy) -> ModelParams:
    if not isinstance(params, ModelParams):
        return prepare_params(params, variant, policy)
    if (params.variant, params.precision) != (variant.name, policy.name):
        raise PibridgeError(f"prepared params are for {params.variant} / {params.precision}",
                            expected=f"{variant.name} / {policy.name}",
                            fix="prepare them again with prepare_params(tree, variant, get_policy(precision))")
    return params


def run_policy(params: Mapping | ModelParams | OpenPICheckpoint, variant: Variant, inputs: ModelInputs, noise: np.ndarray, *,
               precision: str = "float32", num_steps: int = 10, record: StageRecorder | None = None) -> np.ndarray:
    """Sampled (normalized) actions (B, A, E) float32 for `inputs`, starting from `noise` (B, A, E).

    params: OpenPI's nested parameter dict (restore_params layout) for `variant`, an opened checkpoint
    (pibridge.convert.reader.open_checkpoint: leaves are read one at a time, no numpy tree is kept), or the
    ModelParams that prepare_params made for this precision (saves the loading when sampling repeatedly); precision "float32" or
    "bf16" (see precision.py); record: a StageRecorder that receives every stage of pibridge.parity.stages
    except actions/unnormalized (unnormalizing is the caller's job). The matmul-precision setting is scoped to
    this call.
    """
    policy = get_policy(precision)
    noise = _check_noise(noise, inputs, variant)
    tape = _Tape(record)
    with policy.matmul_context():
        m = _model_params(params, variant, policy)
        _record_inputs(tape, inputs)
        dtypes = policy.compute_dtype, policy.param_dtype
        img_out = _encode_images(m, inputs, *dtypes, tape)
        valid, cache = _fill_cache(m, inputs, img_out, *dtypes, tape)
        actions = _denoise(m, inputs, noise, valid, cache, *dtypes, num_steps, tape)
        actions = np.asarray(actions, dtype=np.float32)
    tape.put(st.ACTIONS, actions)
    return actions
