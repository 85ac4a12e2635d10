"""Write ONE .safetensors file tensor by tensor, with bounded memory.

The format (huggingface/safetensors docs "Format"): 8 bytes little-endian u64 N, then N bytes of JSON
`{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}`, then the raw
little-endian, C-ordered tensor bytes; offsets are relative to the end of the header and contiguous from 0.
The header is planned first from (name, dtype, shape), so the bytes can then be streamed in that order.

Matching the library byte for byte (safetensors 0.8.0, checked by tests/test_safetensors_writer.py): the
JSON is compact (no spaces), `__metadata__` first, then tensors in data order, padded with spaces to a
multiple of 8 bytes; `save` / `save_file` order the data by dtype (LIBRARY_DTYPE_ORDER: larger dtypes
first, so every offset stays aligned to its dtype), then by name. The library keeps `__metadata__` entries
in a Rust HashMap, so with two or more entries their order varies from run to run (we keep the given
order). Readers accept any data order (they sort by offsets), so a writer may choose its own, e.g. grouped
by source leaf to read each leaf once; `library_order` reproduces the library's.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import ml_dtypes
import numpy as np
import xxhash

from pibridge.errors import PibridgeError

# numpy dtype -> safetensors dtype code
DTYPE_CODES: dict[np.dtype, str] = {
    np.dtype(np.bool_): "BOOL", np.dtype(np.uint8): "U8", np.dtype(np.int8): "I8",
    np.dtype(np.int16): "I16", np.dtype(np.uint16): "U16", np.dtype(np.float16): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.int32): "I32", np.dtype(np.uint32): "U32",
    np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.int64): "I64",
    np.dtype(np.uint64): "U64", np.dtype(ml_dtypes.float8_e4m3fn): "F8_E4M3",
    np.dtype(ml_dtypes.float8_e5m2): "F8_E5M2",
}
# Data order of safetensors' own serializer (sorts by its Dtype enum, descending), measured on 0.8.0.
LIBRARY_DTYPE_ORDER = ("U64", "I64", "F64", "F32", "U32", "I32", "BF16", "F16", "U16", "I16", "F8_E4M3",
                       "F8_E5M2", "I8", "U8", "BOOL")
CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def code(self) -> str:
        return DTYPE_CODES[np.dtype(self.dtype)]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def spec(name: str, dtype, shape: Sequence[int]) -> TensorSpec:
    dt = np.dtype(dtype)
    if dt not in DTYPE_CODES:
        raise PibridgeError(f"tensor {name}: dtype {dt} has no safetensors code",
                            expected=", ".join(str(d) for d in DTYPE_CODES), fix="cast before writing")
    return TensorSpec(name, dt, tuple(int(d) for d in shape))


def library_order(specs: Iterable[TensorSpec]) -> list[TensorSpec]:
    """The order safetensors' `save` writes: by dtype (LIBRARY_DTYPE_ORDER), then by name."""
    return sorted(specs, key=lambda s: (LIBRARY_DTYPE_ORDER.index(s.code), s.name))


@dataclass(frozen=True)
class Header:
    data: bytes  # the 8-byte length prefix + padded JSON
    offsets: dict[str, tuple[int, int]]  # name -> [begin, end) relative to the end of the header

    @property
    def total_size(self) -> int:
        return len(self.data) + (max((e for _, e in self.offsets.values()), default=0))


def plan_header(specs: Sequence[TensorSpec], metadata: Mapping[str, str] | None = None) -> Header:
    """Header bytes and offsets for `specs` in the given data order."""
    names = [s.name for s in specs]
    if len(set(names)) != len(names) or "__metadata__" in names:
        raise PibridgeError("duplicate or reserved tensor names", expected="unique names, none `__metadata__`",
                            fix="this is a bug in the caller's plan")
    obj: dict[str, object] = {}
    if metadata is not None:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise PibridgeError("safetensors metadata must map str to str", fix="stringify the values")
        obj["__metadata__"] = dict(metadata)
    offsets, pos = {}, 0
    for s in specs:
        offsets[s.name] = (pos, pos + s.nbytes)
        obj[s.name] = {"dtype": s.code, "shape": list(s.shape), "data_offsets": [pos, pos + s.nbytes]}
        pos += s.nbytes
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return Header(len(text).to_bytes(8, "little") + text, offsets)


class SafetensorsWriter:
    """Streams tensors into `path` in the order of `specs`. Use as a context manager; `close` checks that
    every planned tensor was written. Arrays may be any float/int dtype castable to the spec dtype and any
    layout (views, broadcasts): they are cast and made contiguous chunk by chunk (CHUNK_BYTES)."""

    def __init__(self, path: str | Path, specs: Sequence[TensorSpec], metadata: Mapping[str, str] | None = None):
        if sys.byteorder != "little":
            raise PibridgeError("big-endian host", expected="little-endian", fix="run on a little-endian machine")
        self.path, self.specs = Path(path), list(specs)
        self.header = plan_header(self.specs, metadata)
        self._next = 0
        self._f: BinaryIO | None = open(self.path, "wb")
        self._hash = xxhash.xxh3_128()  # of the bytes as written (guard.file_list), free beside the disk write
        self._write(self.header.data)
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start_background_writes(self) -> SafetensorsWriter:
        """Write blocks from a background thread (file writes release the GIL), at most 2 blocks queued, so
        casting / transposing the next block overlaps the disk write of the previous one."""
        self._queue = queue.Queue(maxsize=2)
        self._thread = threading.Thread(target=self._drain, name="safetensors-writer", daemon=True)
        self._thread.start()
        return self

    def _drain(self) -> None:
        while (block := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(block)
                except BaseException as err:  # surfaced in the caller's thread by _put / close
                    self._error = err
            del block  # a block may be a view of the caller's array: drop it before task_done
            self._queue.task_done()

    def wait_written(self) -> None:
        """Block until every queued block is on its way to disk, so no queued block (possibly a view of the caller's
        array) keeps that array alive; the streaming writer calls it before the next source leaf is read."""
        if self._queue is not None:
            self._queue.join()
        if self._error is not None:
            raise self._error

    def _put(self, block: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        if self._queue is None:
            self._write(block)
        else:
            self._queue.put(block)

    def _stop_background(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _write(self, data) -> None:
        self._f.write(data)
        self._hash.update(data)

    @property
    def file_hash(self) -> str:
        """XXH3-128 hex of the file's bytes (complete once closed)."""
        return self._hash.hexdigest()

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._f is not None:
            try:
                self._stop_background()
            finally:
                self._f.close()
                self._f = None

    def write(self, name: str, array: np.ndarray) -> None:
        if self._next >= len(self.specs):
            raise PibridgeError(f"tensor {name} written after the last planned one", fix="bug in the caller")
        s = self.specs[self._next]
        if name != s.name or tuple(array.shape) != s.shape:
            raise PibridgeError(f"tensor {name} {tuple(array.shape)} written out of plan",
                                expected=f"{s.name} {s.shape}", fix="bug in the caller's plan order")
        _check_cast(name, np.dtype(array.dtype), s.dtype)
        for block in _blocks(array, s.dtype):
            self._put(block.view(np.uint8))  # raw bytes; bf16 has no buffer format code
        self._next += 1

    def close(self) -> None:
        if self._f is None:
            return
        missing = [s.name for s in self.specs[self._next:]]
        self._stop_background()
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None
        if missing:
            raise PibridgeError(f"{len(missing)} planned tensors never written (e.g. {missing[0]})",
                                fix="bug in the caller; the file is incomplete")
        if self.path.stat().st_size != self.header.total_size:
            raise PibridgeError(f"{self.path} has {self.path.stat().st_size} bytes",
                                expected=str(self.header.total_size), fix="disk full? re-run the conversion")


def _check_cast(name: str, src: np.dtype, dst: np.dtype) -> None:
    kinds = {src.kind, dst.kind}
    float_like = {"f", "V"}  # ml_dtypes floats report kind "V"
    if src != dst and not (kinds <= float_like or kinds <= {"i", "u"}):
        raise PibridgeError(f"tensor {name}: will not cast {src} to {dst}", fix="cast explicitly before writing")


# Tiled transpose: each tile writes TILE_ROWS elements per output row (a 64-byte cache line in float32) for
# TILE_COLS output rows. Measured here (gemma_2b / SigLIP kernels, quiet machine): float32 0.30-0.52 s/GB, bfloat16
# 0.67-1.03, vs 1.5-4.4 for square 128x128 tiles and 1.5-5.9 for numpy's strided copy (bench/transpose_tiles.py).
TILE_ROWS, TILE_COLS = 16, 4096


def _contiguous(x: np.ndarray) -> np.ndarray:
    """np.ascontiguousarray, with a cache-friendly tiled copy for 2-D transposed views (kernel (in, out) ->
    weight (out, in)), the bulk of a conversion's bytes."""
    if x.ndim != 2 or x.flags.c_contiguous or x.strides[0] != x.itemsize or x.size < TILE_ROWS * TILE_COLS:
        return np.ascontiguousarray(x)  # only views whose first axis is the unit-stride one take the tiled path
    out = np.empty(x.shape, x.dtype)
    src = x.T  # (c, r) with unit-stride rows (a row block of a transposed kernel): read rows, write columns
    for i in range(0, src.shape[0], TILE_ROWS):
        for j in range(0, src.shape[1], TILE_COLS):
            out[j:j + TILE_COLS, i:i + TILE_ROWS] = src[i:i + TILE_ROWS, j:j + TILE_COLS].T
    return out


def _blocks(array: np.ndarray, dtype: np.dtype):
    """C-contiguous blocks of `array` cast to `dtype`, each at most ~CHUNK_BYTES (whole leading-axis rows)."""
    if array.ndim == 0 or array.size == 0:
        yield np.ascontiguousarray(array, dtype=dtype).reshape(-1)
        return
    row_bytes = max(1, array[0].size * max(dtype.itemsize, array.dtype.itemsize))
    step = max(1, CHUNK_BYTES // row_bytes)
    for i in range(0, array.shape[0], step):
        yield _contiguous(array[i:i + step]).astype(dtype, copy=False).reshape(-1)


def write_safetensors(path: str | Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None,
                      *, order: str = "library") -> Header:
    """Write a {name: array} dict. order "library": safetensors' own order (byte-identical to its `save_file`);
    "given": the dict's order."""
    specs = [spec(n, a.dtype, a.shape) for n, a in tensors.items()]
    if order == "library":
        specs = library_order(specs)
    return stream_safetensors(path, specs, (tensors[s.name] for s in specs), metadata)


def stream_safetensors(path: str | Path, specs: Sequence[TensorSpec], arrays: Iterable[np.ndarray],
                       metadata: Mapping[str, str] | None = None) -> Header:
    """Write `specs` (planned up front) from an iterator producing the arrays in the same order; each
    array can be dropped as soon as it is written, so memory stays bounded by the producer."""
    with SafetensorsWriter(path, specs, metadata) as w:
        for s, a in zip(specs, arrays, strict=True):
            w.write(s.name, a)
            del a
    return w.header
