"""OpenPI's host-side transforms (what `Policy` runs around the model), one home for each one's math.

Upstream: Physical-Intelligence/openpi at 15a9616. numpy only (float64 in, float64 out; torch callers convert;
the image resize imports Pillow lazily, as openpi-client does):
the JAX side (pibridge.parity.openpi_preprocess), the LeRobot processor steps of the pibridge plugin
(plugins/lerobot_policy_pibridge) and the parity stacks all call these functions. Imports neither torch nor lerobot.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


# ------------------------------------------------------------------------------------------------ prompt
def clean_prompt(prompt: str) -> str:
    """models/tokenizer.py:23: strip, '_' -> ' ', newline -> ' ' (no lower-casing for pi0 / pi05)."""
    return prompt.strip().replace("_", " ").replace("\n", " ")


def inject_default_prompt(prompt, default: str | None):
    """InjectDefaultPrompt (transforms.py:104-111): the default only where the observation has no prompt."""
    return default if prompt is None else prompt


# ------------------------------------------------------------------------------------ aloha adapt_to_pi
# aloha_policy.py:104-202: joint sign flips and gripper conversions between standard Aloha and pi's space.
ALOHA_FLIP = np.array([1, -1, -1, 1, 1, 1, 1, 1, -1, -1, 1, 1, 1, 1])  # aloha_policy.py:106
ALOHA_GRIPPERS = [6, 13]  # aloha_policy.py:186, :194
_OPEN_ANGLE, _CLOSE_ANGLE = -0.6213, 1.4910  # PUPPET_GRIPPER_JOINT_OPEN / CLOSE, aloha_policy.py:149-150


def aloha_state_to_pi(state: np.ndarray) -> np.ndarray:
    """(..., 14) standard Aloha state -> pi's space (_decode_state, aloha_policy.py:181-187 with 117-137)."""
    s = ALOHA_FLIP * np.asarray(state, dtype=np.float64)
    g = s[..., ALOHA_GRIPPERS]
    g = g * (0.05800 - 0.01844) + 0.01844  # linear gripper position, aloha_policy.py:124
    horn, arm = 0.022, 0.036  # Interbotix constants, aloha_policy.py:132
    g = np.arcsin(np.clip((horn**2 + g**2 - arm**2) / (2 * horn * g), -1.0, 1.0))  # :128-129
    s[..., ALOHA_GRIPPERS] = (g - 0.5476) / (1.6296 - 0.5476)  # :137
    return s


def aloha_actions_from_pi(actions: np.ndarray) -> np.ndarray:
    """(..., 14) actions in pi's space -> standard Aloha (_encode_actions, aloha_policy.py:190-195 with 140-150)."""
    a = ALOHA_FLIP * np.asarray(actions, dtype=np.float64)
    a[..., ALOHA_GRIPPERS] = (a[..., ALOHA_GRIPPERS] + 0.5476 - _OPEN_ANGLE) / (_CLOSE_ANGLE - _OPEN_ANGLE)
    return a


def aloha_actions_to_pi(actions: np.ndarray) -> np.ndarray:
    """(..., 14) standard Aloha actions (a training target) -> pi's space (_encode_actions_inv, aloha_policy.py:198-202
    with 153-156); inverse of aloha_actions_from_pi."""
    a = ALOHA_FLIP * np.asarray(actions, dtype=np.float64)
    a[..., ALOHA_GRIPPERS] = a[..., ALOHA_GRIPPERS] * (_CLOSE_ANGLE - _OPEN_ANGLE) + _OPEN_ANGLE - 0.5476
    return a


# -------------------------------------------------------------------------------------- delta actions
def _mask_offset(state: np.ndarray, mask: Sequence[bool]) -> tuple[np.ndarray, int]:
    m = np.asarray(mask, dtype=bool)
    k = m.shape[-1]
    return np.where(m, np.asarray(state, np.float64)[..., :k], 0.0), k


def absolute_actions(actions: np.ndarray, state: np.ndarray, mask: Sequence[bool]) -> np.ndarray:
    """AbsoluteActions (transforms.py:234-244): actions (..., T, A) += state (..., S) on the masked first len(mask)
    dims; an empty mask is a no-op."""
    a = np.array(actions, dtype=np.float64)
    if len(mask):
        off, k = _mask_offset(state, mask)
        a[..., :k] += np.expand_dims(off, axis=-2)  # (..., k) -> (..., 1, k)
    return a


def delta_actions(actions: np.ndarray, state: np.ndarray, mask: Sequence[bool]) -> np.ndarray:
    """DeltaActions (transforms.py:212-222), the inverse of absolute_actions (training targets)."""
    a = np.array(actions, dtype=np.float64)
    if len(mask):
        off, k = _mask_offset(state, mask)
        a[..., :k] -= np.expand_dims(off, axis=-2)
    return a


# LeRobot builds its relative-action mask from action names: a dim stays absolute when a `relative_exclude_joints`
# token is a substring of its name (relative_action_processor.py:106-123). pibridge names the absolute dims with
# EXCLUDE_TOKEN so that the mask is OpenPI's; ALOHA and LIBERO dims get their robots' names.
EXCLUDE_TOKEN = "gripper"
_ALOHA_ARM = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")
_NAMES = {
    "aloha": tuple(f"{side}_{j}" for side in ("left", "right") for j in _ALOHA_ARM),  # aloha_policy.py:30 layout
    "libero": ("x", "y", "z", "roll", "pitch", "yaw", "gripper"),  # 6 eef dims + gripper, mask of config.py:338-343
}


def action_names(mask: Sequence[bool], action_dim: int, robot: str | None) -> list[str]:
    """Names for LeRobot's `action_feature_names` whose EXCLUDE_TOKEN dims are exactly OpenPI's absolute dims
    (mask False, and every dim past len(mask): AbsoluteActions leaves them alone)."""
    full = list(mask) + [False] * (action_dim - len(mask))
    names = _NAMES.get(robot or "none")
    if names is not None and len(names) == action_dim and all(
            (EXCLUDE_TOKEN in n) != m for n, m in zip(names, full)):
        return list(names)
    return [f"joint_{i}" if m else f"{EXCLUDE_TOKEN}_{i}" for i, m in enumerate(full)]


def lerobot_mask(names: Sequence[str], exclude: Sequence[str]) -> list[bool]:
    """The mask LeRobot derives from names (relative_action_processor.py:106-123), for checks."""
    tokens = [str(t).lower() for t in exclude if t]
    return [not any(t in str(n).lower() for t in tokens) for n in names]


def lerobot_relative_mask(names: Sequence[str] | None, exclude: Sequence[str] | None, dim: int) -> list[bool]:
    """RelativeActionsProcessorStep._build_mask (relative_action_processor.py:106-123): no names or no exclude
    tokens -> every dim converted; names past dim ignored, dims past the names converted."""
    if names is None or not [t for t in exclude or [] if t]:
        return [True] * dim
    return lerobot_mask(list(names)[:dim], exclude) + [True] * max(0, dim - len(names))


# --------------------------------------------------------------------------------------------- droid
def droid_state(joint_position: np.ndarray, gripper_position: np.ndarray) -> np.ndarray:
    """DroidInputs (droid_policy.py:36-40): concat(joint_position (7,), gripper_position (1,), a 0-d one promoted)."""
    g = np.asarray(gripper_position)
    g = g[np.newaxis] if g.ndim == 0 else g
    return np.concatenate([np.asarray(joint_position), g], axis=-1)


# -------------------------------------------------------------------------------------------- images
IMAGE_SIZE = 224  # model.py:47 IMAGE_RESOLUTION; config.py:131 ResizeImages(224, 224)


def image_to_uint8(img: np.ndarray) -> np.ndarray:
    """Float images become uint8 as OpenPI does: (255 * x).astype(uint8), truncating (openpi-client
    image_tools.py:5-12 convert_to_uint8; droid_policy.py:23-24, libero_policy.py:22-23, aloha_policy.py:168-169).
    A LeRobot frame's x = u / 255 (float32 or float64) comes back as exactly u for all 256 values (measured)."""
    img = np.asarray(img)
    if np.issubdtype(img.dtype, np.floating):
        return (255 * img).astype(np.uint8)
    if img.dtype != np.uint8:
        from pibridge.errors import PibridgeError

        raise PibridgeError(f"image dtype {img.dtype}", expected="uint8 or float in [0, 1]", fix="convert the image")
    return img


def resize_with_pad(img: np.ndarray, height: int = IMAGE_SIZE, width: int = IMAGE_SIZE) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., height, width, 3) uint8 as openpi-client image_tools.py:15-58: PIL BILINEAR
    resize keeping the aspect ratio (sizes truncated by int()), pasted on black at the truncated centre offset.
    A no-op when already height x width (:28-29)."""
    if img.shape[-3:-1] == (height, width):
        return img
    flat = img.reshape(-1, *img.shape[-3:])  # (..., H, W, 3) -> (B', H, W, 3)
    out = np.stack([_resize_one(im, height, width) for im in flat])
    return out.reshape(*img.shape[:-3], *out.shape[-3:])  # (B', h, w, 3) -> (..., h, w, 3)


def _resize_one(im: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    cur_h, cur_w = im.shape[:2]
    ratio = max(cur_w / width, cur_h / height)  # image_tools.py:48-50
    new_h, new_w = int(cur_h / ratio), int(cur_w / ratio)
    resized = Image.fromarray(im).resize((new_w, new_h), resample=Image.BILINEAR)
    canvas = Image.new(resized.mode, (width, height), 0)
    top, left = max(0, int((height - new_h) / 2)), max(0, int((width - new_w) / 2))  # image_tools.py:54-55
    canvas.paste(resized, (left, top))
    return np.asarray(canvas)


def openpi_resize_float01(img: np.ndarray, height: int = IMAGE_SIZE, width: int = IMAGE_SIZE) -> np.ndarray:
    """A LeRobot frame's image, float [0, 1] (..., H, W, 3), through OpenPI's host resize: to uint8 as OpenPI
    converts floats (image_to_uint8), resize_with_pad, back to float32 u / 255 (LeRobot's frame convention). For a
    frame built from a client's uint8 u (x = u / 255) this is OpenPI's resize of u itself, so the model then sees
    OpenPI's pixels; at height x width only the uint8 quantization remains (OpenPI applies it too)."""
    return resize_with_pad(image_to_uint8(img), height, width).astype(np.float32) / np.float32(255.0)
