"""Sampling with our torch pi0 / pi05: LeRobot's inference path (lerobot/policies/pi05/modeling_pi05.py
embed_prefix / sample_actions / denoise_step and pi0's, v0.6.1) run on the installed transformers classes,
recording the stage contract of pibridge.parity.stages.

Axis legend: B batch, C cameras, L prompt tokens, T prefix tokens, S suffix tokens, A action horizon,
D width, K kv heads, H head_dim, N heads.
`semantics` picks LeRobot's embedding code: "0.6" relies on transformers >= 5.4 (image features not divided,
text scale inside the embedding module); "0.5" multiplies both by sqrt(hidden) itself (v0.5.1 pi05 L443, L665).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from pibridge.parity import stages as st
from pibridge.parity.inputs import ModelInputs
from pibridge.parity.stages import StageRecorder
from pibridge.fixes import shims as compat
from pibridge.parity.stacks.torch.model import AdaRMSNorm, TorchPolicy

MASK_VALUE = -2.3819763e38  # lerobot utils/constants.py OPENPI_ATTENTION_MASK_VALUE = openpi gemma.py big_neg
MIN_PERIOD, MAX_PERIOD = 4e-3, 4.0  # PI05Config.min_period / max_period = openpi pi0.py:47-63


class _Rec:
    """Records into a StageRecorder (or nothing), timing each stage since the previous one."""

    def __init__(self, recorder: StageRecorder | None):
        self.recorder, self.t = recorder, time.perf_counter()

    def __call__(self, name: str, value, valid=None) -> None:
        if self.recorder is None:
            return
        now = time.perf_counter()
        arr = value.detach().float().numpy() if isinstance(value, torch.Tensor) else value
        mask = valid.detach().numpy() if isinstance(valid, torch.Tensor) else valid
        self.recorder.record(name, arr, mask, seconds=now - self.t)
        self.t = time.perf_counter()


class _KV:
    """Duck-typed transformers Cache: stores the prefix k/v (after RoPE) per layer; in `frozen` mode returns
    prefix + new k/v without storing (LeRobot clones its DynamicCache per denoise step for the same effect)."""

    def __init__(self):
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        self.frozen = False

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self.frozen:
            return torch.cat([self.k[layer_idx], k], dim=2), torch.cat([self.v[layer_idx], v], dim=2)
        self.k[layer_idx], self.v[layer_idx] = k, v
        return k, v


def att_2d(pad: torch.Tensor, ar: torch.Tensor) -> torch.Tensor:
    """big_vision mask: i attends j iff cumsum(ar)[j] <= cumsum(ar)[i] and both are valid (openpi pi0.py:19-44)."""
    c = torch.cumsum(ar, dim=1)
    return (c[:, None, :] <= c[:, :, None]) & (pad[:, None, :] & pad[:, :, None])


def additive_4d(mask_2d: torch.Tensor) -> torch.Tensor:
    return torch.where(mask_2d[:, None], 0.0, MASK_VALUE)  # (B, Q, K) -> (B, 1, Q, K), float32


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sine-cosine embedding computed in float64 then cast (lerobot common/vla_utils.py:41-58)."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64)
    period = MIN_PERIOD * (MAX_PERIOD / MIN_PERIOD) ** fraction
    arg = (1.0 / period * 2 * math.pi)[None, :] * t[:, None]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1).to(t.dtype)


def _norm(layer_norm, x, cond):
    if isinstance(layer_norm, AdaRMSNorm):
        return layer_norm(x, cond)
    return layer_norm(x), None


def _run_layers(gemma_model, hidden, mask4d, positions, cache: _KV, cond=None, on_layer=None):
    """PiGemmaModel.forward (lerobot pi_gemma.py, v0.6.1) with its decoder layers, on transformers modules."""
    if gemma_model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16:
        hidden = hidden.to(torch.bfloat16)
    pos_emb = gemma_model.rotary_emb(hidden, positions)
    kw = {compat.attention_cache_kwarg(): cache}
    for i, layer in enumerate(gemma_model.layers):
        residual = hidden
        h, gate = _norm(layer.input_layernorm, hidden, cond)
        h = layer.self_attn(h, position_embeddings=pos_emb, attention_mask=mask4d, **kw)[0]
        hidden = residual + h if gate is None else residual + h * gate
        residual = hidden
        h, gate = _norm(layer.post_attention_layernorm, hidden, cond)
        h = layer.mlp(h)
        hidden = residual + h if gate is None else residual + h * gate
        if on_layer is not None:
            on_layer(i, hidden)
    return _norm(gemma_model.norm, hidden, cond)[0]


def embed_images(policy: TorchPolicy, images: torch.Tensor, rec: _Rec, valid: torch.Tensor, semantics: str):
    """(B, C, 224, 224, 3) in [-1, 1] -> (B, C*256, D); one SigLIP call per camera as LeRobot does."""
    pg = policy.model.paligemma_with_expert.paligemma
    core = compat.siglip_core(pg.model.vision_tower)
    B, C = images.shape[:2]
    captured: dict[str, list] = {}
    hooks = [core.embeddings.register_forward_hook(lambda m, i, o: captured.setdefault("embed", []).append(o))]
    for li, layer in enumerate(core.encoder.layers):
        hooks.append(layer.register_forward_hook(
            lambda m, i, o, li=li: captured.setdefault(f"b{li}", []).append(o[0] if isinstance(o, tuple) else o)))
    hooks.append(core.post_layernorm.register_forward_hook(lambda m, i, o: captured.setdefault("out", []).append(o)))
    feats = []
    try:
        for c in range(C):
            pixels = images[:, c].permute(0, 3, 1, 2).contiguous().float()  # (B, H, W, 3) -> (B, 3, H, W)
            f = compat.image_features(pg.model, pixels)
            if semantics == "0.5":
                f = f * pg.config.text_config.hidden_size ** 0.5
            feats.append(f)
    finally:
        for h in hooks:
            h.remove()
    vit_valid = valid.reshape(B * C)[:, None, None]

    def b_major(per_cam):  # C x (B, 256, D) -> (B*C, 256, D), index b*C + c
        return torch.stack(per_cam, dim=1).flatten(0, 1)

    rec(st.IMG_EMBED, b_major(captured["embed"]), vit_valid)
    for li in range(len(core.encoder.layers)):
        rec(st.img_block(li), b_major(captured[f"b{li}"]), vit_valid)
    rec(st.IMG_OUT, b_major(captured["out"]), vit_valid)
    tokens = torch.cat(feats, dim=1)  # (B, C*256, D)
    rec(st.IMG_TOKENS, tokens, valid.repeat_interleave(tokens.shape[1] // C, dim=1)[:, :, None])
    return tokens


def embed_text(policy: TorchPolicy, tokens: torch.Tensor, semantics: str) -> torch.Tensor:
    emb = policy.model.paligemma_with_expert.paligemma.model.language_model.get_input_embeddings()(tokens)
    return emb * math.sqrt(emb.shape[-1]) if semantics == "0.5" else emb


def embed_suffix(policy: TorchPolicy, state, x_t, t):
    """pi05: action_in_proj(x_t) + adaRMS cond from the time MLP; pi0: [state token, action-time MLP tokens]."""
    core = policy.model
    temb = time_embedding(t, core.action_in_proj.out_features)
    act = core.action_in_proj(x_t)
    B, A = act.shape[:2]
    if policy.variant.pi05:
        cond = F.silu(core.time_mlp_out(F.silu(core.time_mlp_in(temb))))
        ar = torch.tensor([1] + [0] * (A - 1))
        return act, ar, cond, temb
    state_tok = core.state_proj(state.float())[:, None, :]
    at = core.action_time_mlp_out(F.silu(core.action_time_mlp_in(torch.cat([act, temb[:, None, :].expand_as(act)], 2))))
    ar = torch.tensor([1, 1] + [0] * (A - 1))
    return torch.cat([state_tok, at], dim=1), ar, None, temb


@torch.no_grad()
def sample_actions(policy: TorchPolicy, inputs: ModelInputs, noise: np.ndarray, *, num_steps: int = 10,
                   recorder: StageRecorder | None = None, semantics: str = "0.6",
                   exact_fp32: bool = False) -> np.ndarray:
    """Euler flow matching from t=1 (noise) to 0 (lerobot common/flow_matching.py euler_integrate): actions (B, A, 32).
    exact_fp32=True installs the opt-in runtime fix `exact_fp32_attention` on the policy first (it stays on)."""
    if exact_fp32:
        from pibridge.fixes.runtime import exact_fp32_attention

        exact_fp32_attention(policy)
    rec = _Rec(recorder)
    images = torch.from_numpy(inputs.images)
    img_mask = torch.from_numpy(inputs.image_mask)
    tokens = torch.from_numpy(inputs.tokens).long()
    tok_mask = torch.from_numpy(inputs.token_mask)
    state = torch.from_numpy(inputs.state)
    rec(st.INPUT_IMAGE, images, img_mask[:, :, None, None, None])
    rec(st.INPUT_IMAGE_MASK, img_mask.float())
    rec(st.INPUT_TOKENS, tokens.float(), tok_mask)
    rec(st.INPUT_TOKEN_MASK, tok_mask.float())
    rec(st.INPUT_STATE, state)
    B, C = img_mask.shape
    img_tokens = embed_images(policy, images, rec, img_mask, semantics)
    n_img = img_tokens.shape[1] // C
    prefix = torch.cat([img_tokens, embed_text(policy, tokens, semantics)], dim=1)  # (B, T, D)
    pad = torch.cat([img_mask.repeat_interleave(n_img, dim=1), tok_mask], dim=1)  # (B, T)
    rec(st.PREFIX_EMBEDS, prefix, pad[:, :, None])
    rec(st.PREFIX_MASK, pad.float())
    positions = torch.cumsum(pad.long(), dim=1) - 1
    cache = _KV()
    lm = policy.model.paligemma_with_expert.paligemma.model.language_model

    def on_prefix_layer(i, hidden):
        rec(st.llm_kv(i, "k"), cache.k[i].transpose(1, 2), pad[:, :, None, None])  # (B, K, T, H) -> (B, T, K, H)
        rec(st.llm_kv(i, "v"), cache.v[i].transpose(1, 2), pad[:, :, None, None])
        rec(st.llm_block(i), hidden, pad[:, :, None])

    _run_layers(lm, prefix, additive_4d(att_2d(pad, torch.zeros_like(pad, dtype=torch.long))), positions, cache,
                on_layer=on_prefix_layer)
    cache.frozen = True
    x_t = torch.from_numpy(np.asarray(noise, np.float32))
    dt = -1.0 / num_steps
    times = [torch.tensor(1.0 + s * dt, dtype=torch.float32).expand(B) for s in range(num_steps)]
    rec(st.SUFFIX_TIME, torch.stack([time_embedding(t, policy.model.action_in_proj.out_features) for t in times]))
    for s, t in enumerate(times):
        v_t = denoise_step(policy, cache, pad, state, x_t, t, rec, s)
        x_t = x_t + dt * v_t
    rec(st.ACTIONS, x_t)
    return x_t.numpy()


def denoise_step(policy, cache, prefix_pad, state, x_t, t, rec, step):
    suffix, ar, cond, _ = embed_suffix(policy, state, x_t, t)
    B, S = suffix.shape[:2]
    spad = torch.ones(B, S, dtype=torch.bool)
    full = torch.cat([prefix_pad[:, None, :].expand(B, S, prefix_pad.shape[1]),
                      att_2d(spad, ar[None].expand(B, S))], dim=2)  # (B, S, T+S)
    positions = prefix_pad.sum(-1, keepdim=True) + torch.cumsum(spad.long(), dim=1) - 1
    expert = policy.model.paligemma_with_expert.gemma_expert.model
    out = _run_layers(expert, suffix, additive_4d(full), positions, cache, cond,
                      on_layer=lambda i, h: rec(st.expert_block(step, i), h))
    A = x_t.shape[1]
    v_t = policy.model.action_out_proj(out[:, -A:].to(torch.float32))
    rec(st.velocity(step), v_t)
    return v_t
