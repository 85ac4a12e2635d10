"""The JAX stack: pi0 / pi05 as plain JAX functions applied directly to OpenPI's parameter tree.

Modules: siglip (image encoder), gemma (two-expert transformer), pi0 (masks, time embedding, suffix, heads),
params (tree check, cast, per-layer split), precision (float32 / bf16 policies), sampler (run_policy).
Never imports torch.
"""

from pibridge.parity.inputs import ModelInputs
from pibridge.parity.stacks.jax.params import ModelParams, prepare_params
from pibridge.parity.stacks.jax.precision import POLICIES, PrecisionPolicy, get_policy
from pibridge.parity.stacks.jax.sampler import euler_times, run_policy

__all__ = ["POLICIES", "ModelInputs", "ModelParams", "PrecisionPolicy", "euler_times", "get_policy", "prepare_params",
           "run_policy"]
