"""Goldens (tests/golden/<set>/, made by tools/make_goldens.py and validated then against OpenPI's own Pi0), every
set: the synth formula and the observation still produce what the goldens were made from, OpenPI's preprocessing
still gives the stored inputs, today's JAX stack (jitted) is within the host-spread limits of
configs/golden_rules.json at every recorded stage, and the torch stack on the converted checkpoint matches them
within configs/tolerances.json (float32, and bf16 with the runtime fixes). The LoRA golden (goldens.LORA_SPECS: the
JAX stack running the factors unmerged) sits in a set of its own; the torch stack meets it merged by `convert`."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from pibridge.parity import goldens as g
from pibridge.parity.stacks.jax.capture import golden_stages
from pibridge.parity.trace import read_trace

pytestmark = [pytest.mark.jax, pytest.mark.torch]
GOLDEN_ROOT = Path(__file__).parent / "golden"
SETS = g.golden_sets(GOLDEN_ROOT)
TOKENIZER = Path(__file__).parent / "data" / "test_spm.model"
CASES = [(s, p) for s in g.ALL_SPECS for p in g.PRECISIONS]
SET_CASES = [(d, s, p) for d in SETS for s, p in g.set_cases(d)]


def _id(case):
    return g.case_name(*case)


def _set_id(case):
    return f"{case[0].name}/{_id(case[1:])}"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """spec.variant -> (synth result, converted OUT), made fresh with today's code."""
    from rich.console import Console

    from pibridge.convert.convert import ConvertRequest, convert

    root, out = tmp_path_factory.mktemp("goldens"), {}
    for spec in g.ALL_SPECS:
        synth = g.write_checkpoint(spec, root / f"ck-{spec.name}")
        dest = root / f"out-{spec.name}"
        convert(ConvertRequest(synth.out, dest, spec.profile, camera_map="base_0_rgb=top,left_wrist_0_rgb=wrist",
                               allow_tiny=True, **spec.convert_flags), console=Console(file=io.StringIO()))
        out[spec.name] = (synth, dest)
    return out


def _golden(spec, precision, set_dir):
    return read_trace(set_dir / spec.trace_name(precision))


def _sets_with(spec):
    return [d for d in SETS if (d / spec.trace_name(g.PRECISIONS[0])).is_file()]


def test_golden_sets_exist_small_validated_and_record_their_host():
    assert g.FOREIGN_SET in [d.name for d in SETS]  # the 07f4a86 set, unchanged, is always checked
    total = sum(f.stat().st_size for f in GOLDEN_ROOT.rglob("*") if f.is_file())
    assert total < 20e6
    assert all(_sets_with(spec) for spec in g.ALL_SPECS)  # every spec, the LoRA one included, has a golden
    for set_dir in SETS:
        assert g.set_cases(set_dir) and all(p in g.PRECISIONS for _, p in g.set_cases(set_dir))
        for spec, precision in g.set_cases(set_dir):
            trace = _golden(spec, precision, set_dir)
            meta = trace.meta
            assert meta["openpi_commit"] == g.OPENPI_COMMIT
            assert meta["openpi_actions_max_abs"] == 0.0  # made only when OpenPI and the stack agree bit for bit
            assert meta["num_steps"] == g.NUM_STEPS and meta["precision"] == precision
            assert {"jax", "flax"} <= set(meta["versions"])
            host = g.set_host(set_dir, trace)
            assert host and ("cpu" in host or "note" in host), f"{set_dir.name}: no host recorded"


@pytest.mark.parametrize("spec", g.ALL_SPECS, ids=lambda s: s.name)
def test_synth_and_observation_still_match_the_goldens(spec, made):
    """A changed synth formula or observation generator changes a fingerprint: regenerate goldens then."""
    synth, _ = made[spec.name]
    obs = g.golden_observation(spec)
    for set_dir in _sets_with(spec):
        for precision in g.PRECISIONS:
            meta = _golden(spec, precision, set_dir).meta
            assert meta["checkpoint_fingerprint"] == synth.fingerprint
            assert meta["observation_fingerprint"] == obs.fingerprint()


@pytest.mark.parametrize("spec", g.ALL_SPECS, ids=lambda s: s.name)
def test_openpi_preprocessing_gives_the_stored_inputs(spec, made):
    synth, _ = made[spec.name]  # a LoRA spec: its own checkpoint's norm stats must give the shared inputs
    stored, noise, _ = g.load_inputs(g.inputs_path(SETS, spec))
    for set_dir in [d for d in SETS if (d / spec.inputs_name).is_file()]:  # the same in every set (integer work)
        other, other_noise, _ = g.load_inputs(set_dir / spec.inputs_name)
        np.testing.assert_array_equal(other.tokens, stored.tokens)
        np.testing.assert_array_equal(other.images, stored.images)
        np.testing.assert_array_equal(other_noise, noise)
    pre = g.golden_inputs(spec, g.golden_observation(spec), synth.out, TOKENIZER)
    np.testing.assert_array_equal(pre.inputs.images, stored.images)
    np.testing.assert_array_equal(pre.inputs.image_mask, stored.image_mask)
    assert stored.image_mask.tolist()[1][1] is False and stored.token_mask.sum(1)[0] != stored.token_mask.sum(1)[1]
    np.testing.assert_array_equal(pre.inputs.tokens, stored.tokens)
    np.testing.assert_array_equal(pre.inputs.state, stored.state)
    np.testing.assert_array_equal(g.golden_observation(spec).noise, noise)


@pytest.fixture(scope="module")
def today(made):
    """(spec name, precision) -> today's JAX-stack stages (jitted) on the golden inputs."""
    from pibridge.configs import load_variant

    out = {}
    for spec in g.ALL_SPECS:
        inputs, noise, _ = g.load_inputs(g.inputs_path(SETS, spec))
        params = g.stack_params(spec, made[spec.name][0].out)
        for precision in g.PRECISIONS:
            out[spec.name, precision] = golden_stages(params, load_variant(spec.variant), inputs, noise, precision,
                                                      spec)[1]
    return out


@pytest.mark.parametrize("case", SET_CASES, ids=_set_id)
def test_jax_stack_within_host_spread_of_golden(case, today):
    """Every set, every stage: within configs/golden_rules.json (multiple x the measured host spread)."""
    from pibridge.parity.golden_rules import check_golden
    from pibridge.parity.hostinfo import host_info

    set_dir, spec, precision = case
    golden = _golden(spec, precision, set_dir)
    result = check_golden(g.case_name(spec, precision), golden, today[spec.name, precision],
                          golden_host=g.set_host(set_dir, golden), today_host=host_info())
    assert len(result.rows) == len(golden.order)
    assert result.passed, result.explain()


@pytest.mark.parametrize("case", SET_CASES, ids=_set_id)
def test_torch_stack_matches_golden_within_tolerances(case, made):
    from pibridge.configs import load_variant
    from pibridge.parity.compare import compare
    from pibridge.fixes.runtime import apply_runtime_fixes
    from pibridge.parity.stages import StageRecorder
    from pibridge.parity.stacks.torch.forward import sample_actions
    from pibridge.parity.stacks.torch.model import load_policy
    from pibridge.parity.trace import Trace

    set_dir, spec, precision = case
    runtime = "float32" if precision == "float32" else "bfloat16"
    inputs, noise, _ = g.load_inputs(g.inputs_path(SETS, spec))
    policy = load_policy(made[spec.name][1], load_variant(spec.variant), runtime)
    apply_runtime_fixes(policy, runtime_dtype=runtime, lerobot_version="0.6.1")
    rec = StageRecorder()
    sample_actions(policy, inputs, noise, num_steps=g.NUM_STEPS, recorder=rec)
    result = compare(_golden(spec, precision, set_dir), Trace({s.name: s for s in rec}, {"precision": precision}))
    assert result.precision == precision
    assert not [r.name for r in result.results if r.status == "no-rule"]
    bad = [(r.name, r.metrics and (r.metrics.cosine, r.metrics.max_abs)) for r in result.results if r.failed]
    assert result.passed, bad
    assert len(result.results) == len(_golden(spec, precision, set_dir).order)


def test_new_goldens_record_their_host_and_land_in_their_hosts_set():
    from pibridge.parity.hostinfo import host_info

    synth = type("S", (), {"fingerprint": "f"})()
    meta = g.trace_meta(g.SPECS[0], "float32", synth=synth, obs_fingerprint="o", openpi_commit=g.OPENPI_COMMIT,
                        openpi_max_abs=0.0, openpi_cosine=1.0)
    host = meta["host"]
    assert host == host_info() and host["cpu"] and host["versions"]["jax"] == meta["versions"]["jax"]
    assert g.set_name_for(host) != g.FOREIGN_SET and g.set_name_for({"cpu": "Intel(R) Xeon(R) Platinum 8488C",
                                                                    "isa": ["avx2", "avx512f", "amx_tile"]}) \
        == "intel-xeon-platinum-8488c-amx"


def test_mismatch_verdict_says_when_the_family_spread_covers_the_error():
    """The canary's Python 3.12 llm/block00 line: 34.4 x its own limit but 0.667 x the spread its family showed (limit =
    4 x spread) is a real change that the line qualifies (injected defects at a family's first stage look the same:
    tests/test_golden_defects.py); past both, plainly a real change; within 2x a host question."""
    from pibridge.parity.golden_rules import _cause

    assert _cause(34.4, error=0.667, family_limit=4.0) == "a real change (its family varies this much only at other stages)"
    assert _cause(34.4, error=5.0, family_limit=4.0) == "a real change"
    assert _cause(1.5, error=5.0, family_limit=4.0) == "possibly a host unlike those measured"
