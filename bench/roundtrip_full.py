"""Full-size round trip: OpenPI checkpoint -> `pibridge convert` OUT -> OpenPI tree rebuilt from OUT through the
inverse key table, leaf by leaf (memory: about two leaves), compared bit for bit with the source.
float32 output without folds must be bit-exact; a bf16 checkpoint converted to LeRobot's bf16 layout too (the
fp32-kept tensors hold bf16 values exactly).

    .venv/bin/python bench/roundtrip_full.py CKPT OUT
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from pibridge.convert.openpi_torch import OpenPITorchCheckpoint
from pibridge.convert.reader import open_checkpoint


def main(ckpt: str, out: str) -> int:
    src, back = open_checkpoint(ckpt), OpenPITorchCheckpoint.open(Path(out))
    t0, bad = time.perf_counter(), []
    assert set(back.leaves) == set(src.leaves), "leaf sets differ"
    for path, info in src.leaves.items():
        a = src.read(path)
        b = back.read(path).astype(a.dtype)
        if a.shape != b.shape or not np.array_equal(a.view(np.uint8), b.view(np.uint8)):
            bad.append("/".join(path))
        del a, b
    print(f"{len(src.leaves)} leaves, {sum(i.nbytes for i in src.leaves.values()) / 1e9:.2f} GB compared in "
          f"{time.perf_counter() - t0:.0f} s: {'bit-exact' if not bad else f'{len(bad)} differ: {bad[:5]}'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
