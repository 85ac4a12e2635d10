"""Gemma mixture of two experts with shared attention, applied to OpenPI's `PaliGemma/llm` parameters.

Axis legend: B batch, T query tokens, S key tokens (cache + new), D width of an expert, F mlp dim,
N query heads, K kv heads, G heads per kv head (N/K), H head_dim.
Expert 0 (PaliGemma) leaves have no suffix, expert 1 (action expert) leaves end in "_1" (gemma.py:443-450).
`xs` is a pair (expert 0 tokens or None, expert 1 tokens or None); attention runs over the concatenation of
the present experts' tokens, after an optional KV cache (gemma.py:157-249).
Numerics follow openpi src/openpi/models/gemma.py and lora.py at commit 15a9616 (LoRA applied unmerged, lora.py:53-148); `dtype` is the activation
dtype (Pi0Config.dtype), parameters may be bfloat16 or float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

RMS_EPS = 1e-6  # gemma.py:118
BIG_NEG = -2.3819763e38  # gemma.py:225 (masked logits)
ROPE_MAX_WAVELENGTH = 10_000  # gemma.py:424


def _name(name: str, expert: int) -> str:
    return name if expert == 0 else f"{name}_{expert}"  # gemma.py:443-450


def embed_tokens(table: jax.Array, tokens: jax.Array, dtype, param_dtype=None) -> jax.Array:
    """table[tokens] * sqrt(D) in the param dtype (default: the table's), then cast to `dtype`
    (gemma.py:148-151, :384-386). Rows are gathered before the (exact) cast to the param dtype."""
    x = table[(tokens,)].astype(param_dtype or table.dtype)
    x = x * jnp.sqrt(table.shape[1]).astype(x.dtype)  # bf16 table: factor bf16(sqrt(2048)) = 45.25
    return x.astype(dtype)


def rms_norm(p: dict, x: jax.Array, cond: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
    """RMSNorm / adaptive RMSNorm (gemma.py:112-131). Returns (normed in x.dtype, gate or None)."""
    dtype = x.dtype
    var = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)  # f32 statistics
    normed = x * jnp.reciprocal(jnp.sqrt(var + RMS_EPS))  # f32
    if cond is None:
        return (normed * (1 + p["scale"])).astype(dtype), None  # 1 + scale in the param dtype
    dense = p["Dense_0"]  # nn.Dense(3D, dtype=x.dtype): cond, kernel, bias cast to the activation dtype
    mod = cond.astype(dtype) @ dense["kernel"].astype(dtype) + dense["bias"].astype(dtype)  # (B, 3D)
    scale, shift, gate = jnp.split(mod[:, None, :], 3, axis=-1)  # (B, 3D) -> 3 x (B, 1, D), that order
    return (normed * (1 + scale) + shift).astype(dtype), gate


def apply_rope(x: jax.Array, positions: jax.Array) -> jax.Array:
    """Rotate-half RoPE in float32, cast back to x.dtype (gemma.py:424-440). x (B, T, N, H), positions (B, T)."""
    h = x.shape[-1]
    freq_exponents = (2.0 / h) * jnp.arange(h // 2, dtype=jnp.float32)
    timescale = ROPE_MAX_WAVELENGTH**freq_exponents
    radians = positions[..., None] / timescale[None, None, :]  # (B, T, H/2) f32
    radians = radians[..., None, :]  # (B, T, H/2) -> (B, T, 1, H/2)
    sin, cos = jnp.sin(radians), jnp.cos(radians)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def lora_equations(eqn: str, label: str = "L") -> tuple[str, str]:
    """The two LoRA einsums of a weight einsum `x,W->y` whose last two W axes (a, b) carry the adapter
    (lora.py:67-85): x,A->t with A = W's axes, b renamed to the rank `label` (t = y with b renamed), then
    t,B->y with B = W's axes, a renamed. Axes of W other than a and b stay in both factors: an axis that y
    lacks (attn_vec_einsum's N) is summed out in each einsum separately."""
    inputs, y = eqn.split("->")
    x, w = inputs.split(",")
    a, b = w[-2], w[-1]
    t = y.replace(b, label)
    return f"{x},{w.replace(b, label)}->{t}", f"{t},{w.replace(a, label)}->{y}"


def _einsum(p: dict, eqn: str, x: jax.Array, scaling: float | None = None) -> jax.Array:
    """lora.Einsum (lora.py:53-65): base einsum, plus einsum_b(einsum_a(x, A), B) * scaling when p holds the
    factors, each factor cast to the activation dtype; `scaling` a Python float (weakly typed, as OpenPI's)."""
    dtype = x.dtype
    out = jnp.einsum(eqn, x, p["w"].astype(dtype))
    if "lora_a" in p:
        eqn_a, eqn_b = lora_equations(eqn)
        t = jnp.einsum(eqn_a, x, p["lora_a"].astype(dtype))
        out = out + jnp.einsum(eqn_b, t, p["lora_b"].astype(dtype)) * scaling
    return out


def attention(p: dict, xs, positions, mask, kv_cache, lora_scaling=(None, None)):
    """Shared attention of the present experts. mask (B, T, S) bool. Returns (outputs per expert, (k, v)).
    lora_scaling: per expert, the attention LoRA scaling (used where that expert's einsums hold factors)."""
    qkvs = []
    for e, x in enumerate(xs):
        if x is not None:
            q = _einsum(p[_name("q_einsum", e)], "BTD,NDH->BTNH", x, lora_scaling[e])
            k, v = _einsum(p[_name("kv_einsum", e)], "BSD,2KDH->2BSKH", x, lora_scaling[e])
            qkvs.append((q, k, v))
    q, k, v = (jnp.concatenate(y, axis=1) for y in zip(*qkvs))  # experts concatenated along tokens
    q = apply_rope(q, positions)
    q = q * q.shape[-1] ** -0.5  # gemma.py:204, after RoPE, in the activation dtype
    k = apply_rope(k, positions)
    if kv_cache is not None:  # gemma.py:211-214: cache (prefix) first
        k = jnp.concatenate([kv_cache[0], k], axis=1)
        v = jnp.concatenate([kv_cache[1], v], axis=1)
    b, t, n, h = q.shape
    kh = k.shape[2]
    q = q.reshape(b, t, kh, n // kh, h)  # (B, T, N, H) -> (B, T, K, G, H), head = k*G + g
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
    logits = jnp.where(mask[:, None, None, :, :], logits, BIG_NEG)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)  # f32 softmax, then activation dtype
    encoded = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v).reshape(b, t, n, h)  # (B,T,K,G,H) -> (B,T,N,H)
    outs, start = [], 0
    for e, x in enumerate(xs):
        if x is None:
            outs.append(None)
            continue
        end = start + x.shape[1]
        outs.append(_einsum(p[_name("attn_vec_einsum", e)], "BTNH,NHD->BTD", encoded[:, start:end], lora_scaling[e]))
        start = end
    return outs, (k, v)


def _dot(x: jax.Array, w: jax.Array, lora: tuple | None) -> jax.Array:
    """lora.FeedForward._dot (lora.py:144-148): x W [+ (x A) B], NO scaling; factors cast to x.dtype."""
    base = jnp.dot(x, w.astype(x.dtype))
    if lora is None:
        return base
    return base + jnp.dot(jnp.dot(x, lora[0].astype(x.dtype)), lora[1].astype(x.dtype))


def _ffn_lora(p: dict, name: str, i: int | None = None) -> tuple | None:
    if f"{name}_lora_a" not in p:
        return None
    a, b = p[f"{name}_lora_a"], p[f"{name}_lora_b"]  # gating: (2, D, r) / (2, r, F); linear: (F, r) / (r, D)
    return (a, b) if i is None else (a[i], b[i])


def feed_forward(p: dict, x: jax.Array) -> jax.Array:
    """gelu_tanh(x W0) * (x W1) then W_linear, all in x.dtype (lora.py:123-148), LoRA per branch when present."""
    w = p["gating_einsum"]  # (2, D, F): [0] gate branch, [1] linear branch
    gate = jax.nn.gelu(_dot(x, w[0], _ffn_lora(p, "gating_einsum", 0)), approximate=True)  # flax default tanh
    up = _dot(x, w[1], _ffn_lora(p, "gating_einsum", 1))
    return _dot(gate * up, p["linear"], _ffn_lora(p, "linear"))


def _residual(x, y, gate):
    if x is None:
        return None
    return x + y if gate is None else x + y * gate  # gemma.py:453-459


def block(p: dict, xs, positions, mask, conds, kv_cache=None, lora_scaling=(None, None)):
    """One layer for both experts (gemma.py:292-333). Returns (xs, (k, v)) with k after RoPE. LoRA factors in `p`
    are applied unmerged, as OpenPI's forward does; lora_scaling: the attention scaling per expert."""
    normed, gates = [], []
    for e, x in enumerate(xs):
        y, g = rms_norm(p[_name("pre_attention_norm", e)], x, conds[e]) if x is not None else (None, None)
        normed.append(y)
        gates.append(g)
    attn_out, kv = attention(p["attn"], normed, positions, mask, kv_cache, lora_scaling)
    xs = [_residual(x, y, g) for x, y, g in zip(xs, attn_out, gates)]
    out = []
    for e, x in enumerate(xs):
        if x is None:
            out.append(None)
            continue
        y, g = rms_norm(p[_name("pre_ffw_norm", e)], x, conds[e])
        out.append(_residual(x, feed_forward(p[_name("mlp", e)], y), g))
    return tuple(out), kv
