"""LeRobot processor steps for OpenPI's host transforms that LeRobot has no step for (pibridge.hostx holds the math).

`pibridge convert` writes them into policy_preprocessor.json / policy_postprocessor.json by class path
("class": "lerobot_policy_pibridge.steps.<Class>"): LeRobot's loader imports that module by itself
(processor/pipeline.py:1073-1094 in 0.6.1), so OUT loads with plain `from_pretrained` / `make_pre_post_processors`
wherever this plugin is installed, and fails with ImportError naming `lerobot_policy_pibridge.steps` where it is
not. Each step is also registered under a registry name (REGISTRY) so that LeRobot re-saves it portably.

Preprocessor: pibridge_default_prompt, pibridge_prompt_clean (before the tokenizer steps), pibridge_adapt_to_pi_inputs
(before relative_actions_processor caches the state, so AbsoluteActions adds the pi-space state as OpenPI does,
policy.py:92-95), pibridge_openpi_resize (optional: OpenPI's host PIL resize of every camera image, so
LeRobot's own in-model torch resize finds 224x224 and does nothing), pibridge_runtime_fixes_required (a marker
first in the chain of OUTs that need runtime fixes: without the plugin their processors do not load). Postprocessor:
pibridge_adapt_to_pi_outputs after absolute_actions_processor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lerobot.processor import ProcessorStep, ProcessorStepRegistry, TransitionKey

from pibridge import hostx

OBS_STATE, ACTION, TASK = "observation.state", "action", "task"
OBS_IMAGES = "observation.images."  # LeRobot camera features: float [0, 1] (B, 3, H, W) or (3, H, W)


def _register(name: str):
    def deco(cls):
        if ProcessorStepRegistry._registry.get(name) is None:
            ProcessorStepRegistry.register(name)(cls)
        cls.registry_name = name
        return cls
    return deco


def _numpy_map(t: torch.Tensor, fn) -> torch.Tensor:
    """Apply a float64 numpy function to a tensor; same dtype and device back."""
    out = fn(t.detach().to("cpu", torch.float64).numpy())
    return torch.from_numpy(np.ascontiguousarray(out)).to(device=t.device, dtype=t.dtype)


class _Step(ProcessorStep):
    def transform_features(self, features):
        return features

    def get_config(self) -> dict[str, Any]:
        return {}


@_register("pibridge_default_prompt")
@dataclass
class DefaultPromptStep(_Step):
    """InjectDefaultPrompt (transforms.py:104-111): `task` = the default where the frame has none."""

    prompt: str | None = None

    def __call__(self, transition):
        comp = dict(transition.get(TransitionKey.COMPLEMENTARY_DATA) or {})
        task = comp.get(TASK)
        if isinstance(task, (list, tuple)) and self.prompt is not None:  # per sample, as OpenPI infers one at a time
            comp[TASK] = [hostx.inject_default_prompt(t, self.prompt) for t in task]
            return {**transition, TransitionKey.COMPLEMENTARY_DATA: comp}
        if task is not None or self.prompt is None:
            return transition
        state = (transition.get(TransitionKey.OBSERVATION) or {}).get(OBS_STATE)
        batched = state is not None and state.ndim == 2
        comp[TASK] = [hostx.inject_default_prompt(None, self.prompt)] * state.shape[0] if batched else self.prompt
        return {**transition, TransitionKey.COMPLEMENTARY_DATA: comp}

    def get_config(self) -> dict[str, Any]:
        return {"prompt": self.prompt}


@_register("pibridge_prompt_clean")
@dataclass
class PromptCleanStep(_Step):
    """OpenPI's prompt cleaning (models/tokenizer.py:23), which LeRobot's pi0 newline step does not do."""

    def __call__(self, transition):
        comp = transition.get(TransitionKey.COMPLEMENTARY_DATA) or {}
        task = comp.get(TASK)
        if task is None:
            return transition
        task = hostx.clean_prompt(task) if isinstance(task, str) else [hostx.clean_prompt(t) for t in task]
        return {**transition, TransitionKey.COMPLEMENTARY_DATA: {**comp, TASK: task}}


@_register("pibridge_adapt_to_pi_inputs")
@dataclass
class AdaptToPiInputsStep(_Step):
    """AlohaInputs' adapt_to_pi (aloha_policy.py:181-187 state, :198-202 a training target `action`)."""

    def __call__(self, transition):
        new = dict(transition)
        obs = transition.get(TransitionKey.OBSERVATION)
        if obs and obs.get(OBS_STATE) is not None:
            new[TransitionKey.OBSERVATION] = {**obs, OBS_STATE: _numpy_map(obs[OBS_STATE], hostx.aloha_state_to_pi)}
        if isinstance(transition.get(TransitionKey.ACTION), torch.Tensor):
            new[TransitionKey.ACTION] = _numpy_map(transition[TransitionKey.ACTION], hostx.aloha_actions_to_pi)
        return new


@_register("pibridge_adapt_to_pi_outputs")
@dataclass
class AdaptToPiOutputsStep(_Step):
    """AlohaOutputs' adapt_to_pi (aloha_policy.py:190-195): pi-space actions -> standard Aloha."""

    def __call__(self, transition):
        action = transition.get(TransitionKey.ACTION)
        if not isinstance(action, torch.Tensor):
            return transition
        return {**transition, TransitionKey.ACTION: _numpy_map(action, hostx.aloha_actions_from_pi)}


@_register("pibridge_openpi_resize")
@dataclass
class OpenPIResizeStep(_Step):
    """OpenPI's host ResizeImages (transforms.py:184-191 -> openpi-client image_tools.py:15-58) on every camera
    image of the frame: CHW float [0, 1] -> HWC uint8 as OpenPI converts floats -> PIL letterbox -> u / 255 back
    (hostx.openpi_resize_float01). Runs before the model's own resize (modeling_pi05.py:993-994), which then is
    a no-op."""

    height: int = hostx.IMAGE_SIZE
    width: int = hostx.IMAGE_SIZE

    def __call__(self, transition):
        obs = transition.get(TransitionKey.OBSERVATION)
        if not obs:
            return transition
        new = dict(obs)
        for key, img in obs.items():
            if key.startswith(OBS_IMAGES) and isinstance(img, torch.Tensor):
                new[key] = self._resize(img)
        return {**transition, TransitionKey.OBSERVATION: new}

    def _resize(self, img: torch.Tensor) -> torch.Tensor:
        if img.ndim not in (3, 4) or img.shape[-3] != 3 or not img.is_floating_point():
            raise ValueError(f"pibridge_openpi_resize: image of shape {tuple(img.shape)} {img.dtype}; expected a "
                             "LeRobot frame image, float [0, 1] (3, H, W) or (B, 3, H, W)")
        hwc = img.detach().to("cpu", torch.float32).movedim(-3, -1).numpy()  # (..., 3, H, W) -> (..., H, W, 3)
        out = hostx.openpi_resize_float01(hwc, self.height, self.width)
        return torch.from_numpy(out).movedim(-1, -3).contiguous().to(device=img.device, dtype=img.dtype)

    def get_config(self) -> dict[str, Any]:
        return {"height": self.height, "width": self.width}


@_register("pibridge_runtime_fixes_required")
@dataclass
class RuntimeFixesRequiredStep(_Step):
    """A marker, identity on the data: OUT needs these runtime fixes (pibridge.json runtime_fixes_needed), which this
    plugin applies when the policy loads. Written into OUT's preprocessor so that LeRobot WITHOUT the plugin fails to
    load the processors (ImportError naming lerobot_policy_pibridge.steps) instead of running the policy unfixed."""

    fixes: list[str] | None = None

    def __call__(self, transition):
        return transition

    def get_config(self) -> dict[str, Any]:
        return {"fixes": list(self.fixes or [])}


REGISTRY = {c.registry_name: c for c in (DefaultPromptStep, PromptCleanStep, AdaptToPiInputsStep, AdaptToPiOutputsStep,
                                         OpenPIResizeStep, RuntimeFixesRequiredStep)}
