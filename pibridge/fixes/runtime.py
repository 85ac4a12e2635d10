"""Public runtime fixes for a loaded pi0 / pi05 torch policy: pibridge's torch stack or a real LeRobot
PI05Policy / PI0Policy (same module names: `<policy>.model.paligemma_with_expert...`). Each function is idempotent,
returns how many places it changed, and is registered under the id of its configs/fixes.json record
(@runtime_fix); apply_runtime_fixes runs the registered functions of the records that apply.

    from pibridge.fixes.runtime import apply_runtime_fixes
    apply_runtime_fixes(policy, runtime_dtype="bfloat16")        # after from_pretrained
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable

import torch

from pibridge.errors import PibridgeError
from pibridge.fixes import exact, shims
from pibridge.fixes.table import FIXES_JSON, RUNTIME_KINDS, applicable_fixes

RUNTIME_FIXES: dict[str, Callable[[torch.nn.Module], int]] = {}  # fix id -> function(policy) -> places changed


def runtime_fix(fix_id: str):
    """Register `fn` as the function of fixes.json record `fix_id` (kind runtime or runtime-opt-in)."""
    def register(fn):
        if fix_id in RUNTIME_FIXES:
            raise ValueError(f"runtime fix {fix_id!r} registered twice: {RUNTIME_FIXES[fix_id].__name__}, "
                             f"{fn.__name__}")
        RUNTIME_FIXES[fix_id] = fn
        fn.fix_id = fix_id
        return fn
    return register


def _pwe(policy) -> torch.nn.Module:
    model = getattr(policy, "model", policy)
    return getattr(model, "paligemma_with_expert", model)


@runtime_fix("rope-inv-freq-fp32")
def restore_rope_inv_freq(policy) -> int:
    """Recompute every rotary `inv_freq` (and `original_inv_freq`) in fp32: `.to(bfloat16)` rounded them."""
    n = 0
    for module in policy.modules():
        if isinstance(getattr(module, "inv_freq", None), torch.Tensor) and hasattr(module, "config"):
            fp32 = shims.rope_inv_freq(shims.rope_theta(module.config), shims.config_head_dim(module.config))
            for name in ("inv_freq", "original_inv_freq"):
                buf = getattr(module, name, None)
                if isinstance(buf, torch.Tensor) and (buf.dtype != torch.float32 or not torch.equal(buf.cpu(), fp32)):
                    module.register_buffer(name, fp32.to(buf.device), persistent=False)
                    n += 1
    return n


@runtime_fix("image-features-undivided")
def bypass_image_feature_division(policy) -> int:
    """transformers <= 5.3: make get_image_features return the projector output undivided (exact, no
    multiply-back rounding): projector(vision_tower(x).last_hidden_state)."""
    pg_model = _pwe(policy).paligemma.model
    if getattr(pg_model.get_image_features, "_pibridge_fix", False):
        return 0
    original = pg_model.get_image_features

    def get_image_features(self, pixel_values, **kwargs):
        if not shims.image_features_return_output():  # 4.x returns a tensor: tower -> projector, undivided
            return self.multi_modal_projector(self.vision_tower(pixel_values).last_hidden_state)
        out = original(pixel_values, **kwargs)  # 5.0-5.3: keep the output object, replace pooler_output
        out.pooler_output = self.multi_modal_projector(out.last_hidden_state)
        return out

    get_image_features._pibridge_fix = True
    pg_model.get_image_features = types.MethodType(get_image_features, pg_model)
    return 1


@runtime_fix("text-embedding-scaled")
def scale_text_embeddings(policy) -> int:
    """transformers <= 5.3: embed_tokens returns unscaled rows; scale by sqrt(hidden) cast to the table dtype,
    as OpenPI does (gemma.py:150: `x *= jnp.sqrt(self.embed_dim).astype(x.dtype)`)."""
    emb = _pwe(policy).paligemma.model.language_model.embed_tokens
    if shims.text_embedding_is_scaled(emb) or getattr(emb, "_pibridge_fix", False):
        return 0
    factor = math.sqrt(emb.embedding_dim)
    original_forward = emb.forward

    def forward(ids):
        out = original_forward(ids)
        return out * torch.tensor(factor, dtype=emb.weight.dtype)

    emb.forward = forward
    emb._pibridge_fix = True
    return 1


@runtime_fix("double-scaling-lerobot-0.5")
def undo_double_scaling(policy) -> int:
    """LeRobot 0.5.x on transformers >= 5.4: it multiplies by sqrt(hidden) what transformers already scales.
    Make the module scale 1 and pre-divide the image features, so LeRobot 0.5's own multiply yields one scale."""
    pwe = _pwe(policy)
    emb = pwe.paligemma.model.language_model.embed_tokens
    n = 0
    if shims.text_embedding_is_scaled(emb) and float(emb.embed_scale) != 1.0:
        emb.embed_scale.fill_(1.0)
        n += 1
    pg_model = pwe.paligemma.model
    if not getattr(pg_model.get_image_features, "_pibridge_fix", False):
        original = pg_model.get_image_features
        hidden = pwe.paligemma.config.text_config.hidden_size

        def get_image_features(self, pixel_values, **kwargs):
            out = original(pixel_values, **kwargs)
            out.pooler_output = out.pooler_output / hidden ** 0.5
            return out

        get_image_features._pibridge_fix = True
        pg_model.get_image_features = types.MethodType(get_image_features, pg_model)
        n += 1
    return n


@runtime_fix("exact-fp32-attention")
def exact_fp32_attention(policy) -> int:
    """Opt-in: RoPE rotation (cos/sin and q/k) in fp32 rounded once, attention logits and softmax in fp32,
    as OpenPI does (gemma.py:203-227, :424-440). Patches the Gemma attention / rotary modules in place."""
    return exact.install(_pwe(policy))


def apply_runtime_fixes(policy, *, runtime_dtype: str, lerobot_version: str = "0.6.1",
                        transformers_version: str | None = None, exact_fp32: bool = False,
                        skip: tuple[str, ...] = ()) -> dict[str, int]:
    """Apply every runtime fix that configs/fixes.json lists for this runtime (plus the opt-in
    `runtime-opt-in` records when exact_fp32=True), except the ids in `skip` (tests that show one defect).
    Returns {fix id: places changed}."""
    tv = transformers_version or shims.transformers_version()
    kinds = RUNTIME_KINDS if exact_fp32 else ("runtime",)
    done = {}
    for fix in applicable_fixes(tv, lerobot_version, runtime_dtype):
        if fix.kind in kinds and fix.id not in skip:
            done[fix.id] = registered(fix.id)(policy)
    return done


def registered(fix_id: str) -> Callable[[torch.nn.Module], int]:
    if fix_id not in RUNTIME_FIXES:
        raise PibridgeError(f"fix {fix_id!r} of {FIXES_JSON} has no registered function",
                            f"one of {sorted(RUNTIME_FIXES)}",
                            "register one with @runtime_fix in pibridge/fixes/runtime.py")
    return RUNTIME_FIXES[fix_id]
