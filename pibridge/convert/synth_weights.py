"""Synthetic OpenPI weights from a version-stable formula (no framework RNG, no transcendental numpy calls).

Element i (flat C-order index) of a leaf is
    x  = fmix64(i * 0x9E3779B97F4A7C15 + key)          uint64, wrapping (murmur3's 64-bit finaliser)
    s  = sum of the four 16-bit fields of x             in [0, 262140] (the sum does not depend on byte order)
    z  = s - 131070                                     Irwin-Hall(4): near-Gaussian, mean 0, std 37837.227
    v  = float32(z) * float32(std / 37837.227...) [+ float32(mean of its last-axis segment)] [* float32(gain)]
with key = first 8 bytes (little endian) of sha256("pibridge-synth-v1|<seed>|<a/b/c path>"). Integer ops
and single IEEE float32 multiplies / adds only, so every numpy build gives the same bits.

Scales (per role; std = 1/sqrt(fan-in) for matrices) keep activations O(1) through every layer:
- Gemma RMSNorm `scale` ~ N(0, 0.1): OpenPI multiplies by (1 + scale) (openpi gemma.py:112-131).
- embedder table ~ N(0, 1/sqrt(D)): OpenPI multiplies embeddings by sqrt(D) (gemma.py:141-151).
- pi05 adaRMS Dense_0: kernel 0.5/sqrt(D), bias segments [scale | shift | gate] (gemma.py:119-131, the
  3*D output split in that order) with means (0, 0, 0.5): 1+scale stays near 1, the gate near 0.5 (not 1,
  so a missing gate multiply shows in parity).
- SigLIP LayerNorm scale ~ N(1, 0.05) (flax nn.LayerNorm multiplies by scale itself), biases N(0, 0.02).
Options: `sharp_attention` multiplies q and k projections (Gemma q_einsum, kv_einsum[:, 0], SigLIP
query/key) by 2.5, so attention logits have std ~6 and softmax is peaked as in trained models;
`outliers` multiplies OUTLIER_COUNT residual channels (chosen from the seed) by OUTLIER_GAIN in every
kernel that writes the residual stream of that tower (embeddings, attention out, MLP out, input heads).

Axis legend (leaf shapes, see tree.py): L Gemma layers, V SigLIP layers, N heads, K kv heads, D width,
H head_dim, F mlp dim, P patch size, C channels, T image tokens, W vocabulary, A action dim.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from pibridge.configs import Variant
from pibridge.convert.tree import openpi_tree_shapes

Path = tuple[str, ...]
Shape = tuple[int, ...]
Box = tuple[slice, ...]

FORMULA_VERSION = "pibridge-synth-v1"
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2, _S33 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53), np.uint64(33)
_HALF_RANGE = 131070  # 4 * 65535 / 2
_Z_STD = math.sqrt(4 * (65536.0**2 - 1) / 12)  # std of the sum of four uniform 16-bit integers
_BLOCK = 1 << 18  # elements hashed per numpy pass (2 MiB of uint64: stays in cache)
_IOTA = np.arange(_BLOCK, dtype=np.uint64)

SHARP_GAIN = 2.5
OUTLIER_GAIN = 10.0
OUTLIER_COUNT = 4


@dataclass(frozen=True)
class LeafPlan:
    """How to generate one leaf: std, per-segment means of the last axis, (axis, index, gain) multipliers."""

    path: Path
    shape: Shape
    key: int
    std: float
    means: tuple[float, ...] = (0.0,)
    gains: tuple[tuple[int, int, float], ...] = ()

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def stream_key(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{FORMULA_VERSION}|{seed}|{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


class _Work:
    """Reusable cache-sized buffers for the hash (avoids an allocation per numpy pass)."""

    def __init__(self) -> None:
        self.x = np.empty(_BLOCK, np.uint64)
        self.t = np.empty(_BLOCK, np.uint64)
        self.s = np.empty(_BLOCK, np.int32)


def _hash_into(key: int, index: np.ndarray, scale: float, out: np.ndarray, w: _Work) -> None:
    """out[:] = float32(z(index)) * float32(scale), z from the module docstring formula; len <= _BLOCK."""
    n = len(index)
    x, t, s = w.x[:n], w.t[:n], w.s[:n]
    np.multiply(index, _GOLDEN, out=x)
    np.add(x, np.uint64(key), out=x)
    for mult in (_M1, _M2):
        np.right_shift(x, _S33, out=t)
        np.bitwise_xor(x, t, out=x)
        np.multiply(x, mult, out=x)
    np.right_shift(x, _S33, out=t)
    np.bitwise_xor(x, t, out=x)
    fields = x.view(np.uint16).reshape(n, 4)  # (n,) uint64 -> (n, 4) uint16
    np.add(fields[:, 0], fields[:, 1], out=s, dtype=np.int32)
    np.add(s, fields[:, 2], out=s, dtype=np.int32)
    np.add(s, fields[:, 3], out=s, dtype=np.int32)
    np.subtract(s, _HALF_RANGE, out=s)
    out[:] = s  # exact: |z| < 2**24
    out *= np.float32(scale)


def hashed_normal(key: int, index: np.ndarray) -> np.ndarray:
    """Near-Gaussian N(0, 1) float32 for uint64 indices (module docstring formula)."""
    out = np.empty(len(index), np.float32)
    w = _Work()
    for a in range(0, len(index), _BLOCK):
        _hash_into(key, index[a:a + _BLOCK], 1.0 / _Z_STD, out[a:a + _BLOCK], w)
    return out


def _flat_values(plan: LeafPlan, start: int, stop: int, scale: float) -> np.ndarray:
    """Values of flat indices [start, stop), hashed in cache-sized blocks."""
    out = np.empty(stop - start, np.float32)
    w = _Work()
    for a in range(start, stop, _BLOCK):
        n = min(_BLOCK, stop - a)
        np.add(_IOTA[:n], np.uint64(a), out=w.t[:n])
        idx = w.t[:n].copy()
        _hash_into(plan.key, idx, scale, out[a - start:a - start + n], w)
    return out


def _box_values(plan: LeafPlan, box: Box, scale: float) -> np.ndarray:
    """Values of a rectangular box, row by row of the last axis."""
    starts = [s.start for s in box]
    dims = tuple(s.stop - s.start for s in box)
    strides = [math.prod(plan.shape[k + 1:]) for k in range(len(plan.shape))]
    if all(d == full for d, full in zip(dims[1:], plan.shape[1:])):  # contiguous in C order
        first = starts[0] * strides[0]
        return _flat_values(plan, first, first + math.prod(dims), scale).reshape(dims)  # (n,) -> box shape
    n_last = dims[-1]
    rows = math.prod(dims[:-1])
    out = np.empty((rows, n_last), np.float32)  # (..., X) -> (R, X)
    per = max(1, _BLOCK // n_last)
    w = _Work()
    for r0 in range(0, rows, per):
        idx = np.unravel_index(np.arange(r0, min(rows, r0 + per)), dims[:-1])
        row_start = sum((i.astype(np.uint64) + np.uint64(s0)) * np.uint64(st)
                        for i, s0, st in zip(idx, starts[:-1], strides[:-1]))
        flat = (row_start + np.uint64(starts[-1]))[:, None] + _IOTA[None, :n_last]  # (r, 1) + (1, X) -> (r, X)
        flat = flat.reshape(-1)  # (r, X) -> (r*X,)
        dst = out[r0:r0 + len(row_start)].reshape(-1)  # (r, X) -> (r*X,) view
        for a in range(0, len(flat), _BLOCK):
            _hash_into(plan.key, flat[a:a + _BLOCK], scale, dst[a:a + _BLOCK], w)
    return out.reshape(dims)  # (R, X) -> box shape


def generate(plan: LeafPlan, box: Box | None = None) -> np.ndarray:
    """float32 values of `plan` inside `box` (the whole leaf when None)."""
    box = tuple(slice(0, d) for d in plan.shape) if box is None else _normalize(box, plan.shape)
    scale = plan.std / _Z_STD
    if not plan.shape:
        v = _flat_values(plan, 0, 1, scale).reshape(())
        v += np.float32(plan.means[0])
        return v
    v = _box_values(plan, box, scale)
    _add_segment_means(plan, box, v)
    for axis, index, gain in plan.gains:
        if box[axis].start <= index < box[axis].stop:
            sel = (slice(None),) * axis + (index - box[axis].start,)
            v[sel] *= np.float32(gain)
    return v


def _add_segment_means(plan: LeafPlan, box: Box, v: np.ndarray) -> None:
    width = plan.shape[-1] // len(plan.means)
    last = box[-1]
    for seg, mean in enumerate(plan.means):
        lo, hi = max(last.start, seg * width), min(last.stop, (seg + 1) * width)
        if mean != 0.0 and lo < hi:
            v[..., lo - last.start:hi - last.start] += np.float32(mean)


def _normalize(box: Box, shape: Shape) -> Box:
    return tuple(slice(*s.indices(d)[:2]) for s, d in zip(box, shape))


# --- per-role scales -------------------------------------------------------------------------------

def _fan_in(path: Path, shape: Shape) -> int:
    """Input size of a kernel, by role (axis layouts in tree.py)."""
    name = path[-1] if path[-1] not in ("w", "kernel") else path[-2]
    if name.startswith(("q_einsum", "kv_einsum")):
        return shape[-2]  # (L, N, D, H) / (L, 2, K, D, H): contracts D
    if name.startswith("attn_vec_einsum"):
        return shape[1] * shape[2]  # (L, N, H, D): contracts N*H
    if name == "gating_einsum":
        return shape[2]  # (L, 2, D, F)
    if name == "linear":
        return shape[1]  # (L, F, D)
    if name in ("query", "key", "value"):
        return shape[1]  # (V, D, N, H)
    if name == "out":
        return shape[1] * shape[2]  # (V, N, H, D)
    if name == "embedding":
        return shape[0] * shape[1] * shape[2]  # conv (P, P, C, D)
    return shape[-2]  # Dense / Linear kernels (..., in, out)


def _std_and_means(path: Path, shape: Shape) -> tuple[float, tuple[float, ...]]:
    last = path[-1]
    if last == "input_embedding":
        return 1.0 / math.sqrt(shape[-1]), (0.0,)
    if last == "pos_embedding":
        return 0.2, (0.0,)
    if "Dense_0" in path and any(p.startswith(("pre_attention_norm", "pre_ffw_norm", "final_norm")) for p in path):
        if last == "bias":
            return 0.05, (0.0, 0.0, 0.5)  # [scale | shift | gate]
        return 0.5 / math.sqrt(shape[-2]), (0.0,)
    if last == "scale":
        if any(p.startswith("LayerNorm") or p == "encoder_norm" for p in path):
            return 0.05, (1.0,)  # flax LayerNorm: y * scale
        return 0.1, (0.0,)  # Gemma RMSNorm: y * (1 + scale)
    if last == "bias":
        return 0.02, (0.0,)
    return 1.0 / math.sqrt(_fan_in(path, shape)), (0.0,)


def _sharp(path: Path, shape: Shape) -> tuple[float, tuple[tuple[int, int, float], ...]]:
    """(std multiplier, gains) that make attention peaked."""
    name = path[-2]
    if name.startswith("q_einsum") or (name in ("query", "key") and path[-1] == "kernel"):
        return SHARP_GAIN, ()
    if name.startswith("kv_einsum"):
        return 1.0, ((1, 0, SHARP_GAIN),)  # (L, 2, K, D, H): index 0 of axis 1 is k
    return 1.0, ()


# Kernels whose last axis writes a residual stream ("llm" PaliGemma, "expert" action expert, "img" SigLIP).
_RESIDUAL_WRITERS = {
    "PaliGemma/llm/embedder/input_embedding": "llm",
    "PaliGemma/llm/layers/attn/attn_vec_einsum/w": "llm",
    "PaliGemma/llm/layers/mlp/linear": "llm",
    "PaliGemma/img/head/kernel": "llm",  # image tokens enter the PaliGemma stream (siglip.py:284-288)
    "PaliGemma/llm/layers/attn/attn_vec_einsum_1/w": "expert",
    "PaliGemma/llm/layers/mlp_1/linear": "expert",
    "action_in_proj/kernel": "expert",
    "state_proj/kernel": "expert",  # pi0 only
    "action_time_mlp_out/kernel": "expert",  # pi0 only
    "PaliGemma/img/embedding/kernel": "img",
    "PaliGemma/img/pos_embedding": "img",
    "PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0/out/kernel": "img",
    "PaliGemma/img/Transformer/encoderblock/MlpBlock_0/Dense_1/kernel": "img",
}


def outlier_channels(seed: int, tower: str, width: int) -> tuple[int, ...]:
    """OUTLIER_COUNT distinct channels of a residual stream, from the seed."""
    chosen: list[int] = []
    j = 0
    while len(chosen) < min(OUTLIER_COUNT, width):
        c = stream_key(seed, f"outlier/{tower}/{j}") % width
        if c not in chosen:
            chosen.append(c)
        j += 1
    return tuple(sorted(chosen))


LORA_B_GAIN = 0.6  # lora_b std multiplier: delta ~0.6x the base weight, so dropping it fails at the first LLM stage


def _lora_std(path: Path, shape: Shape, base: Shape, scaling: float) -> float:
    """lora_a: 1/sqrt(fan-in of its base) (same contraction); lora_b: LORA_B_GAIN/sqrt(r) / scaling (the update
    scaling * A @ B is then ~LORA_B_GAIN x the base whatever alpha is), and /sqrt(N) more for attn_vec_einsum,
    whose second LoRA einsum also sums out the head axis N (lora.py:67-85)."""
    from pibridge.convert.lora import LLM_LAYERS

    name = path[-2] if path[-1] in ("lora_a", "lora_b") else path[-1].rsplit("_lora_", 1)[0]
    if path[-1].endswith("a"):
        return 1.0 / math.sqrt(_fan_in(LLM_LAYERS + (name, "w") if path[-1] == "lora_a" else LLM_LAYERS + (name,),
                                       base))
    heads = base[1] if name.startswith("attn_vec_einsum") else 1
    return LORA_B_GAIN / math.sqrt(shape[-2] * heads) / scaling


def plan_leaves(variant: Variant, seed: int, *, sharp_attention: bool = False, outliers: bool = False,
                lora: dict | None = None) -> list[LeafPlan]:
    """One plan per leaf of OpenPI's tree for `variant` (plus the LoRA factors for `lora`, {(expert, kind): (rank,
    scaling applied in the forward: alpha-derived for attn, 1 for ffn)}, pibridge.convert.lora), in canonical
    (sorted path) order."""
    plans = []
    tree = openpi_tree_shapes(variant)
    if lora:
        from pibridge.convert.lora import KINDS, base_path, factor_paths, lora_tree_shapes

        owner = {p: (base_path(role, k[0]), k) for k in lora for role in KINDS[k[1]] for p in factor_paths(role, k[0])}
        for path, shape in sorted(lora_tree_shapes(tree, {k: r for k, (r, _) in lora.items()}).items()):
            base, key = owner[path]
            std = _lora_std(path, shape, tree[base], lora[key][1])
            plans.append(LeafPlan(path, shape, stream_key(seed, "/".join(path)), std))
    for path, shape in tree.items():
        std, means = _std_and_means(path, shape)
        gains: tuple[tuple[int, int, float], ...] = ()
        if sharp_attention:
            mult, gains = _sharp(path, shape)
            std *= mult
        tower = _RESIDUAL_WRITERS.get("/".join(path)) if outliers else None
        if tower is not None:
            gains += tuple((len(shape) - 1, c, OUTLIER_GAIN) for c in outlier_channels(seed, tower, shape[-1]))
        plans.append(LeafPlan(path, shape, stream_key(seed, "/".join(path)), std, means, gains))
    return sorted(plans, key=lambda p: p.path)
