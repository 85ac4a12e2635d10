"""Deterministic synthetic parameters, inputs and noise for validating the JAX stack (numpy only).

Values come from a counter-based integer hash (splitmix64 of the flat index, keyed by the leaf path and a
seed), not from a framework RNG, so every environment builds the same arrays. Every leaf is non-trivial:
norm scales and adaRMS Dense leaves are non-zero (OpenPI zero-inits them, which would hide bugs) and
q/k projections can be scaled up ("sharp") so attention is peaked and errors show.
Axis legend: B batch, C cameras, L prompt tokens, A horizon, E action dim.
"""

from __future__ import annotations

import zlib
from functools import cache

import numpy as np

from pibridge.configs import Variant, load_variant
from pibridge.convert.tree import openpi_tree_shapes
from pibridge.parity.inputs import IMAGE_SIZE, ModelInputs

_U64 = np.uint64


def hash_uniform(key: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Uniform [0, 1) float64 array of `shape`, a pure function of (key, seed, index)."""
    n = int(np.prod(shape, dtype=np.int64))
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2**64 by design
        base = _U64(zlib.crc32(key.encode())) * _U64(0x9E3779B97F4A7C15) + _U64(seed) * _U64(0xD1B54A32D192ED03)
        z = np.arange(n, dtype=_U64) + base + _U64(0x9E3779B97F4A7C15)  # splitmix64
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        z = z ^ (z >> _U64(31))
    return ((z >> _U64(11)).astype(np.float64) * 2.0**-53).reshape(shape)


def hash_centered(key: str, shape: tuple[int, ...], std: float, seed: int = 0) -> np.ndarray:
    """Zero-mean uniform values with standard deviation `std`, float32."""
    return ((hash_uniform(key, shape, seed) * 2 - 1) * (np.sqrt(3.0) * std)).astype(np.float32)


def hash_normal(key: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Standard normal float32 values (Box-Muller of two hashed uniforms)."""
    u1 = hash_uniform(key + "/u1", shape, seed)
    u2 = hash_uniform(key + "/u2", shape, seed)
    return (np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2 * np.pi * u2)).astype(np.float32)


def _fan_in(path: tuple[str, ...], shape: tuple[int, ...]) -> int:
    name = path[-2] if path[-1] in ("w", "kernel") else path[-1]
    if name in ("attn_vec_einsum", "attn_vec_einsum_1", "out"):  # (.., N, H, D): contract N*H
        return shape[-3] * shape[-2]
    if name in ("query", "key", "value"):  # SigLIP (.., D, M, H)
        return shape[-3]
    if name == "embedding":  # conv (P, P, 3, D)
        return shape[0] * shape[1] * shape[2]
    return shape[-2]  # (.., in, out) kernels and einsums with D second to last


def _leaf(path: tuple[str, ...], shape: tuple[int, ...], seed: int, sharp: float) -> np.ndarray:
    key, last = "/".join(path), path[-1]
    if last == "input_embedding":  # scaled by sqrt(D) at use -> unit-scale tokens
        return hash_centered(key, shape, 1.0 / np.sqrt(shape[-1]), seed)
    if last == "pos_embedding":
        return hash_centered(key, shape, 0.5, seed)
    if last == "scale":  # Gemma uses 1 + scale, LayerNorm uses scale directly
        is_ln = any(p.startswith("LayerNorm") or p == "encoder_norm" for p in path)
        return (1.0 if is_ln else 0.0) + hash_centered(key, shape, 0.25, seed)
    if last == "bias":
        return hash_centered(key, shape, 0.3 if "Dense_0" in path and "llm" in path else 0.05, seed)
    gain = sharp if any(p in ("q_einsum", "q_einsum_1", "kv_einsum", "kv_einsum_1", "query", "key") for p in path) \
        else (0.5 if "Dense_0" in path and "llm" in path else 1.0)  # adaRMS modulation: moderate
    return hash_centered(key, shape, gain / np.sqrt(_fan_in(path, shape)), seed)


@cache
def _synthetic_flat(variant_name: str, seed: int, sharp: float) -> dict:
    variant = load_variant(variant_name)
    return {p: _leaf(p, s, seed, sharp) for p, s in openpi_tree_shapes(variant).items()}


def synthetic_params(variant: Variant, *, seed: int = 0, sharp: float = 1.8) -> dict:
    """OpenPI-layout nested float32 params for `variant` (restore_params shape, no "params" root).
    Cached per (variant, seed, sharp): treat the arrays as read-only."""
    tree: dict = {}
    for path, value in _synthetic_flat(variant.name, seed, float(sharp)).items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def synthetic_inputs(variant: Variant, prompt_lens: list[int], token_len: int, *, num_cameras: int = 3,
                     masked: list[tuple[int, int]] = (), seed: int = 0) -> ModelInputs:
    """Batch of len(prompt_lens) samples: patterned images in [-1, 1], (sample, camera) pairs in `masked`
    masked (and filled with other values), prompts of the given lengths padded to token_len, state in [-1, 1]."""
    b, s = len(prompt_lens), IMAGE_SIZE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64) / s
    images = np.empty((b, num_cameras, s, s, 3), np.float32)
    for i in range(b):
        for c in range(num_cameras):
            ph = hash_uniform(f"img/{i}/{c}/phase", (3,), seed) * 2 * np.pi
            wave = np.stack([np.sin(6 * xx + 4 * yy * (k + 1) + ph[k]) for k in range(3)], -1)
            noise = hash_uniform(f"img/{i}/{c}/noise", (s, s, 3), seed) * 2 - 1
            images[i, c] = np.clip(0.6 * wave + 0.4 * noise, -1, 1)
    image_mask = np.ones((b, num_cameras), bool)
    for i, c in masked:
        image_mask[i, c] = False
        images[i, c] = hash_uniform(f"img/{i}/{c}/masked", (s, s, 3), seed) * 2 - 1
    tokens = np.zeros((b, token_len), np.int32)
    token_mask = np.zeros((b, token_len), bool)
    for i, n in enumerate(prompt_lens):
        ids = 1 + (hash_uniform(f"tokens/{i}", (n,), seed) * (variant.vocab_size - 1)).astype(np.int32)
        tokens[i, :n], token_mask[i, :n] = ids, True
        tokens[i, 0] = 2  # BOS
    state = (hash_uniform("state", (b, variant.action_dim), seed) * 2 - 1).astype(np.float32)
    return ModelInputs(images, image_mask, state, tokens, token_mask)


def synthetic_noise(batch: int, horizon: int, action_dim: int = 32, *, seed: int = 0) -> np.ndarray:
    return hash_normal("noise", (batch, horizon, action_dim), seed)
