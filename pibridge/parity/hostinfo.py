"""What a golden records about the host that made it, and what a mismatch report prints for both hosts.

Float32 round-off depends on the CPU's vector ISA (the kernels XLA and ATen pick), the thread count and the
library versions, so those are recorded. Reads /proc/cpuinfo and package metadata only (no jax / torch import).
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16")
PACKAGES = ("jax", "jaxlib", "flax", "torch", "transformers", "numpy")


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def host_info(packages=PACKAGES) -> dict:
    model, flags = _cpuinfo()
    versions = {}
    for p in packages:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            continue
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "isa": [f for f in ISA_FLAGS if f in flags], "cores": cores,
            "machine": platform.machine(), "python": platform.python_version(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY", ""),
            "versions": versions}
