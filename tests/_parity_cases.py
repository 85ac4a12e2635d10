"""Test-side parity cases: tiny checkpoints (synth -> convert), shared inputs, both stacks' traces, and the
known defects injected into a loaded torch policy or its inputs (never into product code).

Axis legend: B batch, C cameras, L prompt tokens, T prefix tokens, D width, N heads, H head_dim.
Used by tests/test_tolerances.py, tests/test_goldens.py and tools/measure_tolerances.py.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pibridge.configs import GemmaSize, Variant, load_variant

CAMERA_MAP = "base_0_rgb=top,left_wrist_0_rgb=wrist"


def w96_variant(pi05: bool = True) -> Variant:
    """A test-only size whose sqrt factors are inexact in bf16 (sqrt(96) = 9.798, not a power of 2):
    PaliGemma width 96 / head_dim 24 / 4 heads / 1 kv head / depth 2, expert width 48, SigLIP mu/14."""
    base = load_variant("tiny-pi05" if pi05 else "tiny-pi0")
    return replace(base, name=f"w96-{'pi05' if pi05 else 'pi0'}",
                   paligemma=GemmaSize("custom", 96, 2, 192, 4, 1, 24),
                   action_expert=GemmaSize("custom", 48, 2, 96, 4, 1, 24))


@dataclass(frozen=True)
class Case:
    variant: Variant
    ckpt: Path
    out: Path
    fingerprint: str


def make_case(root: Path, variant: Variant, *, seed: int = 0, sharp: bool = True, outliers: bool = True,
              profile: str | None = None, dtype: str = "float32") -> Case:
    """synth (any Variant: the synth module's variant lookup is redirected for a custom one) then convert."""
    import pibridge.convert.synth as synth
    from pibridge.convert.convert import ConvertRequest, convert

    profile = profile or ("pi05_droid" if variant.pi05 else "pi0_droid")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    original = synth.load_variant
    synth.load_variant = lambda name: variant if name == variant.name else original(name)
    try:
        res = synth.write_synthetic_checkpoint(root / "ck", variant=variant.name, seed=seed, profile=profile,
                                               asset_id="droid", sharp_attention=sharp, outliers=outliers,
                                               dtype=dtype)
    finally:
        synth.load_variant = original
    convert(ConvertRequest(root / "ck", root / "out", profile, camera_map=CAMERA_MAP, allow_tiny=True),
            console=_quiet_console())
    return Case(variant, root / "ck", root / "out", res.fingerprint)


def _quiet_console():
    import io

    from rich.console import Console

    return Console(file=io.StringIO())


def long_inputs(variant: Variant, *, token_len: int = 200, prompt_lens=(190, 37), seed: int = 0):
    """Batch 2, 3 cameras (sample 1's right wrist masked), a long prompt: T = 768 + token_len positions."""
    from pibridge.parity.stacks.jax.testing import synthetic_inputs

    return synthetic_inputs(variant, list(prompt_lens), token_len, masked=[(1, 2)], seed=seed)


def noise_for(batch: int, horizon: int, seed: int = 0) -> np.ndarray:
    from pibridge.parity.stacks.jax.testing import synthetic_noise

    return synthetic_noise(batch, horizon, seed=seed)


def jax_trace(case: Case, inputs, noise, precision: str, num_steps: int):
    from pibridge.convert.reader import open_checkpoint
    from pibridge.parity.stacks.jax import run_policy
    from pibridge.parity.stages import StageRecorder

    rec = StageRecorder()
    run_policy(open_checkpoint(case.ckpt).read_tree(), case.variant, inputs, noise, precision=precision,
               num_steps=num_steps, record=rec)
    return _trace(rec, "jax", precision)


def load_torch(case: Case, runtime_dtype: str, fixes: bool = True):
    from pibridge.fixes.runtime import apply_runtime_fixes
    from pibridge.parity.stacks.torch.model import load_policy

    policy = load_policy(case.out, case.variant, runtime_dtype)
    if fixes:
        apply_runtime_fixes(policy, runtime_dtype=runtime_dtype, lerobot_version="0.6.1")
    return policy


def torch_trace(policy, inputs, noise, precision: str, num_steps: int, semantics: str = "0.6"):
    from pibridge.parity.stages import StageRecorder
    from pibridge.parity.stacks.torch.forward import sample_actions

    rec = StageRecorder()
    sample_actions(policy, inputs, noise, num_steps=num_steps, recorder=rec, semantics=semantics)
    return _trace(rec, "torch", precision)


def _trace(rec, stack: str, precision: str):
    from pibridge.parity.trace import Trace

    return Trace({s.name: s for s in rec}, {"stack": stack, "precision": precision})


# --- defects (each mimics a real upstream bug; injected here, never switchable in product code) ------------

def _pg(policy):
    return policy.model.paligemma_with_expert.paligemma


def defect_image_features_divided(policy) -> None:
    """transformers <= 5.3 with LeRobot 0.6: image features divided by sqrt(text width) and not multiplied back."""
    model = _pg(policy).model
    original = model.get_image_features
    root = math.sqrt(_pg(policy).config.text_config.hidden_size)

    def get_image_features(self, pixel_values, **kw):
        out = original(pixel_values, **kw)
        out.pooler_output = out.pooler_output / root
        return out

    model.get_image_features = types.MethodType(get_image_features, model)


def defect_text_scaled_twice(policy) -> None:
    """LeRobot 0.5 text path on transformers >= 5.4: embed_tokens scales by sqrt(D) and the caller again."""
    emb = _pg(policy).model.language_model.embed_tokens
    original = emb.forward
    emb.forward = lambda ids: original(ids) * math.sqrt(emb.embedding_dim)


def defect_swapped_heads(policy, layer: int = 1, heads=(0, 1)) -> None:
    """Swap two q_proj head blocks of one PaliGemma layer (a wrong head reshape in a converter)."""
    import torch

    attn = _pg(policy).model.language_model.layers[layer].self_attn
    w = attn.q_proj.weight.detach().clone()  # (N*H, D)
    hd = w.shape[0] // attn.config.num_attention_heads
    a, b = heads
    w[a * hd:(a + 1) * hd], w[b * hd:(b + 1) * hd] = w[b * hd:(b + 1) * hd].clone(), w[a * hd:(a + 1) * hd].clone()
    attn.q_proj.weight = torch.nn.Parameter(w, requires_grad=False)


def defect_dropped_norm_scale(policy, layer: int = 1) -> None:
    """Zero one PaliGemma input_layernorm weight (Gemma multiplies by 1 + w): the learned scale is lost."""
    norm = _pg(policy).model.language_model.layers[layer].input_layernorm
    norm.weight.data = norm.weight.data.clone().zero_()


def defect_cameras_swapped(inputs):
    """The first two camera slots exchanged (a wrong camera map on one side)."""
    from pibridge.parity.inputs import ModelInputs

    order = [1, 0] + list(range(2, inputs.num_cameras))
    return ModelInputs(inputs.images[:, order], inputs.image_mask[:, order], inputs.state, inputs.tokens,
                       inputs.token_mask)


def emulate_unscaled_text_embedding(policy) -> None:
    """transformers <= 5.3 layout: a plain nn.Embedding (no embed_scale) sharing the table."""
    import torch

    lm = _pg(policy).model.language_model
    old = lm.embed_tokens
    plain = torch.nn.Embedding(old.num_embeddings, old.embedding_dim, padding_idx=old.padding_idx, device="meta")
    plain.weight = old.weight
    lm.embed_tokens = plain


def late_rows_rms(a, b, stage: str, frac: float = 0.25) -> float:
    """RMS of b - a over the rows in the last `frac` of each sample's valid prefix positions (stage (B, T, ...))."""
    mask = a.stages["prefix/mask"].value.astype(bool)  # (B, T)
    sq, n = 0.0, 0
    for i in range(mask.shape[0]):
        rows = np.flatnonzero(mask[i])
        late = rows[int(len(rows) * (1 - frac)):]
        d = (a.stages[stage].value[i, late] - b.stages[stage].value[i, late]).astype(np.float64)
        sq, n = sq + float((d ** 2).sum()), n + d.size
    return (sq / n) ** 0.5
