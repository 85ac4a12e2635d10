"""Fingerprint of a parameter tree: sha256 over the leaves in canonical (sorted path) order.

For each leaf: the line "<a/b/c path>|<dtype name>|<d0,d1,...>\\n" (path without the "params" root and
without a trailing "value", so released and training layouts of the same weights agree), then the
leaf's raw little-endian bytes in C order. Written as "sha256:<hex>".
"""

from __future__ import annotations

import hashlib

import numpy as np

Path = tuple[str, ...]


class Fingerprint:
    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def begin_leaf(self, path: Path, dtype: str, shape: tuple[int, ...]) -> None:
        self._h.update(f"{'/'.join(path)}|{dtype}|{','.join(str(d) for d in shape)}\n".encode())

    def update(self, block: np.ndarray) -> None:
        """Bytes of the next C-order piece of the current leaf."""
        block = np.ascontiguousarray(block)
        if block.dtype.byteorder == ">":
            block = block.astype(block.dtype.newbyteorder("<"))
        self._h.update(block.reshape(-1).view(np.uint8).data)  # (...) -> (nbytes,)

    def add(self, path: Path, array: np.ndarray) -> None:
        self.begin_leaf(path, array.dtype.name, tuple(array.shape))
        self.update(array)

    def hexdigest(self) -> str:
        return "sha256:" + self._h.hexdigest()
