"""The one streaming writer: a conversion plan -> ONE model.safetensors, shared by `pibridge convert` and the
memory tests (tests/test_safetensors_writer.py), so the path the tests measure is the path production runs.

`write_weights` streams `plan.iter_tensors` into a SafetensorsWriter (header planned first, blocks written from a
background thread while the next block is cast / transposed). `LeafReader` is convert's `read`: tensorstore decodes
the next leaf while the current one is converted, within a memory budget, and a callback (fingerprint, NaN check)
runs on each leaf in a second thread. Peak memory: the current leaf, at most one prefetched leaf, two blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path as FsPath

import numpy as np

from pibridge.convert.detect import Path
from pibridge.convert.plan import LEROBOT_METADATA, NP_DTYPES, ConversionPlan, PlannedTensor, iter_tensors
from pibridge.convert.safetensors_writer import Header, SafetensorsWriter, spec

Adjust = Callable[[PlannedTensor, np.ndarray], np.ndarray]


def write_weights(plan: ConversionPlan, read: Callable[[Path], np.ndarray], path: str | FsPath, *,
                  adjust: Adjust | None = None, on_written: Callable[[int], None] | None = None) -> tuple[Header, str]:
    """Stream the planned tensors into `path`; `adjust(t, x)` may replace a tensor before it is written (convert's
    bf16-parameter fold), `on_written(nbytes)` is called after each (progress). Returns the header and the file's
    hash (guard.HASH). No reference to a source leaf survives into the next `read` (queued blocks are written first)."""
    specs = [spec(t.key, NP_DTYPES[t.dtype], t.shape) for t in plan.tensors]
    with SafetensorsWriter(path, specs, LEROBOT_METADATA) as writer:
        writer.start_background_writes()
        i = 0  # no zip / enumerate over the stream: their reused result tuple would keep the last tensor alive
        for t, x in iter_tensors(plan, read):
            if adjust is not None:
                x = adjust(t, x)
            writer.write(t.key, x)
            del x
            i += 1
            if i == len(specs) or plan.tensors[i].source != t.source:
                writer.wait_written()  # queued blocks may view this leaf: written before the next leaf is read
            if on_written is not None:
                on_written(specs[i - 1].nbytes)
    return writer.header, writer.file_hash


class LeafReader:
    """`read(leaf_path)` for write_weights over a checkpoint (reader.OpenPICheckpoint or anything with `read`, and
    optionally `read_async` returning a Future). The next leaf in plan order is decoded ahead only while the current
    plus twice the next fits 2.2 x the largest leaf - 0.2 GB (~0.7 GB of the budget stays for blocks and the
    interpreter). `on_leaf(path, array)` runs in a background thread; its error surfaces at the next read or at
    `finish()`. Use as a context manager."""

    def __init__(self, ckpt, plan: ConversionPlan, on_leaf: Callable[[Path, np.ndarray], None] | None = None):
        self._ckpt, self._on_leaf = ckpt, on_leaf
        self._sizes = {p: i.nbytes for p, i in ckpt.leaves.items()}
        order = list(dict.fromkeys(t.source for t in plan.tensors if t.source is not None))
        self._following = dict(zip(order, order[1:] + [None]))
        self._limit = 2.2 * max(self._sizes.values()) - 0.2e9
        self._prefetched: dict[Path, Future] = {}
        self._checks = ThreadPoolExecutor(1, thread_name_prefix="leaf-check")
        self._last: list[Future] = []

    def _start(self, leaf_path: Path) -> Future:
        reader = getattr(self._ckpt, "read_async", None)
        if reader is not None:
            return reader(leaf_path)
        done: Future = Future()
        done.set_result(self._ckpt.read(leaf_path))
        return done

    def finish(self) -> None:
        """Wait for the last leaf's callback (raises its error)."""
        for c in self._last:  # the previous leaf checked (and released) before the next is held
            c.result()
        self._last.clear()

    def read(self, leaf_path: Path) -> np.ndarray:
        self.finish()
        arr = (self._prefetched.pop(leaf_path, None) or self._start(leaf_path)).result()
        nxt = self._following.get(leaf_path)  # LoRA factors are read with their base leaf, outside the plan order
        if nxt is not None and arr.nbytes + 2 * self._sizes[nxt] <= self._limit:
            self._prefetched[nxt] = self._start(nxt)
        if self._on_leaf is not None:
            self._last.append(self._checks.submit(self._on_leaf, leaf_path, arr))
        return arr

    def __enter__(self) -> LeafReader:
        return self

    def __exit__(self, *exc) -> None:
        self._checks.shutdown(wait=True, cancel_futures=True)
