"""Folds are exact: LeRobot's fp32 formulas on folded tensors give OpenPI's bf16-parameter values."""

import ml_dtypes
import numpy as np
import pytest

from pibridge.convert.folds import BF16, RMS_NORM_ROLES, fold_bf16_param


def test_rms_norm_fold_makes_lerobot_one_plus_w_equal_openpi_bf16():
    rng = np.random.default_rng(0)
    s = np.concatenate([rng.normal(0, 0.3, 20000), rng.normal(0, 3, 2000), [0.0, -1.0, 1e-8, 0.00390625]]).astype(np.float32)
    folded = fold_bf16_param("llm.norm.attn", s)
    lerobot = np.float32(1.0) + folded  # pi_gemma.py: normed * (1.0 + weight.float())
    openpi = (np.asarray(1, BF16) + s.astype(BF16)).astype(np.float32)  # gemma.py:121-124 with bf16 params
    np.testing.assert_array_equal(lerobot, openpi)
    naive = np.float32(1.0) + s.astype(BF16).astype(np.float32)  # rounding the scale alone is not enough
    assert (naive != openpi).mean() > 0.1


@pytest.mark.parametrize("role", ["vit.mlp.fc1.kernel", "projector.kernel", "expert.adanorm.attn.kernel"])
def test_other_fp32_tensors_hold_bf16_values(role):
    x = np.random.default_rng(1).normal(0, 0.05, 1000).astype(np.float32)
    y = fold_bf16_param(role, x)
    assert y.dtype == np.float32 and role not in RMS_NORM_ROLES
    np.testing.assert_array_equal(y, x.astype(ml_dtypes.bfloat16).astype(np.float32))
