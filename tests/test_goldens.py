"""Goldens (tests/golden/, made by tools/make_goldens.py and validated then against OpenPI's own Pi0):
the synth formula and the observation still produce what the goldens were made from, OpenPI's preprocessing still
gives the stored inputs, the JAX stack reproduces every recorded stage, and the torch stack on the converted
checkpoint matches them within configs/tolerances.json (float32, and bf16 with the runtime fixes)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from pibridge.parity import goldens as g
from pibridge.parity.trace import read_trace

pytestmark = [pytest.mark.jax, pytest.mark.torch]
GOLDEN = Path(__file__).parent / "golden"
TOKENIZER = Path(__file__).parent / "data" / "test_spm.model"
CASES = [(s, p) for s in g.SPECS for p in g.PRECISIONS]


def _id(case):
    return case[0].trace_name(case[1]).removesuffix(".safetensors")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """spec.variant -> (synth result, converted OUT), made fresh with today's code."""
    from rich.console import Console

    from pibridge.convert.convert import ConvertRequest, convert

    root, out = tmp_path_factory.mktemp("goldens"), {}
    for spec in g.SPECS:
        synth = g.write_checkpoint(spec, root / f"ck-{spec.variant}")
        dest = root / f"out-{spec.variant}"
        convert(ConvertRequest(synth.out, dest, spec.profile, camera_map="base_0_rgb=top,left_wrist_0_rgb=wrist",
                               allow_tiny=True), console=Console(file=io.StringIO()))
        out[spec.variant] = (synth, dest)
    return out


def _golden(spec, precision):
    return read_trace(GOLDEN / spec.trace_name(precision))


def test_goldens_exist_small_and_validated():
    total = sum(f.stat().st_size for f in GOLDEN.iterdir())
    assert total < 20e6
    for spec, precision in CASES:
        meta = _golden(spec, precision).meta
        assert meta["openpi_commit"] == g.OPENPI_COMMIT
        assert meta["openpi_actions_max_abs"] <= (g.FP32_LIMIT if precision == "float32" else 1e-2)
        assert meta["num_steps"] == g.NUM_STEPS and meta["precision"] == precision
        assert set(meta["versions"]) == {"jax", "flax"}


@pytest.mark.parametrize("spec", g.SPECS, ids=lambda s: s.variant)
def test_synth_and_observation_still_match_the_goldens(spec, made):
    """A changed synth formula or observation generator changes a fingerprint: regenerate goldens then."""
    synth, _ = made[spec.variant]
    obs = g.golden_observation(spec)
    for precision in g.PRECISIONS:
        meta = _golden(spec, precision).meta
        assert meta["checkpoint_fingerprint"] == synth.fingerprint
        assert meta["observation_fingerprint"] == obs.fingerprint()


@pytest.mark.parametrize("spec", g.SPECS, ids=lambda s: s.variant)
def test_openpi_preprocessing_gives_the_stored_inputs(spec, made):
    synth, _ = made[spec.variant]
    stored, noise, _ = g.load_inputs(GOLDEN / spec.inputs_name)
    pre = g.golden_inputs(spec, g.golden_observation(spec), synth.out, TOKENIZER)
    np.testing.assert_array_equal(pre.inputs.images, stored.images)
    np.testing.assert_array_equal(pre.inputs.image_mask, stored.image_mask)
    assert stored.image_mask.tolist()[1][1] is False and stored.token_mask.sum(1)[0] != stored.token_mask.sum(1)[1]
    np.testing.assert_array_equal(pre.inputs.tokens, stored.tokens)
    np.testing.assert_array_equal(pre.inputs.state, stored.state)
    np.testing.assert_array_equal(g.golden_observation(spec).noise, noise)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_jax_stack_reproduces_golden(case, made):
    from pibridge.configs import load_variant
    from pibridge.convert.reader import open_checkpoint

    spec, precision = case
    golden = _golden(spec, precision)
    inputs, noise, _ = g.load_inputs(GOLDEN / spec.inputs_name)
    synth, _ = made[spec.variant]
    _, stages = g.jax_golden_stages(open_checkpoint(synth.out).read_tree(), load_variant(spec.variant), inputs,
                                    noise, precision)
    assert [s.name for s in stages] == golden.order
    for s in stages:
        ref = golden.stages[s.name]
        valid = ref.valid_full()
        scale = 1.0 + float(np.abs(ref.value[valid]).max(initial=0.0))
        err = float(np.abs(s.value - ref.value)[valid].max(initial=0.0))
        # exact on the machine that made them; other CPUs / XLA builds may reorder float32 sums slightly
        assert err <= 1e-5 * scale, f"{s.name}: max-abs {err:.3e}"


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_torch_stack_matches_golden_within_tolerances(case, made):
    from pibridge.configs import load_variant
    from pibridge.parity.compare import compare
    from pibridge.parity.runtime_fixes import apply_runtime_fixes
    from pibridge.parity.stages import StageRecorder
    from pibridge.parity.torch_stack.forward import sample_actions
    from pibridge.parity.torch_stack.model import load_policy
    from pibridge.parity.trace import Trace

    spec, precision = case
    runtime = "float32" if precision == "float32" else "bfloat16"
    inputs, noise, _ = g.load_inputs(GOLDEN / spec.inputs_name)
    policy = load_policy(made[spec.variant][1], load_variant(spec.variant), runtime)
    apply_runtime_fixes(policy, runtime_dtype=runtime, lerobot_version="0.6.1")
    rec = StageRecorder()
    sample_actions(policy, inputs, noise, num_steps=g.NUM_STEPS, recorder=rec)
    result = compare(_golden(spec, precision), Trace({s.name: s for s in rec}, {"precision": precision}))
    assert result.precision == precision
    assert not [r.name for r in result.results if r.status == "no-rule"]
    bad = [(r.name, r.metrics and (r.metrics.cosine, r.metrics.max_abs)) for r in result.results if r.failed]
    assert result.passed, bad
    assert len(result.results) == len(_golden(spec, precision).order)
