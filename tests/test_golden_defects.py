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
    sets = g.golden_sets(GOLDEN_ROOT)
    set_dir = next(d for d in sets if (d / spec.trace_name(precision)).is_file())
    inputs, noise, _ = g.load_inputs(g.inputs_path(sets, spec))
    golden = read_trace(set_dir / spec.trace_name(precision))
    with patch() if patch else contextlib.nullcontext():
        _, stages = golden_stages(edit(params[variant]) if edit else params[variant], load_variant(variant),
                                        inputs, noise, precision)
    result = check_golden(g.case_name(spec, precision), golden, stages, golden_host=g.set_host(set_dir, golden))
    assert not result.passed, f"{name} went unnoticed"
    assert result.first_failure.name == first[precision], result.explain()
    assert "a real change" in result.explain(limit=1), result.explain(limit=1)  # limit=1: the first stage only


# The LoRA golden (goldens.LORA_SPECS: rank 4 alpha 8, rsLoRA on PaliGemma -> attention scalings 4 and 2, MLP
# unscaled as in lora.FeedForward) is loud on the LoRA slips a stack could make: name -> (edit of the flat tree,
# settings the stack is told), each failing at its first stage. Traces keep the suffix stages only, so LoRA on
# PaliGemma shows first where the expert attends to the KV cache.
def _lora_defect(name: str, flat: dict, settings: dict):
    from dataclasses import replace

    if name == "none":  # the control: the same route (prepare_params with the settings) passes
        return flat, settings
    if name == "factors dropped":
        return {p: a for p, a in flat.items() if "lora" not in "/".join(p)}, None
    if name == "attention LoRA unscaled":
        return flat, {k: replace(v, alpha=float(v.rank), rslora=False) for k, v in settings.items()}
    if name == "rsLoRA ignored":
        return flat, {k: replace(v, rslora=False) for k, v in settings.items()}
    if name == "MLP LoRA scaled":  # the attention scaling applied to lora.FeedForward's factors too
        scale = {0: settings[(0, "attn")].scaling, 1: settings[(1, "attn")].scaling}
        return {p: a * scale[1 if p[-2].endswith("_1") else 0] if p[-1].endswith("_lora_b") else a
                for p, a in flat.items()}, settings
    raise KeyError(name)


LORA_RUNS = [pytest.param(d, p, marks=[pytest.mark.slow] if p == "bf16" else [])
             for d in ("none", "factors dropped", "attention LoRA unscaled", "rsLoRA ignored", "MLP LoRA scaled")
             for p in g.PRECISIONS]


@pytest.mark.parametrize(("name", "precision"), LORA_RUNS)
def test_lora_defect_fails_the_lora_golden_at_its_first_stage(name, precision, tmp_path_factory):
    from pibridge.configs import load_variant
    from pibridge.convert.reader import open_checkpoint
    from pibridge.parity.golden_rules import check_golden
    from pibridge.parity.stacks.jax import get_policy, prepare_params
    from pibridge.parity.stacks.jax.params import flatten, nest
    from pibridge.parity.trace import read_trace

    spec = g.LORA_SPECS[0]
    variant = load_variant(spec.variant)
    ck = g.write_checkpoint(spec, tmp_path_factory.mktemp("lora-defect") / "ck").out
    flat, settings = _lora_defect(name, flatten(open_checkpoint(ck).read_tree()), spec.lora_request().settings())
    tree = nest(flat)
    params = prepare_params(tree, variant, get_policy(precision), lora=settings) if settings else tree
    sets = g.golden_sets(GOLDEN_ROOT)
    set_dir = next(d for d in sets if (d / spec.trace_name(precision)).is_file())
    golden = read_trace(set_dir / spec.trace_name(precision))
    inputs, noise, _ = g.load_inputs(g.inputs_path(sets, spec))
    _, stages = golden_stages(params, variant, inputs, noise, precision, spec)
    result = check_golden(g.case_name(spec, precision), golden, stages, golden_host=g.set_host(set_dir, golden))
    if name == "none":
        assert result.passed, result.explain()
        return
    assert not result.passed, f"{name} went unnoticed"
    assert result.first_failure.name == "expert/step00/block00", result.explain()
    assert "a real change" in result.explain(limit=1), result.explain(limit=1)
