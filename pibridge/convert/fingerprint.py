"""Fingerprint of a parameter tree, independent of the order leaves are visited in.

Per leaf: XXH3-128 of its raw little-endian bytes in C order (fed in one piece or in C-order blocks; a
stable, specified hash at ~30 GB/s, so fingerprinting a 13 GB checkpoint costs under a second where sha256 cost
~10 s of a conversion). The fingerprint is sha256 over the sorted lines
"<a/b/c path>|<dtype name>|<d0,d1,...>|<leaf xxh3-128 hex>\\n"
(path without the "params" root and without a trailing "value", so released and training layouts of the
same weights agree). Written as "sha256:<hex>". Order independence lets the converter fingerprint its
source while it streams leaves in plan order.
"""

from __future__ import annotations

import hashlib

import numpy as np
import xxhash

Path = tuple[str, ...]


class Fingerprint:
    def __init__(self) -> None:
        self._lines: dict[str, str] = {}
        self._current: tuple[str, xxhash.xxh3_128] | None = None

    def begin_leaf(self, path: Path, dtype: str, shape: tuple[int, ...]) -> None:
        self._end_leaf()
        self._current = (f"{'/'.join(path)}|{dtype}|{','.join(str(d) for d in shape)}", xxhash.xxh3_128())

    def update(self, block: np.ndarray) -> None:
        """Bytes of the next C-order piece of the current leaf."""
        block = np.ascontiguousarray(block)
        if block.dtype.byteorder == ">":
            block = block.astype(block.dtype.newbyteorder("<"))
        self._current[1].update(block.reshape(-1).view(np.uint8).data)  # (...) -> (nbytes,)

    def add(self, path: Path, array: np.ndarray) -> None:
        self.begin_leaf(path, array.dtype.name, tuple(array.shape))
        self.update(array)
        self._end_leaf()

    def _end_leaf(self) -> None:
        if self._current is not None:
            head, h = self._current
            self._lines[head.split("|", 1)[0]] = f"{head}|{h.hexdigest()}\n"
            self._current = None

    def hexdigest(self) -> str:
        self._end_leaf()
        total = hashlib.sha256()
        for path in sorted(self._lines):
            total.update(self._lines[path].encode())
        return "sha256:" + total.hexdigest()
