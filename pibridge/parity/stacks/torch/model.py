"""Our torch pi0 / pi05, structured as LeRobot 0.6 structures it (lerobot/policies/pi05/modeling_pi05.py,
pi_gemma.py at v0.6.1), built from the installed transformers release's own classes: PaliGemmaForConditionalGeneration
(SigLIP vision tower, projector, Gemma language model), GemmaForCausalLM (action expert). State-dict keys are
LeRobot's (`model.paligemma_with_expert...`, `model.action_in_proj...`).

The model is built on the meta device and the weights of OUT/model.safetensors are memory-mapped and assigned
(strict key check), so random weights are never materialised and a full-size model needs one copy in RAM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pibridge.configs import Variant
from pibridge.errors import PibridgeError
from pibridge.fixes import shims as compat
from pibridge.parity.stacks.common import gemma_config, mmap_safetensors, paligemma_config
from pibridge.vocab import KEEP_FP32_SELECTORS


class AdaRMSNorm(nn.Module):
    """pi05 expert norm: RMS-normalise in fp32, then (1+scale)*x + shift from Dense(cond) = [scale|shift|gate].
    Same math as LeRobot's PiGemmaRMSNorm with cond (pi_gemma.py, v0.6.1) and OpenPI gemma.py:112-131."""

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.dense = nn.Linear(cond_dim, 3 * dim, bias=True)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        var = torch.mean(torch.square(x.float()), dim=-1, keepdim=True)
        normed = x * torch.rsqrt(var + self.eps)
        mod = self.dense(cond)
        if x.dim() == 3:
            mod = mod.unsqueeze(1)  # (B, 3D) -> (B, 1, 3D)
        scale, shift, gate = mod.chunk(3, dim=-1)
        return (normed * (1 + scale.float()) + shift.float()).to(x.dtype), gate.to(x.dtype)


class PaliGemmaWithExpert(nn.Module):
    def __init__(self, variant: Variant):
        super().__init__()
        from transformers import GemmaForCausalLM, PaliGemmaForConditionalGeneration

        self.paligemma = PaliGemmaForConditionalGeneration(paligemma_config(variant))
        expert_cfg = gemma_config(variant.action_expert, variant.vocab_size)
        self.gemma_expert = GemmaForCausalLM(expert_cfg)
        self.gemma_expert.model.embed_tokens = None  # the expert has no embedding table (gemma_pytorch.py:58)
        # LeRobot's lm_heads end up untied from embed_tokens (it replaces `.model` after transformers tied them;
        # reference/lerobot.md 2.5): give each its own parameter so both keys load independently.
        for owner in (self.paligemma, self.gemma_expert):
            owner.lm_head.weight = nn.Parameter(torch.empty_like(owner.lm_head.weight))
        for cfg in (self.paligemma.config.text_config, expert_cfg):
            cfg._attn_implementation = "eager"  # LeRobot sets eager before its passes (modeling_pi05.py:646, :693)
        if variant.pi05:  # adaRMS on every expert norm (use_adarms=[False, True])
            w = variant.action_expert.width
            for layer in self.gemma_expert.model.layers:
                layer.input_layernorm = AdaRMSNorm(w, cond_dim=w)
                layer.post_attention_layernorm = AdaRMSNorm(w, cond_dim=w)
            self.gemma_expert.model.norm = AdaRMSNorm(w, cond_dim=w)


class PiCore(nn.Module):
    def __init__(self, variant: Variant):
        super().__init__()
        A, W = variant.action_dim, variant.action_expert.width
        self.paligemma_with_expert = PaliGemmaWithExpert(variant)
        self.action_in_proj = nn.Linear(A, W)
        self.action_out_proj = nn.Linear(W, A)
        if variant.pi05:
            self.time_mlp_in = nn.Linear(W, W)
            self.time_mlp_out = nn.Linear(W, W)
        else:
            self.state_proj = nn.Linear(A, W)
            self.action_time_mlp_in = nn.Linear(2 * W, W)
            self.action_time_mlp_out = nn.Linear(W, W)


class TorchPolicy(nn.Module):
    """Root module: keys start with `model.` as in LeRobot's PI05Policy / PI0Policy."""

    def __init__(self, variant: Variant):
        super().__init__()
        self.variant = variant
        self.model = PiCore(variant)


def load_policy(out_dir: Path, variant: Variant, runtime_dtype: str) -> TorchPolicy:
    """Build on meta, assign OUT's weights with a strict key/shape check, then apply LeRobot's dtype policy."""
    compat.check_supported()
    weights_path = Path(out_dir) / "model.safetensors"
    if not weights_path.is_file():
        raise PibridgeError(f"{weights_path} not found", "a LeRobot policy directory written by `pibridge convert`",
                            "convert the checkpoint first: pibridge convert CKPT OUT")
    mapped = mmap_safetensors(weights_path)
    policy = policy_from_tensors(mapped.tensors, variant, runtime_dtype, source=str(weights_path))
    policy._mapped = mapped  # keep the mapping alive as long as the tensors
    return policy


def policy_from_tensors(tensors: dict[str, torch.Tensor], variant: Variant, runtime_dtype: str, *,
                        source: str = "the state dict", adapt_vision_keys: bool = True) -> TorchPolicy:
    """load_policy on an in-memory LeRobot state dict (tests, test-size variants built with
    state_dict_from_numpy). adapt_vision_keys=False loads the keys as given (shows the 5.6 SigLIP rename)."""
    compat.check_supported()
    with torch.device("meta"):
        policy = TorchPolicy(variant)
    flat = not hasattr(policy.model.paligemma_with_expert.paligemma.model.vision_tower, "vision_model")
    renames = compat.adapt_vision_keys(tensors, flat) if adapt_vision_keys else {k: k for k in tensors}
    tensors = {renames[k]: v for k, v in tensors.items()}
    policy.vision_keys_renamed = sum(k != v for k, v in renames.items())
    _check_keys(policy, tensors, variant, source)
    policy.load_state_dict(tensors, strict=True, assign=True)
    compat.materialize_buffers(policy)
    apply_dtype_policy(policy, runtime_dtype)
    return policy.eval()


def _check_keys(policy: TorchPolicy, tensors: dict[str, torch.Tensor], variant: Variant, source: str) -> None:
    expected = {k: tuple(v.shape) for k, v in policy.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    if missing or unexpected or wrong:
        raise PibridgeError(
            f"{source} does not match the {variant.name} module tree of transformers {compat.transformers_version()}: "
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} wrong shape "
            f"(first: {(missing + unexpected + wrong)[:3]})",
            "exactly the keys and shapes of LeRobot's state dict for this runtime",
            "convert for the installed transformers version (pibridge convert --transformers-version)")


def apply_dtype_policy(policy: TorchPolicy, runtime_dtype: str) -> None:
    """LeRobot's PaliGemmaWithExpertModel.to_bfloat16_for_selected_params (modeling_pi05.py:244-265, v0.6.1):
    cast everything (buffers too: this is what rounds RoPE inv_freq to bf16), then move the selected
    parameters back to fp32. Heads outside paligemma_with_expert stay as loaded (LeRobot: fp32)."""
    pwe = policy.model.paligemma_with_expert
    if runtime_dtype == "float32":
        policy.to(torch.float32)
        return
    if runtime_dtype != "bfloat16":
        raise PibridgeError(f"runtime dtype {runtime_dtype!r}", "float32 or bfloat16", "pass --runtime-dtype float32|bfloat16")
    pwe.to(torch.bfloat16)
    for name, param in pwe.named_parameters():
        if any(sel in name for sel in KEEP_FP32_SELECTORS):
            param.data = param.data.to(torch.float32)
    for name, module in policy.model.named_children():
        if name != "paligemma_with_expert":
            module.to(torch.float32)


def state_dict_from_numpy(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """numpy (ml_dtypes bf16 included) -> torch, bit-exact (bf16 goes through a uint16 view)."""
    out = {}
    for k, a in arrays.items():
        if a.dtype.name == "bfloat16":
            out[k] = torch.from_numpy(np.ascontiguousarray(a).view(np.uint16).copy()).view(torch.bfloat16)
        else:
            out[k] = torch.from_numpy(np.ascontiguousarray(a).copy())
    return out
