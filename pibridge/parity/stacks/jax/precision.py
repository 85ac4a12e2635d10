"""Precision policies of the JAX stack.

"bf16" reproduces OpenPI's JAX inference: every parameter restored as bfloat16
(openpi src/openpi/policies/policy_config.py:57, restore_params(..., dtype=jnp.bfloat16)) and compute dtype
bfloat16 (Pi0Config.dtype, pi0_config.py:20), with OpenPI's float32 islands kept by the model code itself
(norm statistics, RoPE, Gemma logits/softmax, time embedding, heads on f32 inputs, SigLIP conv + posemb).
Matmul precision is left at JAX's default, as OpenPI's inference does.
"float32" means float32 everywhere: parameters used as float32, compute dtype float32 and
jax_default_matmul_precision="highest" (no TF32 / bf16 passes), set only inside `matmul_context()`.
Storage: `store` keeps a leaf stored narrower than the param dtype (bfloat16 under "float32") as stored; the
stack casts each call's parameters to the param dtype inside the jitted call (`use`). bfloat16 -> float32 is
exact, so results are bit-identical to casting up front, and a bf16 checkpoint run in float32 holds half
the parameter memory.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from pibridge.errors import PibridgeError


@dataclass(frozen=True)
class PrecisionPolicy:
    name: str  # "float32" | "bf16"
    param_dtype: str  # dtype every parameter is cast to
    compute_dtype: str  # OpenPI's Pi0Config.dtype: Gemma embed_dtype and SigLIP dtype_mm
    matmul_precision: str  # value for jax.default_matmul_precision

    def matmul_context(self) -> contextlib.AbstractContextManager:
        return jax.default_matmul_precision(self.matmul_precision)

    def cast(self, array) -> jax.Array:
        return jnp.asarray(array, dtype=self.param_dtype)

    def store(self, array) -> jax.Array:
        """A leaf as held between calls: floats narrower than the param dtype as stored, others cast."""
        dtype = jnp.dtype(array.dtype)
        narrower = jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < jnp.dtype(self.param_dtype).itemsize
        return jnp.asarray(array) if narrower else self.cast(array)


def use(params, param_dtype: str):
    """Inside a jitted call: a parameter subtree cast to the param dtype (a no-op for leaves already in it)."""
    return jax.tree.map(lambda a: a.astype(param_dtype), params)


POLICIES = {
    "float32": PrecisionPolicy("float32", "float32", "float32", "highest"),
    "bf16": PrecisionPolicy("bf16", "bfloat16", "bfloat16", "default"),
}


def get_policy(name: str) -> PrecisionPolicy:
    if name not in POLICIES:
        raise PibridgeError(f"precision {name!r}", expected=f"one of {', '.join(POLICIES)}",
                            fix="pass precision='float32' or precision='bf16'")
    return POLICIES[name]
