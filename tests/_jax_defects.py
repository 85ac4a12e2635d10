"""Defects a jax / flax release (or a slip in the JAX stack) could introduce, injected into the JAX stack for the
golden checks to catch (tests/test_golden_defects.py). Each is a context manager that patches one thing and
clears JAX's compilation caches on the way in and out (the stack's jitted calls read module globals when traced),
or a params edit; FIRST_STAGE names the first recorded stage each one touches, from the model's data flow.
"""

from __future__ import annotations

import contextlib
import copy
import types

import jax
import jax.numpy as jnp
from jax import lax

from pibridge.parity.stacks.jax import gemma, pi0, siglip


@contextlib.contextmanager
def _patched(pairs):
    old = [(obj, name, getattr(obj, name)) for obj, name, _ in pairs]
    for obj, name, value in pairs:
        setattr(obj, name, value)
    jax.clear_caches()
    try:
        yield
    finally:
        for obj, name, value in old:
            setattr(obj, name, value)
        jax.clear_caches()


def _tf32(x):
    """Round float32 to TF32 (10 explicit mantissa bits, nearest even): what a GPU's default matmul precision
    does to each operand (XLA's CPU backend computes float32 dots in float32 whatever the precision setting:
    measured bit-identical for "default" and "bfloat16", so the defect is emulated at the operands)."""
    if x.dtype != jnp.float32:
        return x
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    shift = jnp.uint32(13)
    bias = ((bits >> shift) & jnp.uint32(1)) + jnp.uint32((1 << 12) - 1)
    return lax.bitcast_convert_type(((bits + bias) >> shift) << shift, jnp.float32)


def _jnp_default_precision():
    """jax.numpy whose einsum / dot round float32 operands to TF32 unless a call pins its precision."""
    def einsum(eqn, *ops, **kw):
        return jnp.einsum(eqn, *ops, **kw) if "precision" in kw else jnp.einsum(eqn, *map(_tf32, ops), **kw)

    def dot(a, b, **kw):
        return jnp.dot(a, b, **kw) if "precision" in kw else jnp.dot(_tf32(a), _tf32(b), **kw)

    proxy = types.ModuleType("jnp_default_precision")
    proxy.__dict__.update({k: getattr(jnp, k) for k in dir(jnp) if not k.startswith("__")})
    proxy.einsum, proxy.dot = einsum, dot
    return proxy


def matmul_default_precision():
    proxy = _jnp_default_precision()
    return _patched([(gemma, "jnp", proxy), (siglip, "jnp", proxy), (pi0, "jnp", proxy)])


def _rope_bf16(x, positions):
    """RoPE with its phases (positions / timescale, sin, cos) in bfloat16 instead of float32."""
    h = x.shape[-1]
    timescale = (gemma.ROPE_MAX_WAVELENGTH ** ((2.0 / h) * jnp.arange(h // 2, dtype=jnp.float32))).astype(jnp.bfloat16)
    radians = (positions[..., None].astype(jnp.bfloat16) / timescale[None, None, :])[..., None, :]
    sin, cos = jnp.sin(radians).astype(x.dtype), jnp.cos(radians).astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def rope_bf16():
    return _patched([(gemma, "apply_rope", _rope_bf16)])


def softmax_bf16():
    softmax = jax.nn.softmax
    return _patched([(jax.nn, "softmax", lambda x, axis=-1, **kw: softmax(x.astype(jnp.bfloat16), axis=axis,
                                                                          **kw).astype(x.dtype))])


def rms_norm_eps():
    return _patched([(gemma, "RMS_EPS", 1e-5)])  # OpenPI's 1e-6 (gemma.py:118) -> 1e-5, a common default


def swap_query_heads(params):
    """Layer 0's query heads 0 and 1 swapped in PaliGemma's q_einsum (N, D, H) per layer."""
    params = copy.deepcopy(params)
    w = params["PaliGemma"]["llm"]["layers"]["attn"]["q_einsum"]["w"]  # (L, N, D, H)
    w[0, [0, 1]] = w[0, [1, 0]]
    return params


def zero_norm_scale(params):
    """Layer 1's pre-FFW RMSNorm scale of expert 0 zeroed (1 + scale -> 1)."""
    params = copy.deepcopy(params)
    params["PaliGemma"]["llm"]["layers"]["pre_ffw_norm"]["scale"][1] = 0.0  # (L, D)
    return params


# name -> (context manager factory or None, params edit or None, first stage touched by precision)
DEFECTS = {
    "matmul-default-precision": (matmul_default_precision, None, {"float32": "img/block00"}),
    "rope-phases-bf16": (rope_bf16, None, {"float32": "llm/kv00/k", "bf16": "llm/kv00/k"}),
    "softmax-bf16": (softmax_bf16, None, {"float32": "img/block00"}),
    "rms-norm-eps-1e-5": (rms_norm_eps, None, {"float32": "llm/kv00/k", "bf16": "llm/kv00/k"}),
    "query-heads-swapped": (None, swap_query_heads, {"float32": "llm/block00", "bf16": "llm/block00"}),
    "norm-scale-zeroed": (None, zero_norm_scale, {"float32": "llm/block01", "bf16": "llm/block01"}),
}
# Not injected into the bf16 goldens, because bf16 inference already does them up to rounding: the bf16 policy
# keeps matmuls at JAX's default precision (OpenPI's serving precision), and the attention probabilities are cast
# to bf16 right after the float32 softmax (gemma.py:229-232), so a bf16 softmax moves them by < 1 bf16 ulp.
