"""The bf16 allowance (pibridge/parity/allowance.py, configs/allowance.json) proven both ways on real traces:
REF = JAX stack float32, BASE = JAX stack bf16 (OpenPI's bf16), candidates = the torch stack in bf16 with the
runtime fixes (must pass), without them (bf16 RoPE inv_freq: must fail at llm/kv00/k) and with each defect
tests/test_tolerances.py injects (must fail at the same first stage as there).

Models: the test-only width-96 pi05 stored float32 (all cases) and tiny-pi0 seed 1 stored bfloat16 like real
checkpoints (the tightest correct case measured by tools/measure_allowance.py, at llm/kv03/k); sharp + outlier
synthetic weights, batch 2, 3 cameras (one masked), T = 968 prefix positions, 3 Euler steps (as calibrated).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import _parity_cases as pc
from pibridge.cli import main
from pibridge.configs import CONFIG_DIR, load_variant
from pibridge.parity.allowance import TEXT_K, compare_allowance, judge_stage, load_allowance, match_allowance
from pibridge.parity.report import allowance_json, allowance_summary_lines
from pibridge.parity.stages import Stage, stage_order
from pibridge.parity.trace import Trace, write_trace

STEPS, HORIZON = 3, 10


def _case(root, variant, seed, dtype="float32"):
    case = pc.make_case(root, variant, seed=seed, dtype=dtype)
    inputs, noise = pc.long_inputs(variant, seed=seed), pc.noise_for(2, HORIZON, seed)
    ref, base = (pc.jax_trace(case, inputs, noise, p, STEPS) for p in ("float32", "bf16"))
    return case, inputs, noise, ref, base


@pytest.fixture(scope="module")
def w96(tmp_path_factory):
    return _case(tmp_path_factory.mktemp("w96"), pc.w96_variant(), 0)


@pytest.fixture(scope="module")
def tiny_pi0(tmp_path_factory):
    return _case(tmp_path_factory.mktemp("tiny-pi0"), load_variant("tiny-pi0"), 1, "bfloat16")


_PLAIN: dict = {}  # (id(setup), fixes, dtype) -> trace: the plain candidates, shared by the tests


def _candidate(setup, *, fixes=True, policy_defect=None, input_defect=None, dtype="bfloat16"):
    key = (id(setup), fixes, dtype)
    if policy_defect is None and input_defect is None and key not in _PLAIN:
        _PLAIN[key] = _candidate(setup, fixes=fixes, dtype=dtype, policy_defect=lambda p: None)
    if policy_defect is None and input_defect is None:
        return _PLAIN[key]
    case, inputs, noise, _, _ = setup
    policy = pc.load_torch(case, dtype, fixes=fixes)
    if policy_defect:
        policy_defect(policy)
    x = input_defect(inputs) if input_defect else inputs
    return pc.torch_trace(policy, x, noise, "bf16" if dtype == "bfloat16" else "float32", STEPS)


def _judge(setup, cand):
    return compare_allowance(setup[3], setup[4], cand)


@pytest.mark.jax
@pytest.mark.torch
@pytest.mark.parametrize("which", ["w96", "tiny_pi0"])
def test_fixed_torch_bf16_passes_and_unfixed_fails_at_the_rope_stage(request, which):
    setup = request.getfixturevalue(which)
    fixed = _judge(setup, _candidate(setup))
    assert fixed.passed, allowance_summary_lines(fixed)[-1]
    assert not [r.name for r in fixed.results if r.status == "no-rule"]
    assert fixed.results[-1].name == "actions" and fixed.results[-1].ratio < 2.5
    unfixed = _judge(setup, _candidate(setup, fixes=False))
    assert not unfixed.passed
    assert unfixed.first_diverging.name in ("llm/kv00/k", TEXT_K), allowance_summary_lines(unfixed)[-1]
    text = next(r for r in unfixed.results if r.name == TEXT_K)  # the RoPE check free of inherited image error
    assert text.status == "fail" and text.ratio > 2 * text.rule.k, text.ratio


@pytest.mark.jax
@pytest.mark.torch
def test_torch_float32_candidate_passes(w96):
    c = _judge(w96, _candidate(w96, dtype="float32"))
    assert c.passed and max(r.ratio or 0 for r in c.results) < 0.01  # float32 is far closer to REF than BASE


DEFECTS = [  # as tests/test_tolerances.py, in bf16
    ("image-features-div-sqrt-width", pc.defect_image_features_divided, None, "img/tokens"),
    ("text-embeddings-scaled-twice", pc.defect_text_scaled_twice, None, "prefix/embeds"),
    ("two-swapped-q-heads", pc.defect_swapped_heads, None, "llm/block01"),
    ("dropped-norm-scale", pc.defect_dropped_norm_scale, None, "llm/kv01/k"),
    ("cameras-in-wrong-order", None, pc.defect_cameras_swapped, "input/image"),
]


@pytest.mark.jax
@pytest.mark.torch
@pytest.mark.parametrize("defect", DEFECTS, ids=[d[0] for d in DEFECTS])
def test_defect_fails_at_the_right_stage(w96, defect):
    _, policy_defect, input_defect, first = defect
    c = _judge(w96, _candidate(w96, policy_defect=policy_defect, input_defect=input_defect))
    assert not c.passed
    assert c.first_diverging.name == first, allowance_summary_lines(c)[-1]
    assert f"first diverging stage: {first}" in allowance_summary_lines(c)[-1]
    assert json.loads(allowance_json(c))["first_diverging"] == first


def _write(path, trace: Trace, obs="obs-1", ck="ck-1"):
    meta = dict(trace.meta, observation={"fingerprint": obs}, checkpoint={"fingerprint": ck})
    write_trace(path, list(trace.stages.values()), meta)
    return str(path)


def _exit(argv) -> int:
    try:
        main(argv)
    except SystemExit as e:
        return e.code
    return 0


@pytest.mark.jax
@pytest.mark.torch
def test_cli_exit_codes_and_json(w96, tmp_path):
    _, _, _, ref, base = w96
    r, b = _write(tmp_path / "ref", ref), _write(tmp_path / "base", base)
    good = _write(tmp_path / "good", _candidate(w96), ck="lerobot")
    bad = _write(tmp_path / "bad", _candidate(w96, fixes=False), ck="lerobot")
    out = tmp_path / "report.json"
    assert _exit(["parity", "compare", good, "--reference", r, "--baseline", b, "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["passed"] and rep["mode"] == "bf16-allowance"
    row = next(s for s in rep["stages"] if s["name"] == "llm/kv00/k")
    assert row["errors"]["cand"]["rel_l2"] < row["limits"]["rel_l2"] and row["ratio"] < 1.5
    assert _exit(["parity", "compare", bad, "--reference", r, "--baseline", b]) == 1
    other_obs = _write(tmp_path / "other", ref, obs="obs-2")
    assert _exit(["parity", "compare", good, "--reference", other_obs, "--baseline", b]) == 2
    assert _exit(["parity", "compare", good, "--reference", b, "--baseline", r]) == 2  # precisions swapped
    fewer = Trace({n: s for n, s in base.stages.items() if n != "actions"}, base.meta)
    assert _exit(["parity", "compare", good, "--reference", r, "--baseline", _write(tmp_path / "few", fewer)]) == 2
    assert _exit(["parity", "compare", good, "--reference", r]) == 2  # --baseline missing
    assert _exit(["parity", "compare", good]) == 2  # neither two traces nor the allowance options


def _stage(name, values):
    return Stage(name, np.asarray(values, np.float32), None, 0.0)


def test_rule_arithmetic():
    rule = match_allowance(load_allowance(), "llm/block03")
    ref = _stage("x", [1.0, 2.0, 3.0, 4.0])
    base = _stage("x", [1.0, 2.0, 3.0, 4.1])  # rel-L2 0.1 / sqrt(30)
    e_base = 0.1 / np.sqrt(30.0)
    ok = judge_stage("x", ref, base, _stage("x", [1.0, 2.0, 3.0, 4.0 + 0.1 * rule.k * 0.99]), rule)
    too_far = judge_stage("x", ref, base, _stage("x", [1.0, 2.0, 3.0, 4.0 + 0.1 * rule.k * 1.01 + 0.1]), rule)
    assert ok.status == "pass" and too_far.status == "fail"
    assert ok.errors[0].rel_l2 == pytest.approx(e_base, rel=1e-5) and ok.ratio == pytest.approx(rule.k * 0.99, rel=1e-3)
    scaled = judge_stage("x", ref, base, _stage("x", [1.5, 3.0, 4.5, 6.0]), rule)  # cosine 1, rel-L2 0.5
    assert scaled.status == "fail" and scaled.errors[1].angle < 1e-3
    exact = match_allowance(load_allowance(), "input/tokens")
    same = judge_stage("input/tokens", ref, ref, ref, exact)
    assert same.status == "pass" and same.ratio is None  # both exact: the floor applies
    assert judge_stage("input/tokens", ref, ref, base, exact).status == "fail"


def test_every_stage_has_an_allowance_rule_with_a_reason():
    raw = json.loads((CONFIG_DIR / "allowance.json").read_text())["rules"]
    assert all(r["why"] and r["k"] >= 1.0 and r["floor"] > 0 for r in raw)
    rules = load_allowance()
    for name in stage_order(27, 18, 10, unnormalized=True):
        assert match_allowance(rules, name) is not None, name
    assert match_allowance(rules, "llm/kv00/k").pattern == "llm/kv00/*"  # the RoPE stages keep their own rules
    assert match_allowance(rules, TEXT_K).pattern == TEXT_K
