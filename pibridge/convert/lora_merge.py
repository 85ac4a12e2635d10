"""Merge OpenPI's LoRA factors into their base weights while the converter streams (float32 math, cast once).

Axis legend: N heads, K kv heads, D width, H head_dim, F mlp dim, r rank; the leading scanned L axis is indexed
away one layer at a time. The effective weight of OpenPI's forward (lora.py:53-148), per einsum:
- q_einsum (N, D, H), kv_einsum (2, K, D, H), gating_einsum (2, D, F), linear (F, D): W + s * A @ B batched over
  the leading axes (per head n, per (c, k), per branch i), A (..., X, r), B (..., r, Y);
- attn_vec_einsum (N, H, D): both LoRA einsums sum out N (`BTNH,NHL->BTL`, `BTL,NLD->BTD`), so
  W[n, h, d] + s * sum_l A[n, h, l] * sum_n' B[n', l, d]: A @ (B summed over N), NOT A[n] @ B[n];
- s = the attention scaling (alpha / r or alpha / sqrt(r)) for the three attention einsums, 1 for the MLP
  (lora.FeedForward applies no scaling).
Stored dtypes (bf16 base, float32 factors) are widened to float32, merged, and handed on in float32: the
writer casts each tensor to its planned dtype once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from pibridge.convert.lora import Adapter, LoraSetting, LoraTree

Path = tuple[str, ...]


def merge_scaling(adapter: Adapter, settings: Mapping[tuple[int, str], LoraSetting]) -> float:
    return settings[(adapter.expert, "attn")].scaling if adapter.kind == "attn" else 1.0


def merge_layer(adapter: Adapter, w: np.ndarray, a: np.ndarray, b: np.ndarray, scaling: float) -> np.ndarray:
    """One layer's merged weight, float32. w (..., X, Y), a (..., X, r), b (..., r, Y). One float32 layer-sized
    array: the stored (bf16) base is widened inside the add, not copied first."""
    a, b = (np.asarray(x).astype(np.float32) for x in (a, b))
    if adapter.role == "attn_vec_einsum":
        delta = a @ b.sum(axis=0)  # (N, H, r) @ (r, D) -> (N, H, D): N summed out of B
    else:
        delta = a @ b  # (..., X, r) @ (..., r, Y) -> (..., X, Y)
    if scaling != 1.0:
        delta *= np.float32(scaling)
    np.add(delta, np.asarray(w), out=delta)  # float32 result (a bf16 w is cast exactly, chunk by chunk)
    return delta


PART_ROLES = ("kv_einsum", "gating_einsum")  # the first per-layer axis is the plan's part (k / v, gate / up)


class MergedLeaf:
    """A stacked base leaf plus its factors; `leaf[i]` is layer i merged in float32, `leaf[i][part]` for kv / gating
    only that part (the merge is batched over those axes, so a part merges alone). The last merge is cached; the
    stored leaves are held, never a merged stack."""

    def __init__(self, adapter: Adapter, base: np.ndarray, a: np.ndarray, b: np.ndarray, scaling: float):
        self.adapter, self.base, self.a, self.b, self.scaling = adapter, base, a, b, scaling
        self.shape, self.dtype = tuple(base.shape), np.dtype(np.float32)
        self._cache: tuple[tuple, np.ndarray] | None = None

    def __getitem__(self, i):
        if not isinstance(i, (int, np.integer)):
            raise TypeError("MergedLeaf is indexed one layer at a time")
        if self.adapter.role in PART_ROLES:
            return _LayerParts(self, int(i))
        return self.merged((int(i),))

    def merged(self, idx: tuple) -> np.ndarray:
        if self._cache is None or self._cache[0] != idx:
            self._cache = None  # release the previous slice first
            self._cache = (idx, merge_layer(self.adapter, self.base[idx], self.a[idx], self.b[idx], self.scaling))
        return self._cache[1]


class _LayerParts:
    """Layer i of a kv / gating MergedLeaf: indexed by part, merged on demand."""

    def __init__(self, leaf: MergedLeaf, i: int):
        self.leaf, self.i, self.shape = leaf, i, leaf.shape[1:]

    def __getitem__(self, part) -> np.ndarray:
        return self.leaf.merged((self.i, int(part)))


def merging_reader(read: Callable[[Path], np.ndarray], tree: LoraTree,
                   settings: Mapping[tuple[int, str], LoraSetting]) -> Callable[[Path], object]:
    """`read` for plan.iter_tensors: an adapted base leaf comes back as a MergedLeaf (its factors read with it),
    every other leaf as `read` gives it."""
    adapters = tree.by_base()

    def read_merged(path: Path):
        ad = adapters.get(path)
        if ad is None:
            return read(path)
        return MergedLeaf(ad, read(path), read(ad.a), read(ad.b), merge_scaling(ad, settings))

    return read_merged
