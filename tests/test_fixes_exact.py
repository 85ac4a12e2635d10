"""Opt-in exact_fp32_attention: RoPE rotation and attention logits in fp32 as OpenPI does.

Module level (installed release, project venv): one bf16 Gemma attention layer against a float64 reference
of OpenPI's math; the exact path is closer than the stock path. Per release (bf16, test-w72-pi05): the prefix
pass gets closer to the JAX bf16 reference (sum of (1 - cosine) over llm/* stages), and the row still passes."""

import math

import pytest
import torch

from _matrix_helpers import RELEASES, llm_deficit, releases, results

pytestmark = pytest.mark.torch


def _layer():
    from transformers import GemmaConfig
    from transformers.models.gemma.modeling_gemma import GemmaAttention, GemmaRotaryEmbedding

    cfg = GemmaConfig(hidden_size=72, num_attention_heads=4, num_key_value_heads=1, head_dim=18,
                      intermediate_size=144, num_hidden_layers=1, vocab_size=16)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    attn, rope = GemmaAttention(cfg, layer_idx=0), GemmaRotaryEmbedding(cfg)
    for p in attn.parameters():
        p.data.normal_(0, 0.5)
    return attn, rope


def _reference(attn, x, pos):
    """OpenPI order in float64: fp32-exact RoPE, q * H**-0.5, logits, softmax (gemma.py:203-227, :424-440)."""
    d = torch.float64
    B, T, _ = x.shape
    H = attn.head_dim
    q = (x.to(d) @ attn.q_proj.weight.to(d).T).view(B, T, -1, H).transpose(1, 2)  # (B, T, N*H) -> (B, N, T, H)
    k = (x.to(d) @ attn.k_proj.weight.to(d).T).view(B, T, -1, H).transpose(1, 2)
    v = (x.to(d) @ attn.v_proj.weight.to(d).T).view(B, T, -1, H).transpose(1, 2)
    ang = pos.to(d)[..., None] / (10000.0 ** (torch.arange(0, H, 2, dtype=d) / H))  # (B, T, H/2)
    cos, sin = ang.cos()[:, None], ang.sin()[:, None]

    def rot(t):
        a, b = t[..., : H // 2], t[..., H // 2:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)

    q, k = rot(q) / math.sqrt(H), rot(k)
    p = torch.softmax(q @ k.transpose(-1, -2), -1)  # kv heads broadcast (K=1)
    o = (p @ v).transpose(1, 2).reshape(B, T, -1)  # (B, N, T, H) -> (B, T, N*H)
    return o @ attn.o_proj.weight.to(d).T


def test_exact_attention_is_closer_to_openpi_math_than_stock():
    from pibridge.fixes import exact

    attn, rope = _layer()
    x = torch.randn(1, 300, 72) * 2
    pos = torch.arange(700, 1000)[None]  # high positions: RoPE rounding matters
    ref = _reference(attn, x.to(torch.bfloat16).float(), pos)
    attn, rope = attn.to(torch.bfloat16), rope
    xb = x.to(torch.bfloat16)
    cos, sin = rope(xb, pos)
    stock = attn(xb, position_embeddings=(cos, sin), attention_mask=None)[0].double()
    exact.install(torch.nn.ModuleList([attn, rope]))
    cos32, sin32 = rope(xb, pos)
    assert cos32.dtype == torch.float32
    ex = attn(xb, position_embeddings=(cos32, sin32), attention_mask=None)[0].double()
    err_stock, err_exact = (stock - ref).norm() / ref.norm(), (ex - ref).norm() / ref.norm()
    assert err_exact < 0.8 * err_stock, (float(err_exact), float(err_stock))


@pytest.mark.parametrize("version", releases(RELEASES))
def test_exact_mode_brings_bf16_closer_to_jax(version):
    res = results(version)
    plain, exact_ = res["rope/with"], res["exact/with"]
    assert exact_["applied"].get("exact-fp32-attention", 0) > 0
    assert llm_deficit(exact_) < 0.95 * llm_deficit(plain), (llm_deficit(exact_), llm_deficit(plain))
    assert exact_["pass_strict"]
