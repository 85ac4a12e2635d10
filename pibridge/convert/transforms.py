"""Named tensor transforms: one OpenPI (JAX) leaf slice <-> one LeRobot (PyTorch) tensor.

Axis legend: I input features, O output features, D width, N heads, K kv heads, H head_dim,
T image tokens, P patch size, C image channels.
Conventions: flax kernels (nn.Dense, nnx.Linear, DenseGeneral, einsum weights) are stored input-first,
(I, O); torch `nn.Linear.weight` is (O, I). flax conv kernels are HWIO, torch Conv2d weights OIHW.
Head-major flattening: torch projections view their output as (..., heads, head_dim)
(transformers models/gemma/modeling_gemma.py and siglip/modeling_siglip.py, `.view(hidden_shape)`), so a
flattened row index is n*H + h.

Every forward is a pure reordering (transpose / reshape): bit-exact, and invertible given the source
shape. A transform sees one per-layer slice (the leading L / V axis already removed by unstacking) after
the row's part selection (kv: 0 = k, 1 = v; gating: 0 = gate, 1 = up).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Transform:
    name: str
    forward: Callable[[np.ndarray], np.ndarray]
    inverse: Callable[[np.ndarray, Shape], np.ndarray]  # (destination, source shape) -> source
    shape: Callable[[Shape], Shape]  # source shape -> destination shape, without data
    doc: str


def _copy_shape(s: Shape) -> Shape:
    return s


def _transpose_fwd(x: np.ndarray) -> np.ndarray:
    return x.T  # (I, O) -> (O, I)


def _transpose_inv(y: np.ndarray, s: Shape) -> np.ndarray:
    return y.T  # (O, I) -> (I, O)


def _conv_fwd(x: np.ndarray) -> np.ndarray:
    return x.transpose(3, 2, 0, 1)  # (P, P, C, D) HWIO -> (D, C, P, P) OIHW


def _conv_inv(y: np.ndarray, s: Shape) -> np.ndarray:
    return y.transpose(2, 3, 1, 0)  # (D, C, P, P) OIHW -> (P, P, C, D) HWIO


def _drop_lead_fwd(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[1:])  # (1, T, D) -> (T, D)


def _drop_lead_inv(y: np.ndarray, s: Shape) -> np.ndarray:
    return y.reshape(s)  # (T, D) -> (1, T, D)


def _ndh_fwd(x: np.ndarray) -> np.ndarray:
    n, d, h = x.shape
    return x.transpose(0, 2, 1).reshape(n * h, d)  # (N, D, H) -> (N, H, D) -> (N*H, D)


def _ndh_inv(y: np.ndarray, s: Shape) -> np.ndarray:
    n, d, h = s
    return y.reshape(n, h, d).transpose(0, 2, 1)  # (N*H, D) -> (N, H, D) -> (N, D, H)


def _dnh_fwd(x: np.ndarray) -> np.ndarray:
    d, n, h = x.shape
    return x.reshape(d, n * h).T  # (D, N, H) -> (D, N*H) -> (N*H, D)


def _dnh_inv(y: np.ndarray, s: Shape) -> np.ndarray:
    return y.T.reshape(s)  # (N*H, D) -> (D, N*H) -> (D, N, H)


def _nh_fwd(x: np.ndarray) -> np.ndarray:
    n, h = x.shape
    return x.reshape(n * h)  # (N, H) -> (N*H,)


def _nh_inv(y: np.ndarray, s: Shape) -> np.ndarray:
    return y.reshape(s)  # (N*H,) -> (N, H)


def _nhd_fwd(x: np.ndarray) -> np.ndarray:
    n, h, d = x.shape
    return x.reshape(n * h, d).T  # (N, H, D) -> (N*H, D) -> (D, N*H)


def _nhd_inv(y: np.ndarray, s: Shape) -> np.ndarray:
    return y.T.reshape(s)  # (D, N*H) -> (N*H, D) -> (N, H, D)


TRANSFORMS: dict[str, Transform] = {
    t.name: t
    for t in (
        Transform("copy", lambda x: x, lambda y, s: y, _copy_shape, "as is (biases, norm scales, embeddings)"),
        Transform("transpose", _transpose_fwd, _transpose_inv, lambda s: (s[1], s[0]),
                  "(I, O) kernel -> (O, I) nn.Linear weight"),
        Transform("conv_hwio_to_oihw", _conv_fwd, _conv_inv, lambda s: (s[3], s[2], s[0], s[1]),
                  "(P, P, C, D) HWIO conv kernel -> (D, C, P, P) OIHW Conv2d weight"),
        Transform("drop_lead_axis", _drop_lead_fwd, _drop_lead_inv, lambda s: s[1:],
                  "(1, T, D) learned position embedding -> (T, D) nn.Embedding weight"),
        Transform("ndh_to_rows", _ndh_fwd, _ndh_inv, lambda s: (s[0] * s[2], s[1]),
                  "(N, D, H) Gemma q / k / v einsum -> (N*H, D) weight, row n*H+h"),
        Transform("dnh_to_rows", _dnh_fwd, _dnh_inv, lambda s: (s[1] * s[2], s[0]),
                  "(D, N, H) SigLIP DenseGeneral q / k / v kernel -> (N*H, D) weight"),
        Transform("nh_flatten", _nh_fwd, _nh_inv, lambda s: (s[0] * s[1],),
                  "(N, H) SigLIP q / k / v bias -> (N*H,)"),
        Transform("nhd_to_cols", _nhd_fwd, _nhd_inv, lambda s: (s[2], s[0] * s[1]),
                  "(N, H, D) attention output kernel -> (D, N*H) weight, column n*H+h"),
    )
}

ZEROS = "zeros"  # synthesized destination with no OpenPI source (LeRobot's unused expert lm_head)


def get_transform(name: str) -> Transform:
    return TRANSFORMS[name]


def zeros_view(shape: Shape, dtype: np.dtype | type) -> np.ndarray:
    """A read-only all-zero array of `shape` that allocates one element (zero strides)."""
    return np.broadcast_to(np.zeros((), dtype=dtype), shape)
