"""The key table: OpenPI parameter tree -> LeRobot pi0 / pi05 state dict, one row per tensor role.

A row says: which OpenPI leaf (path relative to the tree `restore_params` returns; `stack` names the
scanned leading axis, L Gemma layers / V SigLIP layers), which part of a per-layer slice (kv_einsum:
0 = k, 1 = v; gating_einsum: 0 = gate (the gelu branch, openpi lora.py:126-131), 1 = up (lora.py:133-137)), the
LeRobot key (`{l}` layer index, `{vision}` the SigLIP key prefix of the target transformers version),
and the named transform (pibridge.convert.transforms). Rows sharing a source are adjacent.

Facts the table encodes (checked against lerobot 0.5.1 / 0.6.0 / 0.6.1 wheels and transformers wheels):
- Norm scales map raw: both sides multiply by (1 + w). OpenPI gemma.py:121-124 `normed_inputs * (1 + scale)`;
  LeRobot policies/pi_gemma.py:119 (0.6.1; same in 0.5.1) `normed * (1.0 + self.weight.float())`;
  transformers GemmaRMSNorm `output * (1.0 + self.weight.float())` (5.3.0 modeling_gemma.py:62,
  5.5.4 / 5.6.0 :77). AdaRMS Dense_0 output splits scale | shift | gate on both sides (gemma.py:129,
  pi_gemma.py:126).
- LeRobot's state dict keeps `paligemma.lm_head.weight` and `embed_tokens.weight` as separate tensors
  (both in the 813 / 778-key listing); OpenPI ties them (the Gemma embedder decodes with the same table),
  so both are filled from `embedder/input_embedding`. LeRobot's loader copies lm_head onto embed_tokens
  and then the file's own embed_tokens wins (modeling_pi05.py:914-922, keys iterate sorted): equal values,
  so the order does not matter.
- `gemma_expert.lm_head.weight` exists in LeRobot's state dict but is never used (no logits) and OpenPI
  has no expert embedder: it is synthesized as zeros (as LeRobot's removed 2025 converter did) so that a
  strict load sees no missing key.
- SigLIP keys: transformers <= 5.5 nest them under `vision_tower.vision_model.`; 5.6.0 merged
  SiglipVisionTransformer into SiglipVisionModel (5.5.4 siglip/modeling_siglip.py:662
  `self.vision_model = SiglipVisionTransformer(config)`; 5.6.0 :569-570 `self.embeddings`, `self.encoder`),
  so LeRobot's raw `load_state_dict` keys lose `vision_model.` from 5.6.
"""

from __future__ import annotations

from dataclasses import dataclass

from pibridge.configs import load_transformers_support
from pibridge.errors import PibridgeError
from pibridge.fixes.table import flat_siglip_keys, transformers_api
from pibridge.vocab import KEEP_FP32_SELECTORS

BOTH = frozenset({"pi0", "pi05"})
PI0 = frozenset({"pi0"})
PI05 = frozenset({"pi05"})

_PG = "model.paligemma_with_expert.paligemma."
_VT = _PG + "model.vision_tower.{vision}"
_ENC = _VT + "encoder.layers.{l}."
_LM = _PG + "model.language_model."
_EX = "model.paligemma_with_expert.gemma_expert."
_IMG = "PaliGemma/img/"
_BLK = _IMG + "Transformer/encoderblock/"
_MHA = _BLK + "MultiHeadDotProductAttention_0/"
_LLM = "PaliGemma/llm/"


@dataclass(frozen=True)
class Row:
    role: str  # closed vocabulary of tensor roles, unique per row
    models: frozenset[str]
    source: tuple[str, ...] | None  # None: synthesized (transform "zeros")
    stack: str | None  # "L" / "V": the leaf is scanned; one destination per layer
    part: int | None
    dest: str
    transform: str
    shape: tuple[str, ...]  # the SOURCE leaf's shape in axis symbols (AXES), or the synthesized tensor's


def _row(role, models, source, stack, part, dest, transform, shape: str) -> Row:
    src = tuple(source.split("/")) if source else None
    return Row(role, models, src, stack, part, dest, transform, tuple(shape.split(",")))


# Axis symbols of the shapes above (openpi gemma.py:159-381, siglip.py:75-288, pi0.py:66-103 at 15a9616):
# L layers, N heads, K kv heads, D width, H head_dim, F mlp dim of PaliGemma's Gemma; the same with a trailing "e" for
# the action expert; V layers, Dv width, Nv heads, Hv head_dim, Fv mlp dim, P patch, T patches of SigLIP; A the model's
# action width; vocab. "3*De" multiplies; digits are literal.
def axis_sizes(variant) -> dict[str, int]:
    g, e, v = variant.paligemma, variant.action_expert, variant.siglip
    sizes = {"A": variant.action_dim, "vocab": variant.vocab_size, "V": v.depth, "Dv": v.width, "Nv": v.num_heads,
             "Hv": v.head_dim, "Fv": v.mlp_dim, "P": v.patch_size, "T": v.num_patches}
    for tag, c in (("", g), ("e", e)):
        sizes.update({"L" + tag: c.depth, "N" + tag: c.num_heads, "K" + tag: c.num_kv_heads, "D" + tag: c.width,
                      "H" + tag: c.head_dim, "F" + tag: c.mlp_dim})
    return sizes


def row_shape(row: Row, sizes: dict[str, int]) -> tuple[int, ...]:
    """A row's symbolic shape in one variant's sizes (axis_sizes)."""
    def one(sym: str) -> int:
        factor, _, name = sym.rpartition("*")
        n = int(name) if name.isdigit() else sizes[name]
        return int(factor) * n if factor else n
    return tuple(one(sym) for sym in row.shape)


def _gemma_rows(tag: str, suffix: str, dest: str) -> list[Row]:
    """Attention + MLP rows of one Gemma expert (suffix "" for PaliGemma, "_1" for the action expert)."""
    lay, attn, mlp = _LLM + "layers/", _LLM + "layers/attn/", _LLM + f"layers/mlp{suffix}/"
    d = dest + "layers.{l}."
    e = "e" if suffix else ""  # axis symbols of this expert
    L, N, K, D, H, F = (x + e for x in "LNKDHF")
    return [
        _row(f"{tag}.attn.q", BOTH, attn + f"q_einsum{suffix}/w", "L", None, d + "self_attn.q_proj.weight", "ndh_to_rows", f"{L},{N},{D},{H}"),
        _row(f"{tag}.attn.k", BOTH, attn + f"kv_einsum{suffix}/w", "L", 0, d + "self_attn.k_proj.weight", "ndh_to_rows", f"{L},2,{K},{D},{H}"),
        _row(f"{tag}.attn.v", BOTH, attn + f"kv_einsum{suffix}/w", "L", 1, d + "self_attn.v_proj.weight", "ndh_to_rows", f"{L},2,{K},{D},{H}"),
        _row(f"{tag}.attn.o", BOTH, attn + f"attn_vec_einsum{suffix}/w", "L", None, d + "self_attn.o_proj.weight", "nhd_to_cols", f"{L},{N},{H},{D}"),
        _row(f"{tag}.mlp.gate", BOTH, mlp + "gating_einsum", "L", 0, d + "mlp.gate_proj.weight", "transpose", f"{L},2,{D},{F}"),
        _row(f"{tag}.mlp.up", BOTH, mlp + "gating_einsum", "L", 1, d + "mlp.up_proj.weight", "transpose", f"{L},2,{D},{F}"),
        _row(f"{tag}.mlp.down", BOTH, mlp + "linear", "L", None, d + "mlp.down_proj.weight", "transpose", f"{L},{F},{D}"),
    ] + ([] if suffix else [
        _row("llm.norm.attn", BOTH, lay + "pre_attention_norm/scale", "L", None, d + "input_layernorm.weight", "copy", "L,D"),
        _row("llm.norm.mlp", BOTH, lay + "pre_ffw_norm/scale", "L", None, d + "post_attention_layernorm.weight", "copy", "L,D"),
    ])


# The flow-matching heads' (in, out) widths (nnx.Linear kernel is (in, out); openpi pi0.py:92-100).
_HEAD_SIZES = {"action_in_proj": ("A", "De"), "action_out_proj": ("De", "A"), "time_mlp_in": ("De", "De"),
               "time_mlp_out": ("De", "De"), "state_proj": ("A", "De"), "action_time_mlp_in": ("2*De", "De"),
               "action_time_mlp_out": ("De", "De")}


def _heads(models: frozenset[str], names: tuple[str, ...]) -> list[Row]:
    rows = []
    for name in names:
        n_in, n_out = _HEAD_SIZES[name]
        rows.append(_row(f"head.{name}.weight", models, f"{name}/kernel", None, None, f"model.{name}.weight", "transpose",
                         f"{n_in},{n_out}"))
        rows.append(_row(f"head.{name}.bias", models, f"{name}/bias", None, None, f"model.{name}.bias", "copy", n_out))
    return rows


_EXL = _EX + "model.layers.{l}."
_ADA = "layers/{0}_1/Dense_0/"

ROWS: tuple[Row, ...] = tuple(
    [
        # SigLIP (openpi siglip.py; big_vision names) -> transformers SiglipVisionModel
        _row("vit.patch.kernel", BOTH, _IMG + "embedding/kernel", None, None, _VT + "embeddings.patch_embedding.weight", "conv_hwio_to_oihw", "P,P,3,Dv"),
        _row("vit.patch.bias", BOTH, _IMG + "embedding/bias", None, None, _VT + "embeddings.patch_embedding.bias", "copy", "Dv"),
        _row("vit.pos_embedding", BOTH, _IMG + "pos_embedding", None, None, _VT + "embeddings.position_embedding.weight", "drop_lead_axis", "1,T,Dv"),
        _row("vit.ln_attn.scale", BOTH, _BLK + "LayerNorm_0/scale", "V", None, _ENC + "layer_norm1.weight", "copy", "V,Dv"),
        _row("vit.ln_attn.bias", BOTH, _BLK + "LayerNorm_0/bias", "V", None, _ENC + "layer_norm1.bias", "copy", "V,Dv"),
        _row("vit.ln_mlp.scale", BOTH, _BLK + "LayerNorm_1/scale", "V", None, _ENC + "layer_norm2.weight", "copy", "V,Dv"),
        _row("vit.ln_mlp.bias", BOTH, _BLK + "LayerNorm_1/bias", "V", None, _ENC + "layer_norm2.bias", "copy", "V,Dv"),
        _row("vit.attn.q.kernel", BOTH, _MHA + "query/kernel", "V", None, _ENC + "self_attn.q_proj.weight", "dnh_to_rows", "V,Dv,Nv,Hv"),
        _row("vit.attn.q.bias", BOTH, _MHA + "query/bias", "V", None, _ENC + "self_attn.q_proj.bias", "nh_flatten", "V,Nv,Hv"),
        _row("vit.attn.k.kernel", BOTH, _MHA + "key/kernel", "V", None, _ENC + "self_attn.k_proj.weight", "dnh_to_rows", "V,Dv,Nv,Hv"),
        _row("vit.attn.k.bias", BOTH, _MHA + "key/bias", "V", None, _ENC + "self_attn.k_proj.bias", "nh_flatten", "V,Nv,Hv"),
        _row("vit.attn.v.kernel", BOTH, _MHA + "value/kernel", "V", None, _ENC + "self_attn.v_proj.weight", "dnh_to_rows", "V,Dv,Nv,Hv"),
        _row("vit.attn.v.bias", BOTH, _MHA + "value/bias", "V", None, _ENC + "self_attn.v_proj.bias", "nh_flatten", "V,Nv,Hv"),
        _row("vit.attn.o.kernel", BOTH, _MHA + "out/kernel", "V", None, _ENC + "self_attn.out_proj.weight", "nhd_to_cols", "V,Nv,Hv,Dv"),
        _row("vit.attn.o.bias", BOTH, _MHA + "out/bias", "V", None, _ENC + "self_attn.out_proj.bias", "copy", "V,Dv"),
        _row("vit.mlp.fc1.kernel", BOTH, _BLK + "MlpBlock_0/Dense_0/kernel", "V", None, _ENC + "mlp.fc1.weight", "transpose", "V,Dv,Fv"),
        _row("vit.mlp.fc1.bias", BOTH, _BLK + "MlpBlock_0/Dense_0/bias", "V", None, _ENC + "mlp.fc1.bias", "copy", "V,Fv"),
        _row("vit.mlp.fc2.kernel", BOTH, _BLK + "MlpBlock_0/Dense_1/kernel", "V", None, _ENC + "mlp.fc2.weight", "transpose", "V,Fv,Dv"),
        _row("vit.mlp.fc2.bias", BOTH, _BLK + "MlpBlock_0/Dense_1/bias", "V", None, _ENC + "mlp.fc2.bias", "copy", "V,Dv"),
        _row("vit.final_ln.scale", BOTH, _IMG + "Transformer/encoder_norm/scale", None, None, _VT + "post_layernorm.weight", "copy", "Dv"),
        _row("vit.final_ln.bias", BOTH, _IMG + "Transformer/encoder_norm/bias", None, None, _VT + "post_layernorm.bias", "copy", "Dv"),
        _row("projector.kernel", BOTH, _IMG + "head/kernel", None, None, _PG + "model.multi_modal_projector.linear.weight", "transpose", "Dv,D"),
        _row("projector.bias", BOTH, _IMG + "head/bias", None, None, _PG + "model.multi_modal_projector.linear.bias", "copy", "D"),
        # PaliGemma Gemma (expert 0)
        _row("llm.embed", BOTH, _LLM + "embedder/input_embedding", None, None, _LM + "embed_tokens.weight", "copy", "vocab,D"),
        _row("llm.lm_head", BOTH, _LLM + "embedder/input_embedding", None, None, _PG + "lm_head.weight", "copy", "vocab,D"),
    ]
    + _gemma_rows("llm", "", _LM)
    + [_row("llm.final_norm", BOTH, _LLM + "final_norm/scale", None, None, _LM + "norm.weight", "copy", "D")]
    # action expert (expert 1, suffix _1)
    + _gemma_rows("expert", "_1", _EX + "model.")
    + [
        _row("expert.norm.attn", PI0, _LLM + "layers/pre_attention_norm_1/scale", "L", None, _EXL + "input_layernorm.weight", "copy", "Le,De"),
        _row("expert.norm.mlp", PI0, _LLM + "layers/pre_ffw_norm_1/scale", "L", None, _EXL + "post_attention_layernorm.weight", "copy", "Le,De"),
        _row("expert.final_norm", PI0, _LLM + "final_norm_1/scale", None, None, _EX + "model.norm.weight", "copy", "De"),
        _row("expert.adanorm.attn.kernel", PI05, _LLM + _ADA.format("pre_attention_norm") + "kernel", "L", None, _EXL + "input_layernorm.dense.weight", "transpose", "Le,De,3*De"),
        _row("expert.adanorm.attn.bias", PI05, _LLM + _ADA.format("pre_attention_norm") + "bias", "L", None, _EXL + "input_layernorm.dense.bias", "copy", "Le,3*De"),
        _row("expert.adanorm.mlp.kernel", PI05, _LLM + _ADA.format("pre_ffw_norm") + "kernel", "L", None, _EXL + "post_attention_layernorm.dense.weight", "transpose", "Le,De,3*De"),
        _row("expert.adanorm.mlp.bias", PI05, _LLM + _ADA.format("pre_ffw_norm") + "bias", "L", None, _EXL + "post_attention_layernorm.dense.bias", "copy", "Le,3*De"),
        _row("expert.final_adanorm.kernel", PI05, _LLM + "final_norm_1/Dense_0/kernel", None, None, _EX + "model.norm.dense.weight", "transpose", "De,3*De"),
        _row("expert.final_adanorm.bias", PI05, _LLM + "final_norm_1/Dense_0/bias", None, None, _EX + "model.norm.dense.bias", "copy", "3*De"),
        _row("expert.lm_head", BOTH, None, None, None, _EX + "lm_head.weight", "zeros", "vocab,De"),
    ]
    # flow-matching heads (nnx.Linear, openpi pi0.py:92-100) -> PI05Pytorch / PI0Pytorch attributes
    + _heads(BOTH, ("action_in_proj", "action_out_proj"))
    + _heads(PI05, ("time_mlp_in", "time_mlp_out"))
    + _heads(PI0, ("state_proj", "action_time_mlp_in", "action_time_mlp_out"))
)

# Gemma RMSNorm scales, applied as (1 + w) on both sides (see the module doc): the llm/ `scale` leaves.
RMS_NORM_ROLES = frozenset(r.role for r in ROWS if r.source and r.source[:2] == ("PaliGemma", "llm")
                           and r.source[-1] == "scale")

# The scanned roots: every leaf under one carries the layer axis first (row.stack names it).
STACKED_ROOTS = {("PaliGemma", "llm", "layers"): "L", ("PaliGemma", "img", "Transformer", "encoderblock"): "V"}


def rows_for(model: str) -> tuple[Row, ...]:
    return tuple(r for r in ROWS if model in r.models)


def model_only_sources(model: str) -> frozenset[tuple[str, ...]]:
    """Source leaves that only `model` ("pi0" / "pi05") has: the evidence variant detection uses."""
    return frozenset(r.source for r in ROWS if r.models == frozenset({model}) and r.source)


# --- destination key layout per transformers version -------------------------------------------------

def vision_prefix(transformers_version: str) -> str:
    """`{vision}` for a transformers version: "vision_model." up to 5.5, "" from 5.6 (see module doc; the
    ranges are data: transformers_support.json api.paligemma_decoder_keys, fixes.json siglip-flat-keys)."""
    if not transformers_api("paligemma_decoder_keys", transformers_version):
        raise PibridgeError(
            f"transformers {transformers_version} names PaliGemma keys `language_model.model.*`",
            expected=f"transformers {load_transformers_support()['api']['paligemma_decoder_keys']['transformers']} "
                     "(LeRobot 0.5.1 pins 5.3.0, 0.6.x 5.4-5.5)",
            fix="pass --transformers-version 5.3.0 or newer",
        )
    return "" if flat_siglip_keys(transformers_version) else "vision_model."


def dest_key(row: Row, layer: int | None, vision: str) -> str:
    return row.dest.format(l=layer, vision=vision)


# --- destination dtype in LeRobot's runtime -----------------------------------------------------------

_CAST_MODULE = "model.paligemma_with_expert."
WEIGHT_DTYPES = ("float32", "bfloat16")


def lerobot_dtype(key: str, weights_dtype: str) -> str:
    """dtype LeRobot holds `key` in: all float32 for a float32 target; its mixed layout for bfloat16."""
    if weights_dtype not in WEIGHT_DTYPES:
        raise PibridgeError(f"weights dtype {weights_dtype!r}", expected=" or ".join(WEIGHT_DTYPES),
                            fix="pass --weights-dtype float32 or bfloat16")
    if weights_dtype == "float32" or not key.startswith(_CAST_MODULE):
        return "float32"
    inner = key[len(_CAST_MODULE):]
    return "float32" if any(sel in inner for sel in KEEP_FP32_SELECTORS) else "bfloat16"
