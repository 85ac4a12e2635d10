"""Transpose kernels (in, out) -> (out, in) as the converter does: tile shapes vs numpy's strided copy, same run.

Prints s/GB and the ratio to np.ascontiguousarray for the tile shape the writer uses
(pibridge/convert/safetensors_writer.py TILE_ROWS x TILE_COLS) and a few alternatives, for the kernel shapes of a
full-size Gemma 2B layer (float32 and bfloat16). Each figure is the best of 3.

    .venv/bin/python bench/transpose_tiles.py
"""

from __future__ import annotations

import time

import ml_dtypes
import numpy as np

from pibridge.convert import safetensors_writer as sw

SHAPES = [(2048, 16384), (16384, 2048), (2048, 2048)]  # gating / linear / attention kernels of gemma_2b
ALTERNATIVES = [(128, 128), (16, 2048), (32, 1024)]


def tiled(view: np.ndarray, rows: int, cols: int) -> np.ndarray:
    out, src = np.empty(view.shape, view.dtype), view.T
    for i in range(0, src.shape[0], rows):
        for j in range(0, src.shape[1], cols):
            out[j:j + cols, i:i + rows] = src[i:i + rows, j:j + cols].T
    return out


def best_of(fn, n: int = 3) -> tuple[float, np.ndarray]:
    times, result = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    for dtype in (np.float32, ml_dtypes.bfloat16):
        for shape in SHAPES:
            view = np.random.default_rng(0).random(shape, np.float32).astype(dtype).T  # (out, in) view of (in, out)
            gb = view.nbytes / 1e9
            base, want = best_of(lambda: np.ascontiguousarray(view))
            row = [f"{np.dtype(dtype).name:8s} {str(shape):14s} numpy {base / gb:.2f} s/GB"]
            used, got = best_of(lambda: sw._contiguous(view))
            assert np.array_equal(got, want)
            row.append(f"writer {sw.TILE_ROWS}x{sw.TILE_COLS} x{used / base:.2f}")
            for rows, cols in ALTERNATIVES:
                t, got = best_of(lambda: tiled(view, rows, cols))
                assert np.array_equal(got, want)
                row.append(f"{rows}x{cols} x{t / base:.2f}")
            print("  ".join(row), flush=True)


if __name__ == "__main__":
    main()
