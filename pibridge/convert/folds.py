"""Opt-in fold of OpenPI's bf16 parameter rounding into a LeRobot bf16 policy's fp32-kept tensors.

OpenPI's inference restores EVERY parameter as bf16 (openpi policy_config.py:57) and evaluates RMSNorm's
`1 + scale` in the parameter dtype (gemma.py:121-124), i.e. bf16(1 + bf16(s)). LeRobot's bf16 policy keeps norms,
adaRMS dense layers, the vision tower, the projector and the heads in fp32 (modeling_pi05.py:244-265) and computes
`1.0 + weight.float()` in fp32 (pi_gemma.py:119). Folding stores, for those fp32 tensors:
  RMSNorm weights: bf16(1 + bf16(s)) - 1   (exact in fp32, so LeRobot's fp32 1 + w equals OpenPI's bf16 1 + s)
  everything else: bf16(w) held in fp32     (the values OpenPI's bf16 restore computes with)
Tensors LeRobot stores in bf16 are rounded the same way by the cast itself.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from pibridge.convert.mapping import RMS_NORM_ROLES

FOLD_ID = "openpi-bf16-params"
BF16 = np.dtype(ml_dtypes.bfloat16)


def fold_bf16_param(role: str, x: np.ndarray) -> np.ndarray:
    """The fp32 values a LeRobot fp32-kept tensor must hold to compute what OpenPI's bf16 inference computes."""
    s = np.asarray(x).astype(BF16)
    if role in RMS_NORM_ROLES:
        one_plus = (np.asarray(1, BF16) + s).astype(BF16)  # bf16 add, rounded once (XLA / ml_dtypes semantics)
        return one_plus.astype(np.float32) - np.float32(1)  # exact: one_plus has 8 significant bits near 1
    return s.astype(np.float32)
