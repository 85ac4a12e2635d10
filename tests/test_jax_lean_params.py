"""Lean float32 parameters: a bf16-stored checkpoint run in float32 keeps its leaves bfloat16 and casts them inside
each jitted call (jax_stack/precision.py). bf16 -> float32 is exact, so every stage must be BIT-identical to casting
every leaf up front (the pre-lean path), whether the leaves come from a numpy tree or from the checkpoint read one
leaf at a time; bf16 precision is untouched (tests/test_jax_stack.py and tests/test_goldens.py pin it to OpenPI).
"""

from __future__ import annotations

import numpy as np
import pytest

from pibridge.configs import load_variant
from pibridge.convert.reader import open_checkpoint
from pibridge.convert.synth import write_synthetic_checkpoint
from pibridge.parity.stacks.jax import get_policy, prepare_params, run_policy
from pibridge.parity.stacks.jax.testing import synthetic_inputs, synthetic_noise
from pibridge.parity.stages import StageRecorder

pytestmark = [pytest.mark.jax]


def _leaves(m) -> list:
    import jax

    return jax.tree.leaves((m.img_embed, m.img_blocks, m.img_head, m.embedder, m.llm_layers, m.final_norm_expert,
                            m.heads))


def _run(params, variant, precision):
    rec = StageRecorder()
    inputs = synthetic_inputs(variant, [9, 4], 12, masked=[(1, 2)])
    actions = run_policy(params, variant, inputs, synthetic_noise(2, 10), precision=precision, num_steps=3, record=rec)
    return actions, {s.name: s.value for s in rec}


@pytest.mark.parametrize("name", ["tiny-pi05", "tiny-pi0"])
def test_float32_on_bf16_leaves_is_bit_identical_to_the_up_front_cast(tmp_path, name):
    variant = load_variant(name)
    profile = "pi05_droid" if variant.pi05 else "pi0_droid"
    write_synthetic_checkpoint(tmp_path / "ck", variant=name, seed=3, dtype="bfloat16", profile=profile,
                               asset_id="droid", sharp_attention=True, outliers=True)
    ck = open_checkpoint(tmp_path / "ck")
    f32 = get_policy("float32")
    upfront = prepare_params(ck.read_tree(), variant, f32, cast_up_front=True)
    lean = prepare_params(ck, variant, f32)
    assert {str(a.dtype) for a in _leaves(upfront)} == {"float32"}
    assert {str(a.dtype) for a in _leaves(lean)} == {"bfloat16"}  # half the memory
    ref_actions, ref = _run(upfront, variant, "float32")
    for params in (ck.read_tree(), ck):  # numpy tree; checkpoint read leaf by leaf (as prepared in `lean`)
        actions, stages = _run(params, variant, "float32")
        assert list(stages) == list(ref)
        np.testing.assert_array_equal(actions, ref_actions)
        for stage, value in ref.items():
            assert np.array_equal(stages[stage], value), (stage, float(np.abs(stages[stage] - value).max()))


def test_bf16_precision_still_casts_float32_leaves_up_front(tmp_path):
    write_synthetic_checkpoint(tmp_path / "ck", variant="tiny-pi05", seed=0, profile="pi05_droid", asset_id="droid")
    m = prepare_params(open_checkpoint(tmp_path / "ck"), load_variant("tiny-pi05"), get_policy("bf16"))
    assert {str(a.dtype) for a in _leaves(m)} == {"bfloat16"}


def test_capture_fingerprints_the_checkpoint_while_loading_it(tmp_path):
    """A checkpoint without a recorded fingerprint (a real one) is hashed as prepare_params reads its leaves, with
    the same result as the separate pass `OpenPICheckpoint.fingerprint()` makes, and the same params."""
    from pibridge.convert.fingerprint import Fingerprint
    from pibridge.parity.stacks.jax.capture import fingerprinting

    write_synthetic_checkpoint(tmp_path / "ck", variant="tiny-pi0", seed=1, dtype="bfloat16", profile="pi0_droid",
                               asset_id="droid")
    ck, variant, fp = open_checkpoint(tmp_path / "ck"), load_variant("tiny-pi0"), Fingerprint()
    m = prepare_params(fingerprinting(ck, fp), variant, get_policy("float32"))
    assert fp.hexdigest() == ck.fingerprint() == ck.synth_record["fingerprint"]
    plain = prepare_params(ck, variant, get_policy("float32"))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(_leaves(m), _leaves(plain)))
