"""OpenPI's parameter tree -> the per-layer, cast arrays the JAX stack runs on.

Axis legend: L Gemma layers, V SigLIP layers. The input is the nested dict OpenPI's restore_params returns
(openpi src/openpi/models/model.py:286-332: no "params" root, no trailing "value"); paths and shapes must
equal pibridge.convert.tree.openpi_tree_shapes(variant). Scanned leaves (leading L or V axis,
gemma.py:365-381, siglip.py:133-145) are split into one dict per layer, each cast to the policy's dtype.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import jax

from pibridge.configs import Variant
from pibridge.convert.tree import flatten, nest, openpi_tree_shapes
from pibridge.errors import PibridgeError
from pibridge.parity.jax_stack.precision import PrecisionPolicy

Path = tuple[str, ...]


@dataclass(frozen=True)
class ModelParams:
    img_embed: dict  # {"embedding": {"kernel", "bias"}, "pos_embedding"}
    img_blocks: tuple[dict, ...]  # Transformer/encoderblock, one per SigLIP layer
    img_head: dict  # {"encoder_norm": {scale, bias}, "head": {kernel, bias}}
    embedder: jax.Array  # (vocab, D)
    llm_layers: tuple[dict, ...]  # llm/layers (both experts' leaves), one per Gemma layer
    final_norm_expert: dict  # llm/final_norm_1 (expert 0's final norm output is unused when sampling)
    heads: dict  # action_in_proj, action_out_proj and time_mlp_* (pi05) or state_proj, action_time_mlp_* (pi0)
    pi05: bool
    variant: str  # Variant.name the tree was checked against
    precision: str  # PrecisionPolicy.name the leaves were cast for


def _normalize_paths(flat: dict[Path, object]) -> dict[Path, object]:
    """Accept a {"params": tree} root and trailing "value" keys (training layout), like restore_params."""
    if flat and all(p[0] == "params" for p in flat):
        flat = {p[1:]: v for p, v in flat.items()}
    if flat and all(p[-1] == "value" for p in flat):  # model.py:327-331
        flat = {p[:-1]: v for p, v in flat.items()}
    return flat


def check_tree(flat: dict[Path, object], variant: Variant) -> None:
    expected = openpi_tree_shapes(variant)
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected))
    wrong = [(p, tuple(flat[p].shape), s) for p, s in expected.items() if p in flat and tuple(flat[p].shape) != s]
    if missing or extra or wrong:
        parts = [f"missing {len(missing)} leaves, e.g. {'/'.join(missing[0])}" if missing else "",
                 f"{len(extra)} unexpected leaves, e.g. {'/'.join(extra[0])}" if extra else "",
                 f"{len(wrong)} wrong shapes, e.g. {'/'.join(wrong[0][0])} {wrong[0][1]} != {wrong[0][2]}"
                 if wrong else ""]
        raise PibridgeError(f"parameter tree does not match variant {variant.name}: "
                            + "; ".join(p for p in parts if p),
                            expected=f"the {len(expected)} leaves of OpenPI's Pi0 tree for {variant.name} "
                                     "(pibridge.convert.tree.openpi_tree_shapes; LoRA leaves are not supported)",
                            fix="pass the matching --variant, or merge LoRA weights into the base weights first")


def _layers(flat: dict[Path, object], root: Path, count: int, policy: PrecisionPolicy) -> tuple[dict, ...]:
    """Split the scanned leaves under `root` into `count` per-layer nested dicts."""
    sub = {p[len(root):]: v for p, v in flat.items() if p[:len(root)] == root}
    return tuple(nest({p: policy.cast(v[i]) for p, v in sub.items()}) for i in range(count))


def _subtree(flat: dict[Path, object], root: Path, policy: PrecisionPolicy) -> dict:
    return nest({p[len(root):]: policy.cast(v) for p, v in flat.items() if p[:len(root)] == root})


def prepare_params(tree: Mapping, variant: Variant, policy: PrecisionPolicy) -> ModelParams:
    """Check `tree` against `variant`, cast every leaf to the policy's param dtype, split scanned layers."""
    flat = _normalize_paths(flatten(tree))
    check_tree(flat, variant)
    img, llm = ("PaliGemma", "img"), ("PaliGemma", "llm")
    heads = ("action_in_proj", "action_out_proj") + (
        ("time_mlp_in", "time_mlp_out") if variant.pi05 else ("state_proj", "action_time_mlp_in",
                                                              "action_time_mlp_out"))
    return ModelParams(
        img_embed={"embedding": _subtree(flat, img + ("embedding",), policy),
                   "pos_embedding": policy.cast(flat[img + ("pos_embedding",)])},
        img_blocks=_layers(flat, img + ("Transformer", "encoderblock"), variant.siglip.depth, policy),
        img_head={"encoder_norm": _subtree(flat, img + ("Transformer", "encoder_norm"), policy),
                  "head": _subtree(flat, img + ("head",), policy)},
        embedder=policy.cast(flat[llm + ("embedder", "input_embedding")]),
        llm_layers=_layers(flat, llm + ("layers",), variant.paligemma.depth, policy),
        final_norm_expert=_subtree(flat, llm + ("final_norm_1",), policy),
        heads={h: _subtree(flat, (h,), policy) for h in heads},
        pi05=variant.pi05,
        variant=variant.name,
        precision=policy.name,
    )
