"""OpenPI norm stats: `assets/<asset_id>/norm_stats.json`, read, written and synthesised.

Format (openpi src/openpi/shared/normalize.py:9-15 NormStats, :120-131 serialize_json = pydantic
`model_dump_json(indent=2)` of {"norm_stats": {key: {mean, std, q01, q99}}}); keys are the normalised data
keys, in practice "state" and "actions" (scripts/compute_norm_stats.py), vectors at the dataset's native
dim (not padded to 32). q01 / q99 may be null.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pibridge.errors import PibridgeError

FIELDS = ("mean", "std", "q01", "q99")


@dataclass(frozen=True)
class NormStats:
    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray | None = None
    q99: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.mean.shape[-1])


def serialize(stats: Mapping[str, NormStats]) -> str:
    """The text OpenPI's normalize.serialize_json writes (2-space indent, one number per line)."""
    doc = {"norm_stats": {k: {f: _floats(getattr(s, f)) for f in FIELDS} for k, s in stats.items()}}
    return json.dumps(doc, indent=2)


def _floats(a: np.ndarray | None) -> list[float] | None:
    return None if a is None else [float(x) for x in np.asarray(a, np.float64).reshape(-1)]


def load(path: Path) -> dict[str, NormStats]:
    """Parse a norm_stats.json; PibridgeError naming the file when it is not OpenPI's format."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PibridgeError(f"cannot read norm stats {path}: {err}", "a JSON file written by OpenPI's normalize.save",
                            "re-copy the assets/ directory of the checkpoint") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("norm_stats"), dict):
        raise PibridgeError(f"{path} has no top-level 'norm_stats' object",
                            '{"norm_stats": {"state": {"mean": [...], "std": [...], ...}, ...}}',
                            "point at the norm_stats.json OpenPI wrote (assets/<asset_id>/norm_stats.json)")
    return {key: _entry(path, key, raw) for key, raw in doc["norm_stats"].items()}


def _entry(path: Path, key: str, raw: object) -> NormStats:
    if not isinstance(raw, dict) or "mean" not in raw or "std" not in raw:
        raise PibridgeError(f"{path}: norm_stats[{key!r}] lacks mean / std", "mean and std lists (q01 / q99 optional)",
                            "regenerate the norm stats with OpenPI's scripts/compute_norm_stats.py")
    arrays = {}
    for f in FIELDS:
        value = raw.get(f)
        try:
            arrays[f] = None if value is None else np.asarray(value, np.float64)
        except (TypeError, ValueError):
            raise PibridgeError(f"{path}: norm_stats[{key!r}][{f!r}] is not a list of numbers", "a list of numbers",
                                "regenerate the norm stats") from None
    dims = {f: a.shape for f, a in arrays.items() if a is not None}
    if len(set(dims.values())) != 1 or len(arrays["mean"].shape) != 1:
        raise PibridgeError(f"{path}: norm_stats[{key!r}] vectors have different shapes {dims}",
                            "mean, std, q01, q99 of one length", "regenerate the norm stats")
    return NormStats(**arrays)


def synthesize(seed: int, dims: Mapping[str, int]) -> dict[str, NormStats]:
    """Deterministic, realistic stats: q01 < mean < q99, std > 0, 4 decimals (no exponent notation)."""
    from pibridge.convert.synth_weights import hashed_normal, stream_key

    out = {}
    for key, dim in dims.items():
        z = hashed_normal(stream_key(seed, f"norm_stats/{key}"), np.arange(4 * dim, dtype=np.uint64))
        z = z.astype(np.float64).reshape(4, dim)  # (4*dim,) -> (4, dim)
        mean = 0.5 * z[0]
        std = 0.05 + 0.3 * np.abs(z[1])
        q01 = mean - 2.0 * std - 0.1 * np.abs(z[2]) - 0.01
        q99 = mean + 2.0 * std + 0.1 * np.abs(z[3]) + 0.01
        out[key] = NormStats(*(np.round(a, 4) + 0.0 for a in (mean, std, q01, q99)))  # + 0.0: no "-0.0"
    return out
