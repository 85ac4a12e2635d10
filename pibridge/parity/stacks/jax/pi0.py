"""pi0 / pi05 pieces around the two transformers: masks, positions, time embedding, suffix, heads.

Axis legend: B batch, C cameras, T prefix tokens (C*256 + L), S suffix tokens (pi0: 1 + A, pi05: A),
A action horizon, E action dim (32), D LLM width, De action-expert width.
Numerics follow openpi src/openpi/models/pi0.py at commit 15a9616; heads are flax nnx.Linear, which promotes
input, kernel and bias to their widest dtype (f32 inputs with bf16 params compute in f32; pi0.py:92-100).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

TIME_MIN_PERIOD = 4e-3  # pi0.py:161
TIME_MAX_PERIOD = 4.0  # pi0.py:161


def linear(p: dict, x: jax.Array) -> jax.Array:
    """nnx.Linear: dtype = result type of (x, kernel, bias); x @ kernel + bias."""
    dtype = jnp.result_type(x, p["kernel"], p["bias"])
    x, kernel, bias = x.astype(dtype), p["kernel"].astype(dtype), p["bias"].astype(dtype)
    return lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ()))) + bias


def make_attn_mask(input_mask: jax.Array, mask_ar: jax.Array) -> jax.Array:
    """(B, N) valid, (N,) or (B, N) autoregressive flags -> (B, N, N): i attends j iff cumsum_ar[j] <= cumsum_ar[i]
    and both are valid (pi0.py:19-44)."""
    mask_ar = jnp.broadcast_to(mask_ar, input_mask.shape)
    cumsum = jnp.cumsum(mask_ar, axis=1)
    attn = cumsum[:, None, :] <= cumsum[:, :, None]
    valid = input_mask[:, None, :] * input_mask[:, :, None]
    return jnp.logical_and(attn, valid)


def posemb_sincos(t: jax.Array, dim: int) -> jax.Array:
    """Sine-cosine embedding of scalar times (B,) -> (B, dim) float32, sin half first (pi0.py:47-63)."""
    fraction = jnp.linspace(0.0, 1.0, dim // 2)
    period = TIME_MIN_PERIOD * (TIME_MAX_PERIOD / TIME_MIN_PERIOD) ** fraction
    arg = jnp.einsum("i,j->ij", t, 1.0 / period * 2 * jnp.pi, precision=lax.Precision.HIGHEST)  # same op order
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


def prefix_layout(image_mask: jax.Array, token_mask: jax.Array, tokens_per_image: int):
    """(B, C), (B, L) -> prefix valid mask (B, T), attention mask (B, T, T), positions (B, T) (pi0.py:105-137,
    :234-236): every prefix token is bidirectional (ar False); positions = cumsum(valid) - 1."""
    image_valid = jnp.repeat(image_mask, tokens_per_image, axis=1)  # (B, C) -> (B, C*256), camera-major
    valid = jnp.concatenate([image_valid, token_mask], axis=1)
    ar = jnp.zeros(valid.shape[1], dtype=bool)
    positions = jnp.cumsum(valid, axis=1) - 1
    return valid, make_attn_mask(valid, ar), positions


def suffix_layout(prefix_valid: jax.Array, suffix_len: int, horizon: int):
    """Suffix attention mask over [prefix; suffix] keys (B, S, T+S) and positions (B, S) (pi0.py:246-259).
    Suffix ar flags: pi0 [True (state), True, False*(A-1)], pi05 [True, False*(A-1)] (pi0.py:157, :182)."""
    b = prefix_valid.shape[0]
    ar = jnp.array([True] * (suffix_len - horizon) + [True] + [False] * (horizon - 1))
    suffix_valid = jnp.ones((b, suffix_len), dtype=bool)
    suffix_attn = make_attn_mask(suffix_valid, ar)
    prefix_attn = jnp.broadcast_to(prefix_valid[:, None, :], (b, suffix_len, prefix_valid.shape[1]))
    mask = jnp.concatenate([prefix_attn, suffix_attn], axis=-1)
    positions = jnp.sum(prefix_valid, axis=-1)[:, None] + jnp.cumsum(suffix_valid, axis=-1) - 1
    return mask, positions


def embed_suffix(heads: dict, pi05: bool, state: jax.Array, x_t: jax.Array, time_emb: jax.Array):
    """Suffix tokens (B, S, De) and the adaRMS condition (pi05) or None (pi0.py:139-186).
    x_t (B, A, E) float32; time_emb (B, De) = posemb_sincos(time, De) (pi0.py:161)."""
    action_tokens = linear(heads["action_in_proj"], x_t)
    if pi05:  # time MLP -> adaRMS condition; the action tokens go in alone (pi0.py:162-169)
        cond = jax.nn.swish(linear(heads["time_mlp_in"], time_emb))
        cond = jax.nn.swish(linear(heads["time_mlp_out"], cond))
        return action_tokens, cond
    state_token = linear(heads["state_proj"], state)[:, None, :]  # (B, De) -> (B, 1, De)
    time_tokens = jnp.broadcast_to(time_emb[:, None, :], action_tokens.shape)  # (B, De) -> (B, A, De)
    mixed = jnp.concatenate([action_tokens, time_tokens], axis=-1)  # action first, time second (pi0.py:173)
    mixed = linear(heads["action_time_mlp_out"], jax.nn.swish(linear(heads["action_time_mlp_in"], mixed)))
    return jnp.concatenate([state_token, mixed], axis=1), None
