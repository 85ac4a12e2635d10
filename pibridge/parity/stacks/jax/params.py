"""OpenPI's parameter tree -> the per-layer, cast arrays the JAX stack runs on.

Axis legend: L Gemma layers, V SigLIP layers. The input is the nested dict OpenPI's restore_params returns
(openpi src/openpi/models/model.py:286-332: no "params" root, no trailing "value"); paths and shapes must
equal pibridge.convert.tree.openpi_tree_shapes(variant). Scanned leaves (leading L or V axis,
gemma.py:365-381, siglip.py:133-145) are split into one dict per layer. Leaves are held as
PrecisionPolicy.store leaves them (stored bf16 stays bf16 under float32; the jitted calls cast per call).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import jax

from pibridge.configs import Variant
from pibridge.convert.detect import shapes_of
from pibridge.convert.lora import EXPERTS, LoraSetting, LoraTree, attn_scalings, resolve_settings, split_lora
from pibridge.convert.mapping import STACKED_ROOTS
from pibridge.convert.tree import flatten, nest, openpi_tree_shapes
from pibridge.errors import PibridgeError
from pibridge.parity.stacks.jax.precision import PrecisionPolicy

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
    precision: str  # PrecisionPolicy.name the leaves were stored for
    lora_scaling: tuple = (None, None)  # attention LoRA scaling per expert (factors sit in llm_layers, unmerged)
    lora: dict | None = None  # {"<expert>/<kind>": LoraSetting.to_dict()} when the tree has LoRA factors


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
                                     "(pibridge.convert.tree.openpi_tree_shapes; LoRA factors are split off first)",
                            fix="pass the matching --variant")


def _scanned_roots(variant: Variant) -> dict[Path, int]:
    """The key table's scanned roots with their layer counts (L: Gemma depth, V: SigLIP depth)."""
    depth = {"L": variant.paligemma.depth, "V": variant.siglip.depth}
    return {root: depth[axis] for root, axis in STACKED_ROOTS.items()}


def _load(shapes: Mapping[Path, object], read: Callable[[Path], object], roots: dict[Path, int],
          put: Callable[[object], jax.Array]) -> dict[Path, object]:
    """Every leaf read and handed to jax one at a time (host memory: one leaf beyond the jax params);
    scanned leaves become a tuple of per-layer arrays."""
    out = {}
    for path in shapes:
        arr = read(path)
        count = next((n for root, n in roots.items() if path[:len(root)] == root), None)
        out[path] = put(arr) if count is None else tuple(put(arr[i]) for i in range(count))
        del arr
    return out


def _layers(flat: dict[Path, object], root: Path, count: int) -> tuple[dict, ...]:
    """The per-layer leaves under `root` as `count` nested dicts."""
    sub = {p[len(root):]: v for p, v in flat.items() if p[:len(root)] == root}
    return tuple(nest({p: v[i] for p, v in sub.items()}) for i in range(count))


def _subtree(flat: dict[Path, object], root: Path) -> dict:
    return nest({p[len(root):]: v for p, v in flat.items() if p[:len(root)] == root})


def _source(tree) -> tuple[Mapping[Path, object], Callable[[Path], object]]:
    """(leaf shapes, read one leaf) of a nested dict or of a checkpoint (anything with .leaves and .read(path),
    e.g. pibridge.convert.reader.OpenPICheckpoint: leaves are then read from disk one at a time)."""
    if isinstance(tree, Mapping):
        flat = _normalize_paths(flatten(tree))
        return flat, flat.__getitem__
    return tree.leaves, tree.read


def lora_settings_for(tree, lt: LoraTree, given: Mapping | None) -> dict:
    """alpha / rsLoRA of a LoRA tree: `given` ({(expert, kind): LoraSetting}), else the training config a
    `pibridge synth --lora` checkpoint records, else OpenPI's variant for the rank (resolve_settings)."""
    if given is not None:
        return dict(given)
    rec = (getattr(tree, "synth_record", None) or {}).get("lora")
    if rec:
        out = {}
        for key, v in rec["settings"].items():
            name, kind = key.split("/")
            out[(EXPERTS.index(name), kind)] = LoraSetting(v["rank"], v["alpha"], v["rslora"], "pibridge synth record")
        return out
    return resolve_settings(lt)


def prepare_params(tree, variant: Variant, policy: PrecisionPolicy, *, cast_up_front: bool = False,
                   lora: Mapping | None = None) -> ModelParams:
    """Check `tree` (OpenPI's nested dict, or an opened checkpoint) against `variant`, hand each leaf to jax
    (policy.store: bf16 leaves stay bf16 under float32 and are cast per call; cast_up_front=True casts every
    leaf to the param dtype here instead: same results, more memory), split scanned layers. LoRA factors are
    kept next to their base weights and applied in the forward pass; `lora`: {(expert, kind): LoraSetting}
    (default: lora_settings_for)."""
    shapes, read = _source(tree)
    base, lt = split_lora(shapes_of(shapes))
    check_tree({p: shapes[p] for p in base}, variant)
    settings = lora_settings_for(tree, lt, lora) if lt else {}
    if lt and set(settings) != set(lt.ranks()):
        raise PibridgeError(f"LoRA settings for {sorted(settings)}", f"one per adapted (expert, kind): "
                            f"{sorted(lt.ranks())}", "pass settings for exactly the adapters the tree holds")
    flat = _load(shapes, read, _scanned_roots(variant), policy.cast if cast_up_front else policy.store)
    img, llm = ("PaliGemma", "img"), ("PaliGemma", "llm")
    heads = ("action_in_proj", "action_out_proj") + (
        ("time_mlp_in", "time_mlp_out") if variant.pi05 else ("state_proj", "action_time_mlp_in",
                                                              "action_time_mlp_out"))
    return ModelParams(
        img_embed={"embedding": _subtree(flat, img + ("embedding",)), "pos_embedding": flat[img + ("pos_embedding",)]},
        img_blocks=_layers(flat, img + ("Transformer", "encoderblock"), variant.siglip.depth),
        img_head={"encoder_norm": _subtree(flat, img + ("Transformer", "encoder_norm")),
                  "head": _subtree(flat, img + ("head",))},
        embedder=flat[llm + ("embedder", "input_embedding")],
        llm_layers=_layers(flat, llm + ("layers",), variant.paligemma.depth),
        final_norm_expert=_subtree(flat, llm + ("final_norm_1",)),
        heads={h: _subtree(flat, (h,)) for h in heads},
        pi05=variant.pi05,
        variant=variant.name,
        precision=policy.name,
        lora_scaling=attn_scalings(settings),
        lora={f"{EXPERTS[e]}/{k}": v.to_dict() for (e, k), v in sorted(settings.items())} or None,
    )
