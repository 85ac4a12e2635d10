"""policy_preprocessor.json / policy_postprocessor.json as LeRobot's pipelines save them.

Format (processor/pipeline.py `get_config` / `_save_pretrained`, 0.5.1-0.6.1): {"name", "steps": [{
"registry_name", "config": step.get_config(), ["state_file"]}]}, dumped with indent 2; a step with state
names its file `<pipeline>_step_<i>_<registry_name>.safetensors`. Step lists and get_config() bodies
follow make_pi05_pre_post_processors / make_pi0_pre_post_processors and make_default_policy_processor_steps
of each version (policies/pi0{5,}/processor_pi0{5,}.py, processor/factory.py; see
configs/lerobot/versions.json). Values come from the config.json pibridge writes for the same target.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pibridge.convert.lerobot_config import version_data
from pibridge.errors import PibridgeError

PAD_TOKENIZER = "google/paligemma-3b-pt-224"  # hard-coded in both processor factories
LEROBOT_NORM_EPS = 1e-8  # normalize_processor.py:97


def _step(name: str, config: dict[str, Any], state_file: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"registry_name": name, "config": config}
    if state_file:
        out["state_file"] = state_file
    return out


def _state_file(pipeline: str, index: int, name: str) -> str:
    return f"{pipeline}_step_{index}_{name}.safetensors"


def _norm_config(features: Mapping[str, Any], norm_map: Mapping[str, str]) -> dict[str, Any]:
    return {"eps": LEROBOT_NORM_EPS, "features": dict(features), "norm_map": dict(norm_map)}


def build_processor_jsons(lerobot_version: str, config: Mapping[str, Any], *, device: str = "cpu",
                          tokenizer_name: str = PAD_TOKENIZER) -> tuple[dict[str, Any], dict[str, Any]]:
    """(policy_preprocessor.json, policy_postprocessor.json) content for a config.json from
    build_config_json. device: LeRobot's eval / train scripts override it on load; "cpu" loads anywhere
    (DeviceProcessorStep resolves the name when built)."""
    version = version_data(lerobot_version)
    model = config.get("type")
    if model not in ("pi0", "pi05"):
        raise PibridgeError(f"config type {model!r}", expected="pi0 or pi05",
                            fix="build the config with build_config_json")
    norm_map = config["normalization_mapping"]
    relative = _step(version["relative_step_registry"], {
        "enabled": config["use_relative_actions"], "exclude_joints": config["relative_exclude_joints"],
        "action_names": config["action_feature_names"]})
    tokenizer = _step("tokenizer_processor", {"max_length": config["tokenizer_max_length"], "task_key": "task",
                      "padding_side": "right", "padding": "max_length", "truncation": True,
                      "tokenizer_name": tokenizer_name})
    to_device = _step("device_processor", {"device": device, "float_dtype": None})
    head = [_step("rename_observations_processor", {"rename_map": {}}), _step("to_batch_processor", {})]
    features = {**config["input_features"], **config["output_features"]}
    if model == "pi05":
        pre = head + [relative, None, _step("pi05_prepare_state_tokenizer_processor_step", {}), tokenizer, to_device]
    else:
        pre = head + [_step("pi0_new_line_processor", {}), tokenizer, to_device, relative, None]
    i = pre.index(None)
    pre[i] = _step("normalizer_processor", _norm_config(features, norm_map),
                   _state_file("policy_preprocessor", i, "normalizer_processor"))
    post = [_step("unnormalizer_processor", _norm_config(config["output_features"], norm_map),
                  _state_file("policy_postprocessor", 0, "unnormalizer_processor")),
            _step("absolute_actions_processor", {"enabled": config["use_relative_actions"]}),
            _step("device_processor", {"device": "cpu", "float_dtype": None})]
    return {"name": "policy_preprocessor", "steps": pre}, {"name": "policy_postprocessor", "steps": post}
