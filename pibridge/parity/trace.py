"""Trace files: the stages one stack recorded, as one safetensors file (fp32 tensors) plus JSON metadata.

Tensors: `<stage>` (float32) and, where a stage has a validity mask, `<stage>@valid` (uint8, broadcastable
to the stage). `__metadata__["pibridge_trace"]` holds a JSON object: format version, stage order, per-stage
wall time, and whatever the capture recorded (stack, precision, package versions, checkpoint and observation
fingerprints, profile, fixes). Numpy only, so `parity compare` runs anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pibridge.errors import PibridgeError
from pibridge.parity.stages import Stage, StageRecorder
from pibridge.parity.tensorfile import load_tensors, save_tensors

TRACE_FORMAT = 1
MASK_SUFFIX = "@valid"
TRACE_KEY = "pibridge_trace"


@dataclass(frozen=True)
class Trace:
    stages: dict[str, Stage]  # execution order
    meta: dict = field(default_factory=dict)

    @property
    def order(self) -> list[str]:
        return list(self.stages)


def write_trace(path: Path, stages: StageRecorder | list[Stage], meta: dict) -> None:
    tensors: dict[str, np.ndarray] = {}
    stages = list(stages)
    for s in stages:
        if s.name in tensors:
            raise ValueError(f"stage {s.name!r} recorded twice")
        tensors[s.name] = np.asarray(s.value, dtype=np.float32)
        if s.valid is not None:
            np.broadcast_shapes(s.valid.shape, s.value.shape)  # raises if not broadcastable
            tensors[s.name + MASK_SUFFIX] = np.asarray(s.valid, dtype=np.uint8)
    header = dict(meta, format=TRACE_FORMAT, order=[s.name for s in stages],
                  wall_s={s.name: s.seconds for s in stages})
    save_tensors(path, tensors, TRACE_KEY, header)


def read_trace(path: Path) -> Trace:
    tensors, header = load_tensors(path, TRACE_KEY, what="trace file", made_by="`pibridge parity capture`",
                                   fix="check the path or capture the trace again")
    if header.get("format") != TRACE_FORMAT:
        raise PibridgeError(f"{path} is not a pibridge trace (format {header.get('format')})",
                            f"trace format {TRACE_FORMAT}", "capture it again with this pibridge version")
    stages = {}
    for name in header["order"]:
        if name not in tensors:
            raise PibridgeError(f"trace {path} lists stage {name!r} but holds no tensor for it", "a complete trace",
                                "capture it again")
        if tensors[name].dtype != np.float32:
            raise PibridgeError(f"trace {path} stage {name!r} has dtype {tensors[name].dtype}",
                                f"float32 stage tensors (trace format {TRACE_FORMAT} stores every stage as float32)",
                                "write traces with `pibridge parity capture` (or trace.write_trace)")
        valid = tensors.get(name + MASK_SUFFIX)
        stages[name] = Stage(name, tensors[name], None if valid is None else valid.astype(bool),
                             float(header.get("wall_s", {}).get(name, 0.0)))
    meta = {k: v for k, v in header.items() if k not in ("order", "wall_s")}
    return Trace(stages, meta)
