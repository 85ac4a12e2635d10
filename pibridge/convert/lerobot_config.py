"""LeRobot `config.json` for a converted pi0 / pi05 policy, per target LeRobot version.

LeRobot parses config.json with draccus against PI05Config / PI0Config and rejects unknown fields
(lerobot.md §1.2), and the field set changes between releases (`pretrained_revision` is new in 0.6.0), so
the output is built from the target version's field list (configs/lerobot/<version>.json, extracted from
the wheel): every field in dataclass order, defaults for what pibridge does not set, `"type"` first, as
LeRobot's own `_save_pretrained` writes it (0.6.1 configs/policies.py:163-169).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from pibridge.configs import CONFIG_DIR
from pibridge.errors import PibridgeError
from pibridge.vocab import MODEL_ACTION_DIM

SCHEMA_DIR = CONFIG_DIR / "lerobot"
LEROBOT_GEMMA_VARIANTS = ("gemma_300m", "gemma_2b")  # PI05Config.__post_init__ accepts only these
RUNTIME_DTYPES = ("float32", "bfloat16")
# OpenPI: pi0 z-score, pi05 (and FAST) quantiles (openpi training/config.py:187 use_quantile_norm =
# model_type != PI0); LeRobot's defaults are the same (configuration_pi0{5,}.py normalization_mapping).
DEFAULT_NORMALIZATION = {
    "pi05": {"VISUAL": "IDENTITY", "STATE": "QUANTILES", "ACTION": "QUANTILES"},
    "pi0": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
}
OBS_IMAGES, OBS_STATE, ACTION = "observation.images", "observation.state", "action"


@dataclass(frozen=True)
class LeRobotTarget:
    lerobot_version: str
    transformers_requirement: str
    transformers_default: str  # the version whose key layout a conversion targets unless overridden
    normalizer_step: int  # index of the normalizer step in the preprocessor pipeline
    unnormalizer_step: int


@cache
def _versions() -> dict[str, dict]:
    return json.loads((SCHEMA_DIR / "versions.json").read_text())["versions"]


def lerobot_versions() -> tuple[str, ...]:
    return tuple(_versions())


def version_data(version: str) -> dict:
    if version not in _versions():
        raise PibridgeError(f"LeRobot version {version!r} is not known to pibridge",
                            expected=f"one of {', '.join(lerobot_versions())}",
                            fix="pass --lerobot-version with one of those")
    return _versions()[version]


def lerobot_target(version: str, model: str) -> LeRobotTarget:
    v = version_data(version)
    return LeRobotTarget(version, v["transformers_requirement"], v["transformers_default"],
                         v["normalizer_step"][model], v["unnormalizer_step"][model])


@cache
def config_schema(version: str, model: str) -> dict[str, Any]:
    """{field: default as JSON} of the version's PI05Config / PI0Config, in dataclass order."""
    version_data(version)
    if model not in DEFAULT_NORMALIZATION:
        raise PibridgeError(f"model {model!r}", expected="pi0 or pi05")
    return json.loads((SCHEMA_DIR / f"{version}.json").read_text())["policies"][model]["fields"]


def _feature(kind: str, shape: Sequence[int]) -> dict[str, Any]:
    return {"type": kind, "shape": [int(d) for d in shape]}


def input_features(camera_names: Sequence[str], state_dim: int, empty_cameras: int,
                   image_shape: Sequence[int]) -> dict[str, Any]:
    """Cameras in OpenPI slot order (the order of VISUAL entries is the order of images in LeRobot's
    prefix), the state, then the `empty_camera_{i}` slots LeRobot's validate_features adds itself
    (configuration_pi05.py validate_features; writing them keeps the file identical to a LeRobot save)."""
    names = list(camera_names)
    bad = [n for n in names if not n or "." in n or n.startswith("empty_camera_")]
    if len(set(names)) != len(names) or bad:
        raise PibridgeError(f"camera names {names}", expected="unique names without dots, not empty_camera_<i>",
                            fix="fix --camera-map")
    feats = {f"{OBS_IMAGES}.{n}": _feature("VISUAL", image_shape) for n in names}
    feats[OBS_STATE] = _feature("STATE", (state_dim,))
    for i in range(empty_cameras):
        feats[f"{OBS_IMAGES}.empty_camera_{i}"] = _feature("VISUAL", image_shape)
    return feats


def build_config_json(lerobot_version: str, *, model: str, horizon: int, max_token_len: int, state_dim: int,
                      action_dim: int, camera_names: Sequence[str], empty_cameras: int = 0,
                      runtime_dtype: str = "float32", n_action_steps: int | None = None,
                      paligemma_variant: str = "gemma_2b", action_expert_variant: str = "gemma_300m",
                      model_action_dim: int = MODEL_ACTION_DIM, normalization_mapping: Mapping[str, str] | None = None,
                      image_shape: Sequence[int] = (3, 224, 224), extra: Mapping[str, Any] | None = None,
                      allow_unknown_variants: bool = False) -> dict[str, Any]:
    """config.json content for `PI05Policy` / `PI0Policy.from_pretrained` of `lerobot_version`.

    horizon: OpenPI action_horizon -> chunk_size; n_action_steps defaults to it. state_dim / action_dim:
    the robot's native dims (features; LeRobot truncates the 32 model outputs to action_dim).
    model_action_dim: the padded width of the model (OpenPI action_dim) -> max_state_dim / max_action_dim.
    extra: any other field of the version's schema (e.g. use_relative_actions); unknown names are refused.
    """
    schema = config_schema(lerobot_version, model)
    _check_args(horizon, n_action_steps, runtime_dtype, state_dim, action_dim, model_action_dim,
                (paligemma_variant, action_expert_variant), allow_unknown_variants)
    values: dict[str, Any] = {
        "input_features": input_features(camera_names, state_dim, empty_cameras, image_shape),
        "output_features": {ACTION: _feature("ACTION", (action_dim,))},
        "paligemma_variant": paligemma_variant, "action_expert_variant": action_expert_variant,
        "dtype": runtime_dtype, "chunk_size": horizon, "n_action_steps": n_action_steps or horizon,
        "max_state_dim": model_action_dim, "max_action_dim": model_action_dim,
        "empty_cameras": empty_cameras, "tokenizer_max_length": max_token_len,
        "normalization_mapping": dict(normalization_mapping or DEFAULT_NORMALIZATION[model]),
    }
    values.update(extra or {})
    unknown = sorted(set(values) - set(schema))
    if unknown:
        raise PibridgeError(f"fields {unknown} are not valid for LeRobot {lerobot_version} {model} configs",
                            expected=f"fields of its {model.upper()}Config",
                            fix="drop them or pick another --lerobot-version")
    return {"type": model} | {name: values.get(name, default) for name, default in schema.items()}


def _check_args(horizon, n_action_steps, runtime_dtype, state_dim, action_dim, model_action_dim, variants,
                allow_unknown) -> None:
    if runtime_dtype not in RUNTIME_DTYPES:
        raise PibridgeError(f"runtime dtype {runtime_dtype!r}", expected=" or ".join(RUNTIME_DTYPES),
                            fix="pass --runtime-dtype float32 or bfloat16")
    if horizon < 1 or (n_action_steps is not None and not 1 <= n_action_steps <= horizon):
        raise PibridgeError(f"horizon {horizon}, n_action_steps {n_action_steps}",
                            expected="1 <= n_action_steps <= horizon (LeRobot's __post_init__ check)",
                            fix="fix the profile's action horizon / --n-action-steps")
    if not (0 < state_dim <= model_action_dim and 0 < action_dim <= model_action_dim):
        raise PibridgeError(f"state dim {state_dim}, action dim {action_dim}",
                            expected=f"between 1 and the model's padded width {model_action_dim}",
                            fix="fix the profile's native state / action dims")
    odd = [v for v in variants if v not in LEROBOT_GEMMA_VARIANTS]
    if odd and not allow_unknown:
        raise PibridgeError(f"Gemma variants {odd} cannot be expressed in a LeRobot config",
                            expected=f"paligemma / action expert in {LEROBOT_GEMMA_VARIANTS}",
                            fix="LeRobot builds only gemma_2b + gemma_300m; tiny variants need a test-only patch")
