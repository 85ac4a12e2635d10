"""Opt-in fp32-exact attention for Gemma layers (runtime fix exact-fp32-attention, pibridge.fixes.runtime).

Every transformers release rounds two things to the activation dtype that OpenPI JAX keeps in fp32:
- RoPE: the rotary module returns cos/sin cast to x.dtype and `apply_rotary_pos_emb` rotates in bf16
  (transformers modeling_gemma GemmaRotaryEmbedding.forward / apply_rotary_pos_emb, 4.53 ... 5.25);
  OpenPI rotates in fp32 and rounds once (openpi gemma.py:424-440, `assert res.dtype == jnp.float32`).
- Attention logits: eager attention computes `q @ k^T * scaling` in bf16 before the fp32 softmax;
  OpenPI scales q by head_dim**-0.5 after RoPE (gemma.py:203-204) and accumulates the logits in fp32
  (`preferred_element_type=jnp.float32`, gemma.py:217), softmax fp32, probs cast to bf16 (:224-227).
This module reproduces OpenPI's order on the installed release's own modules (q/k/v/o projections, caches).

Axis legend: B batch, T query tokens, S key tokens, N heads, K kv heads, G = N/K, H head_dim.
"""

from __future__ import annotations

import types

import torch

from pibridge.fixes import shims

MARK = "_pibridge_exact_fp32"
CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")


def _rotary_forward_fp32(self, x: torch.Tensor, position_ids: torch.Tensor):
    """cos/sin in fp32 from fp32 inverse frequencies, whatever dtype the buffer was cast to."""
    inv_freq = shims.rope_inv_freq(shims.rope_theta(self.config), shims.config_head_dim(self.config))
    freqs = position_ids.to(torch.float32)[..., None] * inv_freq.to(x.device)  # (B, T) -> (B, T, H/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (B, T, H/2) -> (B, T, H): rotate-half layout
    return emb.cos(), emb.sin()


def _rotate_fp32(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE in fp32, rounded once to x.dtype. x (B, N, T, H), cos/sin (B, T, H)."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos[:, None].float() + rotated * sin[:, None].float()).to(x.dtype)


def _attention_forward_exact(self, hidden_states, position_embeddings, attention_mask=None, **kwargs):
    """GemmaAttention.forward with OpenPI's precision order; returns (output, None) like eager attention."""
    cache = next((kwargs[k] for k in CACHE_KWARGS if kwargs.get(k) is not None), None)
    B, T = hidden_states.shape[:2]
    H = self.head_dim
    shape = (B, T, -1, H)
    q = self.q_proj(hidden_states).view(shape).transpose(1, 2)  # (B, T, N*H) -> (B, N, T, H)
    k = self.k_proj(hidden_states).view(shape).transpose(1, 2)  # (B, T, K*H) -> (B, K, T, H)
    v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
    cos, sin = position_embeddings
    q = _rotate_fp32(q, cos, sin)
    q = q * H ** -0.5  # after RoPE, in the activation dtype (gemma.py:204)
    k = _rotate_fp32(k, cos, sin)
    if cache is not None:
        k, v = cache.update(k, v, self.layer_idx)
    N, K = q.shape[1], k.shape[1]
    qg = q.reshape(B, K, N // K, T, H)  # (B, N, T, H) -> (B, K, G, T, H), head = k*G + g
    logits = torch.matmul(qg.float(), k.float()[:, :, None].transpose(-1, -2))  # (B, K, G, T, S) fp32
    if attention_mask is not None:
        logits = logits + attention_mask[:, :, None, :, : k.shape[2]].float()  # (B, 1, T, S) -> (B, 1, 1, T, S)
    probs = torch.softmax(logits, dim=-1).to(v.dtype)
    out = torch.matmul(probs, v[:, :, None])  # (B, K, G, T, H)
    out = out.reshape(B, N, T, H).transpose(1, 2).reshape(B, T, N * H)  # (B, K, G, T, H) -> (B, T, N*H)
    return self.o_proj(out), None


def _is_gemma_attention(module: torch.nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "layer_idx"))


def install(policy: torch.nn.Module) -> int:
    """Patch every Gemma attention and rotary module under `policy` (idempotent). Returns places changed."""
    n = 0
    for module in policy.modules():
        if getattr(module, MARK, False):
            continue
        if _is_gemma_attention(module):
            module.forward = types.MethodType(_attention_forward_exact, module)
        elif isinstance(getattr(module, "inv_freq", None), torch.Tensor) and hasattr(module, "config"):
            module.forward = types.MethodType(_rotary_forward_fp32, module)
        else:
            continue
        setattr(module, MARK, True)
        n += 1
    return n
