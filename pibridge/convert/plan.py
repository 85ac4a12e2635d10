"""Plan a conversion from leaf metadata, stream the converted tensors, and map back (LeRobot -> OpenPI).

Axis legend: L Gemma layers, V SigLIP layers (the scanned leading axes); other axes per
pibridge.convert.transforms.
The plan is pure: (leaf path -> shape) in, one PlannedTensor per LeRobot key out, plus an accounting of
both directions (source leaves no row reads; destination keys whose source is missing). Streaming
(`iter_tensors`, written by weights.write_weights) reads each source leaf once and emits all tensors made from it before the next read, so
peak memory is one source leaf plus one destination tensor. Planned order: float32 tensors first, then
bfloat16 (keeps every offset of the safetensors file aligned to its dtype, as the safetensors library
does), grouped by source leaf in table order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace

import ml_dtypes
import numpy as np

from pibridge.configs import Variant
from pibridge.convert import transforms as T
from pibridge.convert.detect import Detection, Path, Shape, detect, shapes_of, stack_axis
from pibridge.convert.lora import LoraTree, merge_rule
from pibridge.convert.lora_merge import merging_reader
from pibridge.convert.mapping import Row, axis_sizes, dest_key, lerobot_dtype, row_shape, rows_for, vision_prefix
from pibridge.convert.tree import openpi_tree_shapes
from pibridge.errors import PibridgeError

LEROBOT_METADATA = {"format": "pt"}  # what LeRobot's save path writes (safetensors save_model / huggingface_hub)
NP_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


@dataclass(frozen=True)
class PlannedTensor:
    key: str  # LeRobot state-dict key
    shape: Shape
    dtype: str  # "float32" | "bfloat16"
    role: str
    transform: str
    source: Path | None  # None: synthesized
    layer: int | None  # index on the scanned axis
    part: int | None  # index on the first per-layer axis (kv / gating split)
    source_shape: Shape  # shape the transform sees (after layer and part selection)
    merge: str = ""  # LoRA merged into the source slice first (lora.merge_rule), "" for none

    def audit_line(self, key_width: int = 100) -> str:
        src = "<zeros>" if self.source is None else "/".join(self.source)
        sel = "".join(f"[{i}]" for i in (self.layer, self.part) if i is not None)
        return (f"{self.key:<{key_width}} {str(self.shape):<22} {self.dtype:<8} <- {self.transform:<17} "
                f"{src}{sel} {self.source_shape}" + (f" {self.merge}" if self.merge else ""))


@dataclass(frozen=True)
class Accounting:
    unconsumed_sources: tuple[str, ...]  # source leaves no table row reads
    ignored_sources: tuple[str, ...]  # read by nothing on purpose (reported, not an error)
    unfilled_destinations: tuple[str, ...]  # destination keys whose source is missing
    synthesized: tuple[str, ...]  # destination keys with no source (zeros)
    tie_mismatches: tuple[str, ...] = ()  # inverse only: tied copies (lm_head) that differ

    @property
    def complete(self) -> bool:
        return not (self.unconsumed_sources or self.unfilled_destinations or self.tie_mismatches)

    def require_complete(self, what: str) -> None:
        if self.complete:
            return
        parts = [f"{len(v)} {n} (e.g. {', '.join(v[:3])})" for n, v in (
            ("unconsumed source leaves", self.unconsumed_sources),
            ("unfilled destination keys", self.unfilled_destinations),
            ("tied copies that differ", self.tie_mismatches)) if v]
        raise PibridgeError(f"{what}: " + "; ".join(parts), expected="every source consumed, every destination filled",
                            fix="run with --dry-run to see the key audit; the input is not a complete pi0 / pi05 tree")


@dataclass(frozen=True)
class ConversionPlan:
    model: str  # "pi0" | "pi05"
    variant: Variant
    transformers_version: str  # decides the SigLIP key layout
    weights_dtype: str  # dtype of the written file: "float32" or LeRobot's mixed "bfloat16" layout
    tensors: tuple[PlannedTensor, ...]
    accounting: Accounting
    lora: dict | None = None  # {(expert, kind): LoraSetting} merged on the way (factor leaves consumed by it)
    lora_tree: LoraTree | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(t.key for t in self.tensors)

    def total_bytes(self) -> int:
        return sum(int(np.prod(t.shape)) * NP_DTYPES[t.dtype].itemsize for t in self.tensors)


def _part_shape(row: Row, shape: Shape) -> Shape:
    """Per-layer shape for the row: drop the scanned axis, then the part axis."""
    s = shape[1:] if row.stack else shape
    return s[1:] if row.part is not None else s


def _synth_shape(row: Row, variant: Variant) -> Shape:
    return row_shape(row, axis_sizes(variant))


def _expand(row: Row, shapes: Mapping[Path, Shape], variant: Variant, vision: str, wdt: str) -> list[PlannedTensor]:
    if row.source is None:
        shape = _synth_shape(row, variant)
        key = dest_key(row, None, vision)
        return [PlannedTensor(key, shape, lerobot_dtype(key, wdt), row.role, T.ZEROS, None, None, None, shape)]
    full = shapes[row.source]
    layers = range(full[0]) if row.stack else [None]
    src = _part_shape(row, full)
    dst = T.get_transform(row.transform).shape(src)
    out = []
    for i in layers:
        key = dest_key(row, i, vision)
        out.append(PlannedTensor(key, dst, lerobot_dtype(key, wdt), row.role, row.transform, row.source, i, row.part,
                                 src))
    return out


def plan_conversion(shapes: Mapping[Path, Shape], *, transformers_version: str = "5.5.4",
                    weights_dtype: str = "float32", detection: Detection | None = None,
                    lora: Mapping | None = None) -> ConversionPlan:
    """Plan every LeRobot tensor from leaf shapes alone (no data): `shapes` is {path: shape} or a reader's
    {path: LeafInfo}. Raises PibridgeError on an undetectable tree; missing / extra leaves are reported in
    `accounting` (call `plan.accounting.require_complete(...)` before writing). A LoRA tree needs `lora`
    ({(expert, kind): LoraSetting}, pibridge.convert.lora.resolve_settings): its factors count as consumed by the
    merge into their base leaf, which each planned tensor of that leaf records (`merge`)."""
    shapes = shapes_of(shapes)
    det = detection or detect(shapes)
    if det.lora is not None and lora is None:
        raise PibridgeError("a LoRA tree planned without LoRA settings", "alpha / rsLoRA per adapted expert",
                            "plan with lora=resolve_settings(detection.lora, ...)")
    vision = vision_prefix(transformers_version)
    rows = rows_for(det.model)
    planned: list[PlannedTensor] = []
    missing: list[str] = []
    for row in rows:
        if row.source is not None and row.source not in shapes:
            missing += [dest_key(row, i, vision) for i in _layers_of(row, det.variant)]
            continue
        planned += _expand(row, shapes, det.variant, vision, weights_dtype)
    read = {r.source for r in rows if r.source is not None}
    if det.lora is not None:
        rules = {a.base: merge_rule(a, lora) for a in det.lora.adapters}
        planned = [replace(t, merge=rules.get(t.source, "")) for t in planned]
        read |= {p for a in det.lora.adapters if a.base in read for p in (a.a, a.b)}
    unconsumed = tuple(sorted("/".join(p) for p in shapes if p not in read))
    synth = tuple(t.key for t in planned if t.source is None)
    acc = Accounting(unconsumed, (), tuple(missing), synth)
    planned.sort(key=lambda t: -NP_DTYPES[t.dtype].itemsize)  # stable: keeps source grouping
    return ConversionPlan(det.model, det.variant, transformers_version, weights_dtype, tuple(planned), acc,
                          dict(lora) if det.lora is not None else None, det.lora)


def _layers_of(row: Row, variant: Variant) -> list[int | None]:
    if row.stack == "L":
        return list(range(variant.paligemma.depth))
    if row.stack == "V":
        return list(range(variant.siglip.depth))
    return [None]


# --- streaming ---------------------------------------------------------------------------------------

def _select(leaf: np.ndarray, t: PlannedTensor) -> np.ndarray:
    x = leaf[t.layer] if t.layer is not None else leaf  # drop the scanned L / V axis
    x = x[t.part] if t.part is not None else x  # drop the kv / gating part axis
    if x.shape != t.source_shape:
        raise PibridgeError(f"leaf {'/'.join(t.source)} slice has shape {x.shape}", expected=str(t.source_shape),
                            fix="the checkpoint data disagrees with its metadata; re-save or re-download it")
    return x


def iter_tensors(plan: ConversionPlan,
                 read: Callable[[Path], np.ndarray]) -> Iterator[tuple[PlannedTensor, np.ndarray]]:
    """Yield (planned tensor, array) in plan order; `read(path)` is called once per run of the same source,
    after the previous leaf is released here (drop your own reference to the yielded array before asking
    for the next one to keep one leaf in memory). Arrays keep the source dtype and may be non-contiguous
    views: the writer casts to `t.dtype` chunkwise. A LoRA plan reads an adapted leaf with its factors and
    yields its tensors merged in float32 (lora_merge), one layer at a time."""
    if plan.lora_tree is not None:
        read = merging_reader(read, plan.lora_tree, plan.lora)
    source, leaf = None, None
    for t in plan.tensors:
        if t.source is None:
            yield t, T.zeros_view(t.shape, NP_DTYPES[t.dtype])
        else:
            if source != t.source:
                source, leaf = None, None  # release the previous leaf before reading the next
                source, leaf = t.source, read(t.source)
            yield t, T.get_transform(t.transform).forward(_select(leaf, t))


def convert_tree(tree: Mapping[Path, np.ndarray], **plan_kwargs) -> tuple[ConversionPlan, dict[str, np.ndarray]]:
    """In-memory conversion (tests, tiny models): {OpenPI path: array} -> (plan, {LeRobot key: array}).
    Arrays are cast to the planned dtype."""
    plan = plan_conversion({p: tuple(a.shape) for p, a in tree.items()}, **plan_kwargs)
    out = {t.key: np.ascontiguousarray(x).astype(NP_DTYPES[t.dtype], copy=False)
           for t, x in iter_tensors(plan, tree.__getitem__)}
    return plan, out


# --- inverse: LeRobot state dict -> OpenPI tree ---------------------------------------------------------

def inverse_convert(state: Mapping[str, np.ndarray], variant: Variant, *,
                    transformers_version: str = "5.5.4") -> tuple[dict[Path, np.ndarray], Accounting]:
    """Rebuild the OpenPI tree (stacked leaves) from a LeRobot state dict, from the same table.

    Each source leaf takes the dtype of the first tensor written into it. Tied copies (lm_head vs
    embed_tokens) are compared bit for bit; the synthesized expert lm_head is ignored.
    """
    shapes = openpi_tree_shapes(variant)
    model = "pi05" if variant.pi05 else "pi0"
    plan = plan_conversion(shapes, transformers_version=transformers_version,
                           detection=Detection(model, variant, ()))
    tree: dict[Path, np.ndarray] = {}
    filled: dict[tuple, str] = {}
    ties, unfilled, ignored = [], [], []
    for t in plan.tensors:
        if t.source is None:  # synthesized on the way out (expert lm_head): nothing to rebuild
            ignored += [t.key] if t.key in state else []
        elif t.key not in state:
            unfilled.append(t.key)
        else:
            _place(tree, shapes, t, np.asarray(state[t.key]), filled, ties)
    planned = set(plan.keys)
    unconsumed = tuple(sorted(k for k in state if k not in planned))
    return tree, Accounting(unconsumed, tuple(ignored), tuple(unfilled), (), tuple(ties))


def _place(tree, shapes, t: PlannedTensor, y: np.ndarray, filled: dict, ties: list) -> None:
    if y.shape != t.shape:
        raise PibridgeError(f"{t.key} has shape {y.shape}", expected=str(t.shape),
                            fix="the LeRobot file does not match the given variant")
    x = T.get_transform(t.transform).inverse(y, t.source_shape)
    slot = (t.source, t.layer, t.part)
    if slot in filled:  # a tied copy: must be bit-identical to the first
        if not np.array_equal(_select(tree[t.source], t).view(np.uint8), np.ascontiguousarray(x).view(np.uint8)):
            ties.append(f"{t.key} != {filled[slot]}")
        return
    if t.source not in tree:
        tree[t.source] = np.empty(shapes[t.source], dtype=y.dtype)
    leaf = tree[t.source]
    idx = tuple(i for i in (t.layer, t.part) if i is not None)
    leaf[idx] = x
    filled[slot] = t.key


__all__ = ["Accounting", "ConversionPlan", "PlannedTensor", "convert_tree", "inverse_convert", "iter_tensors",
           "plan_conversion", "stack_axis"]
