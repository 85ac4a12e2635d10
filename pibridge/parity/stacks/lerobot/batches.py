"""What the real LeRobot is fed: "pipeline" (default) the observation's raw images, state and prompt as a LeRobot
frame for the processors loaded from OUT; or ModelInputs (OpenPI's preprocessing, `--shared-inputs`) straight to
predict_action_chunk (images mapped [-1, 1] -> [0, 1], tokens and masks as given). Differences by design are
listed by not_comparable {stage: reason}: LeRobot moves absent cameras to the end of the prefix and has no
per-sample camera mask (a camera present in the batch is valid for every sample).
"""

from __future__ import annotations

import numpy as np

from pibridge.vocab import OPENPI_SLOTS
from pibridge.parity.inputs import ModelInputs


def pipeline_batch(obs, camera_names: list[str], empty_slots: list[str]) -> dict:
    """Raw observation -> LeRobot frame: observation.images.<name> float (B, 3, H, W) in [0, 1], state, task."""
    import torch

    batch = {}
    names = dict(zip([s for s in OPENPI_SLOTS if s not in empty_slots], camera_names))
    for slot in obs.slots:
        if slot not in names:
            continue
        name = names[slot]
        img = torch.from_numpy(np.ascontiguousarray(obs.images[slot])).permute(0, 3, 1, 2)  # (B,H,W,3)->(B,3,H,W)
        batch[f"observation.images.{name}"] = img.to(torch.float32) / 255.0
    batch["observation.state"] = torch.from_numpy(np.asarray(obs.state, np.float32))
    batch["task"] = list(obs.prompts)
    return batch


def model_inputs_batch(inputs: ModelInputs, camera_names: list[str], empty_slots: list[str]) -> dict:
    """ModelInputs (OpenPI slot order, e.g. `parity capture --shared-inputs`) -> what predict_action_chunk reads,
    bypassing the processors."""
    import torch

    batch, present = {}, [s for s in OPENPI_SLOTS if s not in empty_slots]
    for name, slot in zip(camera_names, present):
        x = torch.from_numpy(inputs.images[:, OPENPI_SLOTS.index(slot)]).permute(0, 3, 1, 2)  # (B,H,W,3)->(B,3,H,W)
        batch[f"observation.images.{name}"] = (x + 1.0) / 2.0  # LeRobot maps [0,1] -> [-1,1] itself
    batch["observation.state"] = torch.from_numpy(inputs.state)
    batch["observation.language.tokens"] = torch.from_numpy(inputs.tokens).long()
    batch["observation.language.attention_mask"] = torch.from_numpy(inputs.token_mask).bool()
    return batch


def not_comparable(image_mask: np.ndarray, obs_slots: list[str], empty_slots: list[str]) -> dict[str, str]:
    """Stages that differ by design between OpenPI and LeRobot for this observation."""
    reasons, slots = [], list(OPENPI_SLOTS)
    idx = sorted(slots.index(s) for s in empty_slots if s in slots)
    if idx != list(range(len(slots) - len(idx), len(slots))):
        reasons.append("LeRobot moves absent cameras to the end of the prefix (OpenPI keeps slot order)")
    present = [i for i, s in enumerate(obs_slots) if s not in empty_slots]
    if present and not image_mask[:, present].all():
        reasons.append("LeRobot has no per-sample camera mask (a camera in the batch is valid for every sample)")
    if not reasons:
        return {}
    why = "; ".join(reasons)
    downstream = ("input/image", "input/image_mask", "img/*", "prefix/*", "llm/*", "expert/*", "velocity/*",
                  "actions", "actions/unnormalized")
    return {name: why for name in downstream}
