"""The OpenPI parameter tree of a variant, as (path -> shape), without allocating anything.

Axis legend: L Gemma layers, V SigLIP layers, N heads, K kv heads, D width, H head_dim, F mlp dim,
P patch size, C image channels, T image tokens (patches).
Paths are tuples relative to the tree root that OpenPI's `restore_params` returns (no "params" level,
no trailing "value"). Layout: openpi src/openpi/models/{pi0.py:66-103, gemma.py:159-381, siglip.py:75-288,
lora.py:44-148} at commit 15a9616; all params float32 at init (nnx/linen defaults).
"""

from __future__ import annotations

from collections.abc import Mapping

from pibridge.configs import GemmaSize, SiglipSize, Variant

Path = tuple[str, ...]


def _gemma_layers(cfg: GemmaSize, suffix: str, adarms: bool) -> dict[Path, tuple[int, ...]]:
    """Stacked (scan) layer leaves of one expert; `suffix` is "" for expert 0, "_1" for the action expert."""
    L, N, K, D, H, F = cfg.depth, cfg.num_heads, cfg.num_kv_heads, cfg.width, cfg.head_dim, cfg.mlp_dim
    out: dict[Path, tuple[int, ...]] = {
        ("layers", "attn", f"q_einsum{suffix}", "w"): (L, N, D, H),  # "BTD,NDH->BTNH"
        ("layers", "attn", f"kv_einsum{suffix}", "w"): (L, 2, K, D, H),  # "BSD,2KDH->2BSKH"
        ("layers", "attn", f"attn_vec_einsum{suffix}", "w"): (L, N, H, D),  # "BTNH,NHD->BTD"
        ("layers", f"mlp{suffix}", "gating_einsum"): (L, 2, D, F),  # [:,0] gate (gelu), [:,1] up
        ("layers", f"mlp{suffix}", "linear"): (L, F, D),
    }
    for norm in ("pre_attention_norm", "pre_ffw_norm"):
        if adarms:  # gemma.py:119-131: adaRMS has Dense_0 (D -> 3D: scale|shift|gate) and no scale
            out[("layers", f"{norm}{suffix}", "Dense_0", "kernel")] = (L, D, 3 * D)
            out[("layers", f"{norm}{suffix}", "Dense_0", "bias")] = (L, 3 * D)
        else:
            out[("layers", f"{norm}{suffix}", "scale")] = (L, D)
    if adarms:
        out[(f"final_norm{suffix}", "Dense_0", "kernel")] = (D, 3 * D)
        out[(f"final_norm{suffix}", "Dense_0", "bias")] = (3 * D,)
    else:
        out[(f"final_norm{suffix}", "scale")] = (D,)
    return out


def _siglip(cfg: SiglipSize, llm_width: int) -> dict[Path, tuple[int, ...]]:
    V, D, F, N, P = cfg.depth, cfg.width, cfg.mlp_dim, cfg.num_heads, cfg.patch_size
    H, T = cfg.head_dim, cfg.num_patches
    blk = ("Transformer", "encoderblock")
    mha = blk + ("MultiHeadDotProductAttention_0",)
    out: dict[Path, tuple[int, ...]] = {
        ("embedding", "kernel"): (P, P, 3, D),  # HWIO conv
        ("embedding", "bias"): (D,),
        ("pos_embedding",): (1, T, D),
    }
    for ln in ("LayerNorm_0", "LayerNorm_1"):
        out[blk + (ln, "scale")] = (V, D)
        out[blk + (ln, "bias")] = (V, D)
    for proj in ("query", "key", "value"):
        out[mha + (proj, "kernel")] = (V, D, N, H)
        out[mha + (proj, "bias")] = (V, N, H)
    out[mha + ("out", "kernel")] = (V, N, H, D)
    out[mha + ("out", "bias")] = (V, D)
    out[blk + ("MlpBlock_0", "Dense_0", "kernel")] = (V, D, F)
    out[blk + ("MlpBlock_0", "Dense_0", "bias")] = (V, F)
    out[blk + ("MlpBlock_0", "Dense_1", "kernel")] = (V, F, D)
    out[blk + ("MlpBlock_0", "Dense_1", "bias")] = (V, D)
    out[("Transformer", "encoder_norm", "scale")] = (D,)
    out[("Transformer", "encoder_norm", "bias")] = (D,)
    out[("head", "kernel")] = (D, llm_width)  # image -> LLM projector (siglip.py:284-288)
    out[("head", "bias")] = (llm_width,)
    return out


def _linear(name: str, n_in: int, n_out: int) -> dict[Path, tuple[int, ...]]:
    return {(name, "kernel"): (n_in, n_out), (name, "bias"): (n_out,)}  # nnx.Linear kernel is (in, out)


def openpi_tree_shapes(variant: Variant) -> dict[Path, tuple[int, ...]]:
    """Every leaf of OpenPI's Pi0 parameter tree for `variant`, in a stable (sorted) order."""
    llm, exp, A = variant.paligemma, variant.action_expert, variant.action_dim
    tree: dict[Path, tuple[int, ...]] = {}
    tree[("PaliGemma", "llm", "embedder", "input_embedding")] = (variant.vocab_size, llm.width)
    for path, shape in _gemma_layers(llm, "", adarms=False).items():
        tree[("PaliGemma", "llm") + path] = shape
    for path, shape in _gemma_layers(exp, "_1", adarms=variant.pi05).items():
        tree[("PaliGemma", "llm") + path] = shape
    for path, shape in _siglip(variant.siglip, llm.width).items():
        tree[("PaliGemma", "img") + path] = shape
    tree.update(_linear("action_in_proj", A, exp.width))
    tree.update(_linear("action_out_proj", exp.width, A))
    if variant.pi05:  # pi0.py:94-95
        tree.update(_linear("time_mlp_in", exp.width, exp.width))
        tree.update(_linear("time_mlp_out", exp.width, exp.width))
    else:  # pi0.py:97-99
        tree.update(_linear("state_proj", A, exp.width))
        tree.update(_linear("action_time_mlp_in", 2 * exp.width, exp.width))
        tree.update(_linear("action_time_mlp_out", exp.width, exp.width))
    return dict(sorted(tree.items()))


def count_params(shapes: dict[Path, tuple[int, ...]]) -> int:
    total = 0
    for shape in shapes.values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def flatten(tree: Mapping, prefix: Path = ()) -> dict[Path, object]:
    """Nested dict -> {path tuple: leaf} (keys as str)."""
    flat: dict[Path, object] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix + (str(key),)))
        else:
            flat[prefix + (str(key),)] = value
    return flat


def nest(flat: Mapping[Path, object]) -> dict:
    """{path tuple: leaf} -> nested dict (inverse of flatten)."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree
