"""OpenPI norm stats -> LeRobot normalizer state, and the exactness of the epsilon folds.

The formulas below are written out from the sources (not imported): OpenPI src/openpi/transforms.py:137-181,
LeRobot 0.6.1 processor/normalize_processor.py:357-401.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from pibridge.convert import lerobot_normstats as N
from pibridge.convert.normstats import load
from pibridge.errors import PibridgeError


def openpi_norm(x, s, quantile):
    if quantile:
        return (x - s["q01"]) / (s["q99"] - s["q01"] + 1e-6) * 2.0 - 1.0
    return (x - s["mean"]) / (s["std"] + 1e-6)


def openpi_unnorm(x, s, quantile):
    if quantile:
        return (x + 1.0) / 2.0 * (s["q99"] - s["q01"] + 1e-6) + s["q01"]
    return x * (s["std"] + 1e-6) + s["mean"]


def lerobot_norm(x, s, quantile, dt):
    """LeRobot's formula with stats and input in dtype `dt` (torch promotes the Python eps to `dt`)."""
    eps = dt.type(1e-8)
    if quantile:
        d = (s["q99"] - s["q01"]).astype(dt)
        d = np.where(d == 0, eps, d)
        return (dt.type(2.0) * (x - s["q01"]) / d - dt.type(1.0)).astype(dt)
    return ((x - s["mean"]) / (s["std"] + eps)).astype(dt)


def lerobot_unnorm(x, s, quantile, dt):
    if quantile:
        d = (s["q99"] - s["q01"]).astype(dt)
        return ((x + dt.type(1.0)) * d / dt.type(2.0) + s["q01"]).astype(dt)
    return (x * s["std"] + s["mean"]).astype(dt)


def realistic_stats(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mean = rng.uniform(-1, 1, n)
    std = np.abs(rng.standard_normal(n)) * 10 ** rng.uniform(-3, 0.5, n)
    q01 = mean - rng.uniform(0.01, 3, n)
    return {"mean": mean, "std": std, "q01": q01, "q99": q01 + rng.uniform(1e-3, 6, n)}


def folded(d, dt, post: bool):
    """The stats LeRobot would hold: file values (folded) in dtype dt."""
    std = N.fold_std_post(d["std"], dt) if post else N.fold_std_pre(d["std"], dt)[0]
    q99, _ = N.fold_q99(d["q01"], d["q99"], dt)
    return {"mean": d["mean"].astype(dt), "std": std, "q01": d["q01"].astype(dt), "q99": q99}


# --- exactness in float64: same precision on both sides -> identical bits --------------------------------

def test_fold_float64_mean_std_bit_exact():
    d = realistic_stats(50000)
    x = np.random.default_rng(1).uniform(-5, 5, d["mean"].shape)
    pre, post = folded(d, np.dtype(np.float64), False), folded(d, np.dtype(np.float64), True)
    assert N.fold_std_pre(d["std"], np.float64)[1] == 0
    assert np.array_equal(lerobot_norm(x, pre, False, np.dtype(np.float64)), openpi_norm(x, d, False))
    assert np.array_equal(lerobot_unnorm(x, post, False, np.dtype(np.float64)), openpi_unnorm(x, d, False))
    assert np.array_equal(pre["std"] + 1e-8, d["std"] + 1e-6)


def test_fold_float64_quantiles_bit_exact_where_solvable():
    d = realistic_stats(50000, seed=2)
    x = np.random.default_rng(3).uniform(-1.5, 1.5, d["mean"].shape)
    q99, inexact = N.fold_q99(d["q01"], d["q99"], np.float64)
    ok = (q99 - d["q01"]) == (d["q99"] - d["q01"] + 1e-6)
    assert (~ok).sum() == inexact and ok.mean() > 0.8
    f = folded(d, np.dtype(np.float64), False)
    sel = {k: v[ok] for k, v in d.items()}
    fsel = {k: v[ok] for k, v in f.items()}
    assert np.array_equal(lerobot_norm(x[ok], fsel, True, np.dtype(np.float64)), openpi_norm(x[ok], sel, True))
    assert np.array_equal(lerobot_unnorm(x[ok], fsel, True, np.dtype(np.float64)), openpi_unnorm(x[ok], sel, True))
    # elsewhere the denominator is the nearest reachable value: within one ulp of q99'
    den = q99 - d["q01"]
    want = d["q99"] - d["q01"] + 1e-6
    assert np.all(np.abs(den - want) <= np.spacing(np.abs(q99)) + np.spacing(want))


# --- float32: LeRobot's real precision vs OpenPI's float64 --------------------------------------------

def test_fold_float32_denominators_equal_openpi_rounded_once():
    d = realistic_stats(50000, seed=4)
    f = folded(d, np.dtype(np.float32), False)
    want = (d["std"] + 1e-6).astype(np.float32)
    assert np.array_equal(f["std"] + np.float32(1e-8), want)
    assert np.array_equal(N.fold_std_post(d["std"]), want)
    naive = (d["std"] + 1e-6 - 1e-8).astype(np.float32)  # double rounding: off by an ulp for some inputs
    assert (naive + np.float32(1e-8) != want).any()


@pytest.mark.parametrize("quantile", [False, True])
def test_fold_float32_closer_to_openpi_than_raw(quantile):
    d = realistic_stats(50000, seed=5)
    x64 = np.random.default_rng(6).uniform(-3, 3, d["mean"].shape)
    x = x64.astype(np.float32)
    ref = openpi_norm(x.astype(np.float64), d, quantile)  # what OpenPI computes (float64)
    f32 = np.dtype(np.float32)
    raw = {k: v.astype(np.float32) for k, v in d.items()}
    err_fold = np.abs(lerobot_norm(x, folded(d, f32, False), quantile, f32) - ref)
    err_raw = np.abs(lerobot_norm(x, raw, quantile, f32) - ref)
    # float32 rounding of x, the stats and each operation only: a few ulps of the operands over the denominator
    big = np.maximum.reduce([np.abs(x64), np.abs(d["mean"]), np.abs(d["q01"]), np.abs(d["q99"])])
    den = d["q99"] - d["q01"] if quantile else d["std"]
    rel_den = np.spacing(big.astype(np.float32)) / (den + 1e-6)  # a float32 stat / operand ulp over the denominator
    bound = 8 * (rel_den * (1 + np.abs(ref)) + np.spacing(np.abs(ref).astype(np.float32)))
    assert np.all(err_fold <= bound)
    assert err_fold.mean() < err_raw.mean() / 2
    y = np.random.default_rng(7).uniform(-1, 1, d["mean"].shape).astype(np.float32)
    uref = openpi_unnorm(y.astype(np.float64), d, quantile)
    uerr_fold = np.abs(lerobot_unnorm(y, folded(d, f32, True), quantile, f32) - uref)
    uerr_raw = np.abs(lerobot_unnorm(y, raw, quantile, f32) - uref)
    assert uerr_fold.mean() < uerr_raw.mean() / 2


def test_numpy_emulation_matches_torch_float32():
    torch = pytest.importorskip("torch")
    d = realistic_stats(1000, seed=8)
    f = folded(d, np.dtype(np.float32), False)
    x = np.random.default_rng(9).uniform(-3, 3, 1000).astype(np.float32)
    t = {k: torch.from_numpy(v) for k, v in f.items()}
    tx = torch.from_numpy(x)
    mean_std = ((tx - t["mean"]) / (t["std"] + 1e-8)).numpy()  # LeRobot lines 359-362
    quant = (2.0 * (tx - t["q01"]) / (t["q99"] - t["q01"]) - 1.0).numpy()  # lines 394-401
    f32 = np.dtype(np.float32)
    assert np.array_equal(mean_std, lerobot_norm(x, f, False, f32))
    assert np.array_equal(quant, lerobot_norm(x, f, True, f32))


# --- files and states -------------------------------------------------------------------------------------

def openpi_json(tmp_path, q=True):
    d = realistic_stats(10, seed=10)
    a = realistic_stats(12, seed=11)
    obj = {"norm_stats": {
        "state": {k: v.tolist() for k, v in d.items()},
        "actions": {k: (v.tolist() if q or k in ("mean", "std") else None) for k, v in a.items()},
    }}
    path = tmp_path / "norm_stats.json"
    path.write_text(json.dumps(obj, indent=2))
    return path, d, a


def test_build_states_raw(tmp_path):
    path, d, a = openpi_json(tmp_path)
    st = N.build_normalizer_states(load(path), state_dim=8, action_dim=7)
    assert st.folds == () and st.pre.keys() == st.post.keys()
    assert sorted(st.pre) == sorted(f"{f}.{n}" for f in ("observation.state", "action") for n in N.STAT_NAMES)
    assert all(v.dtype == np.float32 for v in st.pre.values())
    assert np.array_equal(st.pre["observation.state.std"], d["std"][:8].astype(np.float32))  # sliced to 8
    assert st.post["action.q99"].shape == (7,)


def test_build_states_folded_and_written(tmp_path):
    path, d, a = openpi_json(tmp_path, q=False)
    st = N.build_normalizer_states(load(path), state_dim=10, action_dim=12, fold_eps=True)
    assert st.folds == (N.FOLD_ID,)
    assert "action.q99" not in st.pre and "observation.state.q99" in st.pre  # null quantiles stay absent
    assert np.array_equal(st.post["action.std"], (a["std"] + 1e-6).astype(np.float32))
    assert np.array_equal(st.pre["action.std"] + np.float32(1e-8), (a["std"] + 1e-6).astype(np.float32))
    assert np.array_equal(st.pre["observation.state.q99"], st.post["observation.state.q99"])
    pre_path, post_path = N.write_normalizer_files(tmp_path, st, 3, 0)
    assert pre_path.name == "policy_preprocessor_step_3_normalizer_processor.safetensors"
    assert post_path.name == "policy_postprocessor_step_0_unnormalizer_processor.safetensors"
    back = load_file(pre_path)
    assert back.keys() == st.pre.keys() and all(np.array_equal(back[k], st.pre[k]) for k in back)


def test_bad_stats(tmp_path):
    path, _, _ = openpi_json(tmp_path)
    stats = load(path)
    with pytest.raises(PibridgeError, match="width 10"):
        N.build_normalizer_states(stats, state_dim=14, action_dim=7)
    with pytest.raises(PibridgeError, match="lack"):
        N.build_normalizer_states({"state": stats["state"]}, state_dim=8, action_dim=7)
