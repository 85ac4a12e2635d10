"""The JAX stack on tiny variants (project venv, no OpenPI import).

Equality with OpenPI's own Pi0.sample_actions is checked by tools/validate_jax_stack.py, which needs OpenPI's
source and its scratch venv; these tests check the stack's own contract: shapes, determinism, recording,
batching, masking, precision policies, stage names and order.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from pibridge.configs import load_variant
from pibridge.errors import PibridgeError
from pibridge.parity import stages as st
from pibridge.parity.inputs import ModelInputs
from pibridge.parity.stacks.jax import euler_times, get_policy, prepare_params, run_policy
from pibridge.parity.stacks.jax.testing import synthetic_inputs, synthetic_noise, synthetic_params
from pibridge.parity.stages import StageRecorder

pytestmark = pytest.mark.jax
HORIZON, TOKENS = 10, 48  # pi0_droid / pi05_libero horizon; pi0's default max_token_len


class Case:
    """A variant with params, a batch of 2 (camera 2 of sample 1 masked, prompts of 20 and 11 tokens), noise,
    and the reference f32 / bf16 runs (recorded)."""

    def __init__(self, name: str):
        self.variant = load_variant(name)
        self.params = synthetic_params(self.variant)
        self.inputs = synthetic_inputs(self.variant, [20, 11], TOKENS, masked=[(1, 2)])
        self.noise = synthetic_noise(2, HORIZON)
        self.rec = {p: StageRecorder() for p in ("float32", "bf16")}
        self.actions = {p: run_policy(self.params, self.variant, self.inputs, self.noise, precision=p,
                                      record=self.rec[p]) for p in ("float32", "bf16")}
        self.prepared = {p: prepare_params(self.params, self.variant, get_policy(p)) for p in ("float32", "bf16")}

    def run(self, inputs: ModelInputs | None = None, noise=None, precision="float32", **kw) -> np.ndarray:
        """run_policy on the prepared (cast, per-layer) params of `precision`."""
        return run_policy(self.prepared[precision], self.variant, self.inputs if inputs is None else inputs,
                          self.noise if noise is None else noise, precision=precision, **kw)

    def with_inputs(self, **changes) -> ModelInputs:
        fields = {k: getattr(self.inputs, k).copy() for k in ("images", "image_mask", "state", "tokens", "token_mask")}
        fields.update(changes)
        return ModelInputs(**fields)


@pytest.fixture(scope="module", params=["tiny-pi05", "tiny-pi0"])
def case(request) -> Case:
    return Case(request.param)


def test_shapes_and_finite(case):
    for precision, actions in case.actions.items():
        assert actions.shape == (2, HORIZON, 32) and actions.dtype == np.float32, precision
        assert np.isfinite(actions).all()
        assert np.abs(actions).max() > 0.1  # not collapsed


def test_deterministic_and_recording_does_not_change_numerics(case):
    for precision in ("float32", "bf16"):
        again = case.run(precision=precision)  # no recorder, prepared params instead of the tree
        np.testing.assert_array_equal(again, case.actions[precision])
        np.testing.assert_array_equal(case.rec[precision]["actions"].value, case.actions[precision])


def test_stage_names_order_and_shapes(case):
    v, rec = case.variant, case.rec["float32"]
    assert rec.names == st.stage_order(v.siglip.depth, v.paligemma.depth, 10)
    b, c, d, de, t = 2, 3, v.paligemma.width, v.action_expert.width, 3 * 256 + TOKENS
    s = HORIZON if v.pi05 else HORIZON + 1
    shapes = {"input/image": (b, c, 224, 224, 3), "input/image_mask": (b, c), "input/tokens": (b, TOKENS),
              "img/embed": (b * c, 256, v.siglip.width), "img/block00": (b * c, 256, v.siglip.width),
              "img/out": (b * c, 256, v.siglip.width), "img/tokens": (b, c * 256, d), "prefix/embeds": (b, t, d),
              "prefix/mask": (b, t), "llm/block03": (b, t, d), "llm/kv00/k": (b, t, 1, v.paligemma.head_dim),
              "suffix/time": (10, b, de), "expert/step09/block03": (b, s, de), "velocity/step09": (b, HORIZON, 32)}
    for name, shape in shapes.items():
        assert rec[name].value.shape == shape, name
    assert all(stage.seconds >= 0 for stage in rec) and sum(rec.timings().values()) > 0


def test_validity_masks_follow_masked_camera_and_padding(case):
    rec = case.rec["float32"]
    cam = rec["img/block00"].valid_full()[:, 0, 0]
    np.testing.assert_array_equal(cam, [True] * 5 + [False])  # (b=1, camera 2) -> row 1*3+2, b-major
    prefix = rec["prefix/mask"].value.astype(bool)
    assert prefix[0].sum() == 3 * 256 + 20 and prefix[1].sum() == 2 * 256 + 11
    np.testing.assert_array_equal(rec["llm/block02"].valid_full()[:, :, 0], prefix)
    np.testing.assert_array_equal(rec["llm/kv01/v"].valid_full()[:, :, 0, 0], prefix)
    np.testing.assert_array_equal(rec["img/tokens"].valid_full()[:, :, 0], prefix[:, :3 * 256])
    np.testing.assert_array_equal(rec["input/tokens"].valid_full(), case.inputs.token_mask)


def test_stage_values_match_contract_semantics(case):
    rec, x = case.rec["float32"], case.inputs
    np.testing.assert_array_equal(rec["input/image"].value, x.images)
    # cameras batched b-major through the ViT, then regrouped per sample in slot order
    head = case.params["PaliGemma"]["img"]["head"]  # projector: (B*C, 256, D_vit) -> (B, C*256, D)
    out = rec["img/out"].value.reshape(2, 3 * 256, -1) @ head["kernel"] + head["bias"]
    np.testing.assert_allclose(rec["img/tokens"].value, out, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(rec["prefix/embeds"].value[:, :3 * 256], rec["img/tokens"].value)
    # text embeddings are table[token] * sqrt(D) (gemma.py:148-151)
    table = case.params["PaliGemma"]["llm"]["embedder"]["input_embedding"]
    text = rec["prefix/embeds"].value[0, 3 * 256:3 * 256 + 20]
    np.testing.assert_allclose(text, table[x.tokens[0, :20]] * np.sqrt(table.shape[1]), rtol=1e-6)
    np.testing.assert_array_equal(rec["velocity/step00"].value.shape, case.noise.shape)


def test_euler_update_reproduces_actions(case):
    rec = case.rec["float32"]
    x = case.noise.astype(np.float32)
    for k in range(10):
        x = x + np.float32(-0.1) * rec[st.velocity(k)].value
    np.testing.assert_allclose(x, case.actions["float32"], atol=1e-6)


def test_batch_consistency(case):
    for b in range(2):
        alone = case.run(case.inputs.take([b]), case.noise[b:b + 1])
        np.testing.assert_allclose(alone[0], case.actions["float32"][b], atol=2e-5)


def test_masked_camera_pixels_and_padded_tokens_do_not_matter(case):
    images = case.inputs.images.copy()
    images[1, 2] = 0.123  # the masked camera
    tokens = case.inputs.tokens.copy()
    tokens[1, 11:] = 7  # padding of sample 1
    np.testing.assert_array_equal(case.run(case.with_inputs(images=images, tokens=tokens)), case.actions["float32"])
    mask = case.inputs.image_mask.copy()
    mask[0, 1] = False  # masking a camera does change the actions
    assert np.abs(case.run(case.with_inputs(image_mask=mask))[0] - case.actions["float32"][0]).max() > 1e-3


def test_state_enters_pi0_only(case):
    changed = case.run(case.with_inputs(state=case.inputs.state + 0.5))
    diff = np.abs(changed - case.actions["float32"]).max()
    if case.variant.pi05:
        assert diff == 0.0  # pi05 sees the state only through the prompt (pi0.py:151)
    else:
        assert diff > 1e-3


def test_bf16_close_to_float32(case):
    f32, bf16 = case.actions["float32"], case.actions["bf16"]
    assert not np.array_equal(f32, bf16)  # the bf16 policy really runs in bf16
    cos = float(np.sum(f32 * bf16) / (np.linalg.norm(f32) * np.linalg.norm(bf16)))
    assert cos > 0.998
    assert np.linalg.norm(f32 - bf16) / np.linalg.norm(f32) < 0.05
    assert case.rec["bf16"]["img/embed"].value.dtype == np.float32  # stages are stored fp32


def test_other_horizon_and_step_count(case):
    noise = synthetic_noise(2, 15, seed=1)
    rec = StageRecorder()
    actions = case.run(noise=noise, num_steps=3, record=rec)
    assert actions.shape == (2, 15, 32) and np.isfinite(actions).all()
    assert rec.names[-1] == "actions" and "velocity/step02" in rec and "velocity/step03" not in rec


def test_euler_times_follow_openpi_loop():
    dt, times = euler_times(10)
    assert dt == -0.1 and len(times) == 10 and times[0] == np.float32(1.0)
    assert all(t.dtype == np.float32 for t in times) and abs(times[-1] - 0.1) < 1e-6
    assert len(euler_times(1)[1]) == 1 and len(euler_times(3)[1]) == 3
    with pytest.raises(PibridgeError):
        euler_times(0)


def test_matmul_precision_is_scoped_to_the_call(case):
    assert jax.config.jax_default_matmul_precision is None  # nothing set at import or left after runs


def test_bad_input_is_reported(case):
    with pytest.raises(PibridgeError, match="precision"):
        run_policy(case.params, case.variant, case.inputs, case.noise, precision="fp16")
    with pytest.raises(PibridgeError, match="prepared params"):
        run_policy(case.prepared["bf16"], case.variant, case.inputs, case.noise, precision="float32")
    with pytest.raises(PibridgeError, match="noise"):
        case.run(noise=case.noise[:, :, :8])
    other = load_variant("tiny-pi0" if case.variant.pi05 else "tiny-pi05")
    with pytest.raises(PibridgeError, match="does not match variant"):
        run_policy(case.params, other, case.inputs, case.noise)
    with pytest.raises(PibridgeError, match="ModelInputs.images"):
        ModelInputs(case.inputs.images[:, :, :100], case.inputs.image_mask, case.inputs.state,
                    case.inputs.tokens, case.inputs.token_mask)


def test_training_layout_and_extra_leaves(case):
    """A {"params": ...} root and trailing "value" keys are accepted (model.py:327-331); a lone LoRA factor is not."""
    from pibridge.parity.stacks.jax.params import flatten, nest

    flat = flatten(case.params)
    wrapped = {"params": nest({p + ("value",): a for p, a in flat.items()})}
    m = prepare_params(wrapped, case.variant, get_policy("float32"))
    np.testing.assert_array_equal(np.asarray(m.llm_layers[1]["attn"]["q_einsum"]["w"]),
                                  case.params["PaliGemma"]["llm"]["layers"]["attn"]["q_einsum"]["w"][1])
    lora = dict(flat)
    lora[("PaliGemma", "llm", "layers", "attn", "q_einsum", "lora_a")] = np.zeros((4, 8, 64, 2), np.float32)
    with pytest.raises(PibridgeError, match="without its partner"):
        prepare_params(nest(lora), case.variant, get_policy("float32"))
