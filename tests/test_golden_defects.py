"""The golden rules are loud on what a jax / flax release could change: each defect of tests/_jax_defects.py,
injected into today's JAX stack, fails the golden check of tests/golden/ at the first stage it touches (and the
mismatch report calls it a real change, not host round-off). The quiet side is tests/test_goldens.py."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from pibridge.parity import goldens as g
from pibridge.parity.stacks.jax.capture import golden_stages

pytestmark = [pytest.mark.jax]
GOLDEN_ROOT = Path(__file__).parent / "golden"
SPECS = {s.variant: s for s in g.SPECS}
# every defect on every precision it applies to: tiny-pi05 in the gate, tiny-pi0 (float32) behind -m slow
RUNS = [pytest.param(d, v, p, marks=[pytest.mark.slow] if v == "tiny-pi0" else [])
        for d in sorted(__import__("_jax_defects").DEFECTS)
        for v, p in (("tiny-pi05", "float32"), ("tiny-pi05", "bf16"), ("tiny-pi0", "float32"))
        if p in __import__("_jax_defects").DEFECTS[d][2]]


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    from pibridge.convert.reader import open_checkpoint

    root = tmp_path_factory.mktemp("defects")
    return {v: open_checkpoint(g.write_checkpoint(s, root / v).out).read_tree() for v, s in SPECS.items()}


@pytest.mark.parametrize(("name", "variant", "precision"), RUNS)
def test_defect_fails_golden_at_its_first_stage(name, variant, precision, params):
    from _jax_defects import DEFECTS

    from pibridge.configs import load_variant
    from pibridge.parity.golden_rules import check_golden
    from pibridge.parity.trace import read_trace

    patch, edit, first = DEFECTS[name]
    spec = SPECS[variant]
    set_dir = g.golden_sets(GOLDEN_ROOT)[0]
    inputs, noise, _ = g.load_inputs(set_dir / spec.inputs_name)
    golden = read_trace(set_dir / spec.trace_name(precision))
    with patch() if patch else contextlib.nullcontext():
        _, stages = golden_stages(edit(params[variant]) if edit else params[variant], load_variant(variant),
                                        inputs, noise, precision)
    result = check_golden(g.case_name(spec, precision), golden, stages, golden_host=g.set_host(set_dir, golden))
    assert not result.passed, f"{name} went unnoticed"
    assert result.first_failure.name == first[precision], result.explain()
    assert "a real change" in result.explain(limit=1), result.explain(limit=1)  # limit=1: the first stage only
