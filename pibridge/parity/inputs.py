"""What a parity stack's model consumes, after preprocessing (numpy only; shared by every stack).

Axis legend: B batch, C cameras in OpenPI slot order (OPENPI_SLOTS), L prompt tokens.
Layout follows OpenPI's Observation (openpi src/openpi/models/model.py:82-101 at commit 15a9616):
images float32 in [-1, 1] (model.py:115-118), one bool mask per camera, state normalized and zero-padded
to the action dim (transforms.py:328-337), tokens padded with id 0 and mask False (tokenizer.py:14-48).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pibridge.errors import PibridgeError
from pibridge.vocab import OPENPI_SLOTS

IMAGE_SIZE = 224


def _check(name: str, array: np.ndarray, shape: tuple[int | None, ...], meaning: str) -> None:
    ok = array.ndim == len(shape) and all(s is None or s == a for s, a in zip(shape, array.shape))
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise PibridgeError(f"ModelInputs.{name} has shape {array.shape}", expected=f"{want}: {meaning}",
                            fix="build ModelInputs with pibridge.parity.openpi_preprocess or fix the arrays")


@dataclass(frozen=True, eq=False)
class ModelInputs:
    """One batch of preprocessed model inputs; arrays are coerced to the dtypes below on construction."""

    images: np.ndarray  # (B, C, 224, 224, 3) float32 in [-1, 1]
    image_mask: np.ndarray  # (B, C) bool
    state: np.ndarray  # (B, action_dim) float32, normalized and padded
    tokens: np.ndarray  # (B, L) int32
    token_mask: np.ndarray  # (B, L) bool

    def __post_init__(self) -> None:
        for name, dtype in (("images", np.float32), ("image_mask", bool), ("state", np.float32),
                            ("tokens", np.int32), ("token_mask", bool)):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=dtype))
        b = self.images.shape[0] if self.images.ndim else None
        _check("images", self.images, (b, None, IMAGE_SIZE, IMAGE_SIZE, 3), "batch, camera, height, width, RGB")
        _check("image_mask", self.image_mask, (b, self.images.shape[1]), "batch, camera")
        _check("state", self.state, (b, None), "batch, state dim")
        _check("tokens", self.tokens, (b, None), "batch, prompt tokens")
        _check("token_mask", self.token_mask, self.tokens.shape, "same shape as tokens")

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    @property
    def num_cameras(self) -> int:
        return self.images.shape[1]

    @property
    def token_len(self) -> int:
        return self.tokens.shape[1]

    def take(self, rows) -> ModelInputs:
        """The samples at `rows` (an index list or slice), as a new batch."""
        return ModelInputs(self.images[rows], self.image_mask[rows], self.state[rows], self.tokens[rows],
                           self.token_mask[rows])
