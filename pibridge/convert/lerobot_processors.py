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
from dataclasses import dataclass
from typing import Any

from pibridge.convert.lerobot_config import version_data
from pibridge.errors import PibridgeError
from pibridge.hostx import IMAGE_SIZE

PAD_TOKENIZER = "google/paligemma-3b-pt-224"  # hard-coded in both processor factories
LEROBOT_NORM_EPS = 1e-8  # normalize_processor.py:97
PLUGIN_STEPS = "lerobot_policy_pibridge.steps"  # plugins/lerobot_policy_pibridge: OpenPI host transforms


@dataclass(frozen=True)
class HostSteps:
    """OpenPI host transforms that OUT's processors run as pibridge plugin steps (pibridge.hostx has the math)."""

    default_prompt: str | None = None  # InjectDefaultPrompt (transforms.py:104-111)
    prompt_clean: bool = False  # pi0-format prompts: models/tokenizer.py:23 (LeRobot's pi0 newline step does not)
    adapt_to_pi: bool = False  # AlohaInputs / AlohaOutputs (aloha_policy.py:181-202)
    openpi_resize: bool = False  # ResizeImages on the host (openpi-client image_tools.py:15-58), by convert's flag
    # Runtime fixes OUT needs where it is loaded: a marker step (identity) makes LeRobot without the plugin refuse
    # OUT's processors, naming lerobot_policy_pibridge, instead of running the policy silently unfixed.
    runtime_fixes: tuple[str, ...] = ()

    @classmethod
    def for_profile(cls, p, openpi_resize: bool = False, runtime_fixes: tuple[str, ...] = ()) -> HostSteps:
        return cls(default_prompt=p.default_prompt, prompt_clean=not (p.pi05 and p.discrete_state_input),
                   adapt_to_pi=bool(p.adapt_to_pi), openpi_resize=openpi_resize, runtime_fixes=tuple(runtime_fixes))

    def pre(self) -> list[dict[str, Any]]:
        """Steps between to_batch_processor and the relative-action / normalizer / tokenizer steps."""
        out = [_plugin("RuntimeFixesRequiredStep", {"fixes": list(self.runtime_fixes)})] if self.runtime_fixes else []
        if self.default_prompt is not None:
            out.append(_plugin("DefaultPromptStep", {"prompt": self.default_prompt}))
        if self.prompt_clean:
            out.append(_plugin("PromptCleanStep", {}))
        if self.adapt_to_pi:
            out.append(_plugin("AdaptToPiInputsStep", {}))
        if self.openpi_resize:  # before the model's own resize (inside predict_action_chunk)
            out.append(_plugin("OpenPIResizeStep", {"height": IMAGE_SIZE, "width": IMAGE_SIZE}))
        return out

    def post(self) -> list[dict[str, Any]]:
        """Steps after absolute_actions_processor."""
        return [_plugin("AdaptToPiOutputsStep", {})] if self.adapt_to_pi else []


def _plugin(cls: str, config: dict[str, Any]) -> dict[str, Any]:
    """A step by class path: LeRobot imports the module itself when loading (processor/pipeline.py:1081-1094), and
    raises ImportError naming lerobot_policy_pibridge.steps where the plugin is not installed."""
    return {"class": f"{PLUGIN_STEPS}.{cls}", "config": config}


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
                          tokenizer_name: str = PAD_TOKENIZER, host: HostSteps | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(policy_preprocessor.json, policy_postprocessor.json) content for a config.json from
    build_config_json. device: LeRobot's eval / train scripts override it on load; "cpu" loads anywhere
    (DeviceProcessorStep resolves the name when built). host: OpenPI host transforms as pibridge plugin steps."""
    host = host or HostSteps()
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
    head = [_step("rename_observations_processor", {"rename_map": {}}), _step("to_batch_processor", {})] + host.pre()
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
            _step("absolute_actions_processor", {"enabled": config["use_relative_actions"]}), *host.post(),
            _step("device_processor", {"device": "cpu", "float_dtype": None})]
    return {"name": "policy_preprocessor", "steps": pre}, {"name": "policy_postprocessor", "steps": post}
