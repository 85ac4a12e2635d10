"""Safetensors files that carry one JSON document in their metadata: traces, observations, shared model inputs,
golden inputs. One place for writing them and for the errors a missing, corrupted or foreign file gets."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pibridge.errors import PibridgeError


def save_tensors(path: Path, tensors: Mapping[str, np.ndarray], key: str, doc: dict) -> None:
    """Write `tensors` (made C-contiguous) with `doc` as JSON under metadata `key`."""
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata={key: json.dumps(doc)})
    except SafetensorError as err:  # e.g. permission denied / disk full, reported by the library's own error type
        raise PibridgeError(f"cannot write {path}: {err}", "a writable location with free space",
                            "check the directory's permissions and free space, or write elsewhere") from None


def load_tensors(path: Path, key: str, *, what: str, made_by: str, fix: str) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors, doc) of a file written by save_tensors; PibridgeError naming `what` when it is missing, unreadable,
    or carries no `key` document."""
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise PibridgeError(f"{what} {path} not found", f"a file written by {made_by}", fix)
    try:
        with safe_open(str(path), "np") as f:
            raw = (f.metadata() or {}).get(key)
        tensors = load_file(str(path))
        doc = None if raw is None else json.loads(raw)
    except (SafetensorError, OSError, ValueError) as err:
        raise PibridgeError(f"{what} {path} is unreadable or corrupted ({type(err).__name__}: {err})",
                            f"a safetensors file written by {made_by}", fix) from None
    if not isinstance(doc, dict):
        raise PibridgeError(f"{path} is not a pibridge {what} (no {key!r} metadata)", f"a file written by {made_by}", fix)
    return tensors, doc
