"""The JAX stack's side of the goldens: run the policy recording every stage the golden set keeps (the golden
format and rules are the parity core's: parity/goldens.py, golden_rules.py)."""

from __future__ import annotations

from pibridge.parity.goldens import DROPPED_STAGES, NUM_STEPS
from pibridge.parity.jax_stack.sampler import run_policy
from pibridge.parity.stages import StageRecorder


def jax_golden_stages(params, variant, inputs, noise, precision: str):
    """Run the JAX stack recording every stage; returns (actions, stages without DROPPED_STAGES)."""
    rec = StageRecorder()
    actions = run_policy(params, variant, inputs, noise, precision=precision, num_steps=NUM_STEPS, record=rec)
    return actions, [s for s in rec if s.name not in DROPPED_STAGES]
