"""Unstack scanned leaves and detect the model (pi0 / pi05) and its sizes from the tree alone.

Axis legend: L Gemma layers, V SigLIP layers, N heads, K kv heads, D width, H head_dim, F mlp dim,
P patch size, T image tokens, A action dim, W vocabulary.
OpenPI scans its Gemma blocks (`nn.scan` over `layers`, openpi gemma.py:359-381) and its SigLIP blocks
(siglip.py:133-145, scan=True), so every leaf under those two containers carries a leading L / V axis.
The variant is decided by which tensor roles exist (pi05 has adaRMS `Dense_0` leaves under the action
expert's norms and time-MLP heads; pi0 has norm `scale` leaves and state / action-time heads) and by the
leaf shapes; never by a path or directory name (OpenPI's own converter greps "pi05" in the path).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from pibridge.configs import GemmaSize, SiglipSize, Variant, load_variant, variant_names
from pibridge.convert.lora import LoraTree, split_lora
from pibridge.convert.mapping import STACKED_ROOTS, model_only_sources
from pibridge.convert.tree import openpi_tree_shapes
from pibridge.errors import PibridgeError

Path = tuple[str, ...]
Shape = tuple[int, ...]
SourceKey = tuple[Path, "int | None"]  # (leaf path, layer index or None)

def shapes_of(leaves: Mapping) -> dict[Path, Shape]:
    """{path: shape} from {path: shape} or from a reader's {path: LeafInfo} (anything with `.shape`)."""
    return {p: tuple(getattr(v, "shape", v)) for p, v in leaves.items()}


def stack_axis(path: Path) -> str | None:
    for prefix, axis in STACKED_ROOTS.items():
        if path[: len(prefix)] == prefix:
            return axis
    return None


def unstack_shapes(shapes: Mapping[Path, Shape]) -> dict[SourceKey, Shape]:
    """One entry per layer for scanned leaves ((L, ...) -> L x (...)), one entry (layer None) otherwise."""
    out: dict[SourceKey, Shape] = {}
    for path, shape in shapes.items():
        if stack_axis(path):
            for i in range(shape[0]):
                out[(path, i)] = tuple(shape[1:])
        else:
            out[(path, None)] = tuple(shape)
    return out


def unstack(tree: Mapping[Path, np.ndarray]) -> dict[SourceKey, np.ndarray]:
    """Same as unstack_shapes on arrays; per-layer entries are views (no copy)."""
    out: dict[SourceKey, np.ndarray] = {}
    for path, arr in tree.items():
        if stack_axis(path):
            for i in range(arr.shape[0]):
                out[(path, i)] = arr[i]
        else:
            out[(path, None)] = arr
    return out


@dataclass(frozen=True)
class Detection:
    model: str  # "pi0" | "pi05"
    variant: Variant  # sizes read from the shapes; name is a shipped variant's when the sizes match one
    evidence: tuple[str, ...]  # the role leaves that decided the model
    lora: LoraTree | None = None  # the LoRA adapters (pibridge.convert.lora), None for a plain tree


def _fmt(path: Path) -> str:
    return "/".join(path)


def detect(shapes: Mapping[Path, Shape]) -> Detection:
    """Model and sizes from the leaf set and shapes; PibridgeError for pi0-FAST, mixed or odd trees and LoRA trees
    OpenPI would not write (lora.split_lora). `shapes`: {path: shape} or a reader's {path: LeafInfo}."""
    shapes = shapes_of(shapes)
    _refuse_unsupported(set(shapes))
    shapes, lora = split_lora(shapes)  # sizes come from the base leaves
    paths = set(shapes)
    hits = {m: sorted(_fmt(p) for p in paths & model_only_sources(m)) for m in ("pi0", "pi05")}
    if hits["pi0"] and hits["pi05"]:
        raise PibridgeError(
            f"the tree mixes pi0 roles ({', '.join(hits['pi0'][:3])}) and pi05 roles ({', '.join(hits['pi05'][:3])})",
            expected="either the pi0 roles (expert norm `scale`, state_proj, action_time_mlp_*) or the pi05 roles "
                     "(expert norm `Dense_0`, time_mlp_*)",
            fix="check that the checkpoint was written by one OpenPI model; this tree cannot be converted",
        )
    if not (hits["pi0"] or hits["pi05"]):
        raise PibridgeError("no pi0 or pi05 action-expert roles in the tree (expert norms, time / state heads)",
                            expected="an OpenPI Pi0 tree (pi0 or pi05)",
                            fix="run `pibridge inspect CKPT` to see the tree")
    model = "pi05" if hits["pi05"] else "pi0"
    variant = _sizes(shapes, model)
    _check_shapes(shapes, variant)
    return Detection(model=model, variant=variant, evidence=tuple(hits[model]), lora=lora)


def _refuse_unsupported(paths: set[Path]) -> None:
    expert = ("PaliGemma", "llm", "layers", "attn", "q_einsum_1", "w")
    if expert not in paths and ("action_in_proj", "kernel") not in paths:
        raise PibridgeError("the tree has no action expert (no q_einsum_1, no action_in_proj): a pi0-FAST or plain "
                            "PaliGemma checkpoint", expected="a pi0 or pi05 (flow-matching) checkpoint",
                            fix="pi0-FAST is not supported by LeRobot's pi0 / pi05 policies (LoRA fine-tunes of it, e.g. "
                                "pi0_fast_libero_low_mem_finetune, neither); convert a pi0 / pi05 one")


def _need(shapes: Mapping[Path, Shape], path: str) -> Shape:
    key = tuple(path.split("/"))
    if key not in shapes:
        raise PibridgeError(f"leaf {path} is missing", expected="every leaf of an OpenPI Pi0 tree",
                            fix="run `pibridge inspect CKPT`; the checkpoint may be truncated or not a Pi0 tree")
    return shapes[key]


def _gemma(shapes: Mapping[Path, Shape], suffix: str) -> GemmaSize:
    L, N, D, H = _need(shapes, f"PaliGemma/llm/layers/attn/q_einsum{suffix}/w")  # (L, N, D, H)
    K = _need(shapes, f"PaliGemma/llm/layers/attn/kv_einsum{suffix}/w")[2]  # (L, 2, K, D, H)
    F = _need(shapes, f"PaliGemma/llm/layers/mlp{suffix}/gating_einsum")[3]  # (L, 2, D, F)
    return _named(GemmaSize("custom", width=D, depth=L, mlp_dim=F, num_heads=N, num_kv_heads=K, head_dim=H))


def _siglip(shapes: Mapping[Path, Shape]) -> SiglipSize:
    P, _, _, D = _need(shapes, "PaliGemma/img/embedding/kernel")  # (P, P, C, D)
    T = _need(shapes, "PaliGemma/img/pos_embedding")[1]  # (1, T, D)
    V, _, N, _ = _need(shapes, "PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel")
    F = _need(shapes, "PaliGemma/img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel")[2]  # (V, D, F)
    side = int(round(T ** 0.5))
    return _named(SiglipSize("custom", width=D, depth=V, mlp_dim=F, num_heads=N, patch_size=P, image_size=side * P))


def _known_parts():
    for name in variant_names():
        v = load_variant(name)
        yield from (v.paligemma, v.action_expert, v.siglip)


def _named(size):
    """Give a size the name of a shipped variant part with identical numbers (gemma_2b, So400m/14, ...)."""
    for known in _known_parts():
        if type(known) is type(size) and replace(known, variant="custom") == size:
            return known
    return size


def _sizes(shapes: Mapping[Path, Shape], model: str) -> Variant:
    vocab = _need(shapes, "PaliGemma/llm/embedder/input_embedding")[0]  # (W, D)
    action_dim = _need(shapes, "action_in_proj/kernel")[0]  # (A, D_expert)
    found = Variant(name=f"custom-{model}", pi05=model == "pi05", tiny=False, paligemma=_gemma(shapes, ""),
                    action_expert=_gemma(shapes, "_1"), siglip=_siglip(shapes), vocab_size=vocab, action_dim=action_dim)
    for name in variant_names():
        known = load_variant(name)
        if replace(known, name=found.name, tiny=False) == found:
            return known
    return found


def _check_shapes(shapes: Mapping[Path, Shape], variant: Variant) -> None:
    """Every leaf the detected sizes imply must have exactly that shape (missing / extra leaves are the
    mapping's accounting, not an error here)."""
    expected = openpi_tree_shapes(variant)
    bad = [f"{_fmt(p)} {tuple(shapes[p])} (expected {s})" for p, s in expected.items()
           if p in shapes and tuple(shapes[p]) != s]
    if bad:
        raise PibridgeError(f"{len(bad)} leaves have shapes inconsistent with the detected sizes: "
                            + "; ".join(bad[:4]),
                            expected=f"the shapes of {variant.name} (sizes read from q_einsum, kv_einsum, gating, "
                                     "SigLIP embedding / attention / MLP, embedder, action_in_proj)",
                            fix="the checkpoint is corrupt or not an OpenPI Pi0 tree; run `pibridge inspect CKPT`")
