"""OpenPI norm stats -> LeRobot's normalizer / unnormalizer state files, with opt-in epsilon folds.

OpenPI (src/openpi/transforms.py:137-145, :170-181; stats parsed from JSON as float64, computed in float64):
    z-score   (x - mean) / (std + 1e-6)                  inverse  x * (std + 1e-6) + mean
    quantile  (x - q01) / (q99 - q01 + 1e-6) * 2 - 1     inverse  (x + 1) / 2 * (q99 - q01 + 1e-6) + q01
LeRobot (0.6.1 processor/normalize_processor.py:357-362, :394-401; eps 1e-8 at :97; stats stored float32
and evaluated in the input's dtype):
    MEAN_STD  (x - mean) / (std + eps)                   inverse  x * std + mean
    QUANTILES 2 (x - q01) / (q99 - q01) - 1              inverse  (x + 1) * (q99 - q01) / 2 + q01
The pre- and post-processor keep separate stat files, so a fold (DESIGN step 5) can make LeRobot's
denominators equal OpenPI's: the preprocessor file stores std' with fl(std' + eps) = fl(std + 1e-6) and
q99' with fl(q99' - q01) = fl(q99 - q01 + 1e-6); the postprocessor file stores fl(std + 1e-6) and the same
q99'. Scaling by 2 is exact, so equal denominators give bit-identical outputs when both formulas run in the
same precision. Folded values are solved (searching neighbouring floats), not just `std + 1e-6 - 1e-8`,
whose double rounding is an ulp off for some float32 inputs. std' always has an exact solution; q99' does
not when |q01| is large against q99 - q01 (q99' is then a coarser float than the denominator): the nearest
reachable denominator is used and the count is reported (`inexact`).
Reading OpenPI's norm_stats.json itself is pibridge.convert.normstats (`load`, `NormStats`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pibridge.convert.normstats import NormStats
from pibridge.errors import PibridgeError

OPENPI_EPS = 1e-6  # openpi transforms.py:139, :145, :173, :181
LEROBOT_EPS = 1e-8  # lerobot processor/normalize_processor.py:97
FOLD_ID = "normalizer-eps-v1"
FEATURES = {"state": "observation.state", "actions": "action"}  # OpenPI key -> LeRobot feature
STAT_NAMES = ("mean", "std", "q01", "q99")
_SEARCH = 8  # neighbouring floats tried on each side when solving a fold


# --- folds ----------------------------------------------------------------------------------------------

def _neighbours(x: np.ndarray) -> np.ndarray:
    """(2*_SEARCH+1, n) candidates around x, ordered by distance in ulps (0, +1, -1, +2, -2, ...)."""
    rows, up, down = [x], x, x
    for _ in range(_SEARCH):
        up, down = np.nextafter(up, np.inf), np.nextafter(down, -np.inf)
        rows += [up, down]
    return np.stack(rows)


def _solve(start: np.ndarray, f: Callable[[np.ndarray], np.ndarray], target: np.ndarray) -> tuple[np.ndarray, int]:
    """The candidate c nearest `start` with f(c) == target elementwise (else the one whose f(c) is
    nearest); returns (values, number of elements without an exact solution)."""
    cands = _neighbours(start)
    vals = f(cands)
    exact = vals == target
    err = np.where(exact, -1.0, np.abs(vals.astype(np.float64) - target))
    pick = np.argmin(err, axis=0)  # first exact one in distance order, else the nearest value
    return cands[pick, np.arange(start.shape[0])], int((~exact.any(axis=0)).sum())


def fold_std_pre(std: np.ndarray, dtype=np.float32) -> tuple[np.ndarray, int]:
    """std' in `dtype` with dtype(std' + LEROBOT_EPS) == dtype(std + OPENPI_EPS) (OpenPI's float64 value
    rounded once)."""
    dt = np.dtype(dtype)
    target = (np.asarray(std, np.float64) + OPENPI_EPS).astype(dt)
    eps = dt.type(LEROBOT_EPS)  # torch evaluates `std + self.eps` in the tensor's dtype
    return _solve((target - eps).astype(dt), lambda c: (c + eps).astype(dt), target)


def fold_std_post(std: np.ndarray, dtype=np.float32) -> np.ndarray:
    """std'' = dtype(std + OPENPI_EPS): LeRobot's inverse multiplies by std with no eps."""
    return (np.asarray(std, np.float64) + OPENPI_EPS).astype(np.dtype(dtype))


def fold_q99(q01: np.ndarray, q99: np.ndarray, dtype=np.float32) -> tuple[np.ndarray, int]:
    """q99' in `dtype` with dtype(q99' - dtype(q01)) == dtype(q99 - q01 + OPENPI_EPS), or the nearest."""
    dt = np.dtype(dtype)
    q01_64 = np.asarray(q01, np.float64)
    q01_d = q01_64.astype(dt)
    target = ((np.asarray(q99, np.float64) - q01_64) + OPENPI_EPS).astype(dt)
    return _solve((q01_d + target).astype(dt), lambda c: (c - q01_d).astype(dt), target)


# --- LeRobot normalizer state ---------------------------------------------------------------------------

@dataclass(frozen=True)
class NormalizerStates:
    pre: dict[str, np.ndarray]  # policy_preprocessor normalizer file: "<feature>.<stat>" -> float32
    post: dict[str, np.ndarray]  # policy_postprocessor unnormalizer file
    folds: tuple[str, ...]  # applied folds (record in provenance); () when not folded
    inexact: int  # folded q99 elements whose denominator could not be matched exactly


def _sliced(key: str, stats: NormStats, dim: int) -> dict[str, np.ndarray]:
    n = stats.mean.shape[-1]
    if n < dim:
        raise PibridgeError(f"norm stats `{key}` have width {n}", expected=f"at least {dim} (the native dim)",
                            fix="check --state-dim / --action-dim against the checkpoint's norm_stats.json")
    # OpenPI slices stats to the data width (transforms.py:138, :143); LeRobot does not, so slice here
    present = {s: getattr(stats, s) for s in STAT_NAMES if getattr(stats, s) is not None}
    return {s: np.asarray(v, np.float64)[..., :dim] for s, v in present.items()}


def build_normalizer_states(stats: Mapping[str, NormStats], *, state_dim: int, action_dim: int,
                            fold_eps: bool = False) -> NormalizerStates:
    """Flat LeRobot stat dicts (`observation.state.mean`, `action.q99`, ...) for both pipeline files.

    LeRobot stores every stat given, for every feature, in both files (lerobot.md §1.3).
    fold_eps: apply the epsilon folds of the module doc (opt-in; record `folds` in provenance)."""
    missing = [k for k in FEATURES if k not in stats]
    if missing:
        raise PibridgeError(f"norm stats lack {missing}", expected="`state` and `actions` entries",
                            fix="use the norm_stats.json of the training run's asset id")
    pre, post, inexact = {}, {}, 0
    for key, feat in FEATURES.items():
        raw = _sliced(key, stats[key], state_dim if key == "state" else action_dim)
        a = {n: v.astype(np.float32) for n, v in raw.items()}
        b = dict(a)
        if fold_eps:
            a["std"], _ = fold_std_pre(raw["std"])  # always exact (tests/test_normstats.py)
            b["std"] = fold_std_post(raw["std"])
            if "q01" in raw and "q99" in raw:
                a["q99"], bad = fold_q99(raw["q01"], raw["q99"])
                b["q99"] = a["q99"]
                inexact += bad
        pre.update({f"{feat}.{n}": v for n, v in a.items()})
        post.update({f"{feat}.{n}": v for n, v in b.items()})
    return NormalizerStates(pre, post, (FOLD_ID,) if fold_eps else (), inexact)


def normalizer_filenames(normalizer_step: int, unnormalizer_step: int) -> tuple[str, str]:
    """State file names LeRobot's pipelines look for (processor/pipeline.py `_get_state_filename`)."""
    return (f"policy_preprocessor_step_{normalizer_step}_normalizer_processor.safetensors",
            f"policy_postprocessor_step_{unnormalizer_step}_unnormalizer_processor.safetensors")


def write_normalizer_files(out_dir: str | Path, states: NormalizerStates, normalizer_step: int,
                           unnormalizer_step: int) -> tuple[Path, Path]:
    """Write both state files as LeRobot's `save_file(state_dict, path)` does (no metadata)."""
    from pibridge.convert.safetensors_writer import write_safetensors

    names = normalizer_filenames(normalizer_step, unnormalizer_step)
    paths = (Path(out_dir) / names[0], Path(out_dir) / names[1])
    write_safetensors(paths[0], states.pre, None)
    write_safetensors(paths[1], states.post, None)
    return paths
