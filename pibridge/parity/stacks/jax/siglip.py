"""SigLIP ViT image encoder applied to OpenPI's `PaliGemma/img` parameters (plain JAX functions).

Axis legend: N images (B*C cameras, b-major), P patch size, G grid side (224/P), T patches (G*G = 256),
D width (D_vit), F mlp dim, M heads, H head_dim (D/M), E LLM width (projector output).
Numerics follow openpi src/openpi/models/siglip.py at commit 15a9616 (pool_type "none", scan, dtype_mm =
compute dtype) and the flax 0.12.8 linen layers it uses (LayerNorm, MultiHeadDotProductAttention, Dense,
Conv); `dtype` is the compute dtype ("bfloat16" or "float32").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

LN_EPS = 1e-6  # flax nn.LayerNorm default epsilon (siglip.py:87, :98, :161 use the default)


def dense(p: dict, x: jax.Array, dtype) -> jax.Array:
    """flax Dense with dtype: input, kernel and bias cast to `dtype`, x @ kernel + bias."""
    x, kernel, bias = x.astype(dtype), p["kernel"].astype(dtype), p["bias"].astype(dtype)
    return lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ()))) + bias


def layer_norm(p: dict, x: jax.Array, dtype) -> jax.Array:
    """flax LayerNorm(dtype): float32 statistics, fast variance E[x^2]-E[x]^2 clipped at 0, result in `dtype`."""
    xf = x.astype(jnp.promote_types(dtype, jnp.float32))
    mean = xf.mean(-1, keepdims=True)
    var = jnp.maximum(0.0, lax.square(xf).mean(-1, keepdims=True) - lax.square(mean))
    mul = lax.rsqrt(var + LN_EPS) * p["scale"]  # scale multiplies the f32 rsqrt (bf16 params promote to f32)
    return ((x - mean) * mul + p["bias"]).astype(dtype)


def attention(p: dict, x: jax.Array, dtype) -> jax.Array:
    """flax MultiHeadDotProductAttention(dtype) self-attention, no mask, softmax in `dtype`."""
    x = x.astype(dtype)

    def proj(q: dict) -> jax.Array:  # (N, T, D) x (D, M, H) -> (N, T, M, H)
        return lax.dot_general(x, q["kernel"].astype(dtype), (((2,), (0,)), ((), ()))) + q["bias"].astype(dtype)

    q, k, v = proj(p["query"]), proj(p["key"]), proj(p["value"])
    q = q / jnp.sqrt(q.shape[-1]).astype(dtype)  # bf16(sqrt(72)) = 8.5 at So400m; 4 exactly at mu/14 (H=16)
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k)  # (N, M, T, T) in `dtype`
    probs = jax.nn.softmax(logits).astype(dtype)  # force_fp32_for_softmax=False: bf16 softmax at inference
    encoded = jnp.einsum("...hqk,...khd->...qhd", probs, v)  # (N, T, M, H)
    out = p["out"]  # (N, T, M, H) x (M, H, D) -> (N, T, D)
    y = lax.dot_general(encoded, out["kernel"].astype(dtype), (((2, 3), (0, 1)), ((), ())))
    return y + out["bias"].astype(dtype)


def mlp(p: dict, x: jax.Array, dtype) -> jax.Array:
    """MlpBlock (siglip.py:53-72): Dense(F) -> tanh-approximate gelu (flax nn.gelu default) -> Dense(D)."""
    return dense(p["Dense_1"], jax.nn.gelu(dense(p["Dense_0"], x, dtype), approximate=True), dtype)


def block(p: dict, x: jax.Array, dtype) -> jax.Array:
    """Pre-LN encoder block (siglip.py:84-108): x + MHA(LN_0(x)), then x + MLP(LN_1(x))."""
    x = x + attention(p["MultiHeadDotProductAttention_0"], layer_norm(p["LayerNorm_0"], x, dtype), dtype)
    return x + mlp(p["MlpBlock_0"], layer_norm(p["LayerNorm_1"], x, dtype), dtype)


def embed(p: dict, images: jax.Array) -> jax.Array:
    """Patch conv + learned position embedding, both in float32 (siglip.py:211-229). (N, 224, 224, 3) -> (N, T, D)."""
    x = images.astype(jnp.float32)
    conv = p["embedding"]
    kernel, bias = conv["kernel"].astype(jnp.float32), conv["bias"].astype(jnp.float32)  # Conv(dtype=float32)
    stride = kernel.shape[:2]
    y = lax.conv_general_dilated(x, kernel, stride, "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = y + bias.reshape(1, 1, 1, -1)  # (N, G, G, D)
    n, gh, gw, d = y.shape
    y = y.reshape(n, gh * gw, d)  # (N, G, G, D) -> (N, T, D), token = row*G + col (siglip.py:225-226)
    return y + p["pos_embedding"]  # f32 + param dtype -> f32 (siglip.py:229)


def encoder_norm(p: dict, x: jax.Array, dtype) -> jax.Array:
    """Final encoder LayerNorm (siglip.py:161): (N, T, D_vit) -> (N, T, D_vit)."""
    return layer_norm(p["encoder_norm"], x, dtype)


def project(p: dict, x: jax.Array, dtype) -> jax.Array:
    """The projector: SigLIP's classification `head` Dense to the LLM width (siglip.py:284-288). (N, T, D_vit) -> (N, T, E)."""
    return dense(p["head"], x, dtype)
