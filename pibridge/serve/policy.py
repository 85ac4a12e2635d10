"""Policies behind OpenPI's protocol: a client dict in, OpenPI's `Policy.infer` reply out.

    LeRobotServedPolicy(OUT)            the real LeRobot (run it in a LeRobot env): from_pretrained +
                                        make_pre_post_processors from OUT, predict_action_chunk, OUT's postprocessor
                                        over the whole chunk
    OpenPIServedPolicy(CKPT, PROFILE)   pibridge's JAX stack with OpenPI's host side (parity.openpi_preprocess)

Both: `.metadata` (the profile's TrainConfig.policy_metadata, e.g. ALOHA's reset_pose; else {}) and
`.infer(obs, noise=None)` -> {"actions": (H, A) float64, "policy_timing": {"infer_ms"}}, as OpenPI's Policy.infer
(policies/policy.py:68-106; the robot output transforms keep only "actions": aloha_policy.py:98-101,
droid_policy.py:79-81, libero_policy.py:167-181). The server adds "server_timing".

The client dict (what OpenPI's example clients send; one home for this map: `client_frame`):

    robot   state                                        images (one per profile camera source)   other
    aloha   "state" (14,)                                "images": {"cam_high", "cam_left_wrist",  "cam_low" accepted,
                                                         "cam_right_wrist": (3, H, W)}  CHW         unused
    droid   "observation/joint_position" (7,) ++         "observation/exterior_image_1_left",
            "observation/gripper_position" (1,) or ()    "observation/wrist_image_left": HWC or CHW
            (hostx.droid_state)
    libero  "observation/state" (8,)                     "observation/image", "observation/wrist_image"
    none    "state" (S,)                                 "images": {camera: HWC or CHW}
    all     "prompt" str (bytes decoded), optional when the profile or --default-prompt has one;
            "noise" (H, 32) or (1, H, 32) float: a pibridge extension (OpenPI's wire has no noise; its
            Policy.infer takes noise= in-process, policy.py:82-88) for replayable, deterministic replies

Images: uint8, or float in [0, 1] quantized as OpenPI's robot inputs do ((255 x).astype(uint8)); CHW -> HWC. The
base camera is required; a missing wrist camera is a masked blank slot (aloha_policy.py:64-70) -- LeRobot fills an
absent camera the same way. Extra keys are ignored (OpenPI's transforms ignore them too).

Image size (OpenPI's ResizeImages, PIL letterbox to 224x224, openpi-client image_tools.py:15-58, runs inside its
Policy): an OUT converted with --openpi-resize has it as a preprocessor step (pibridge_openpi_resize, pibridge.json
host_transforms.openpi_resize), so LeRobotServedPolicy passes the images at the client's size and the step resizes
them. An OUT without that step has no OpenPI resize of its own (LeRobot's in-model one is torch bilinear on floats,
another image): there LeRobotServedPolicy resizes on the host, the glue's one value transform, so that a client at its
native size still gets OpenPI's pixels (`resizes_on_host`). OpenPIServedPolicy always resizes on the host, as OpenPI.

The LeRobot frame from it: observation.images.<OUT camera name> float32 (1, 3, H, W) = uint8 / 255 (224x224 when the
glue resized), observation.state float32 (1, S) in the robot's own space, task [prompt] (absent when the client
sends none: OUT's default-prompt step fills it). Every other value transform (adapt_to_pi, default prompt, prompt
cleaning, normalization, relative / absolute actions, and the resize on an --openpi-resize OUT) is OUT's processor
steps' job; none is done here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pibridge.convert.profile import Profile, load_profile, profile_from_dict
from pibridge.errors import PibridgeError
from pibridge.provenance import load_provenance
from pibridge.vocab import OPENPI_SLOTS

MODEL_ACTION_DIM = 32  # pi0_config.py:25 action_dim: the noise's last axis
IMAGE_SIZE = 224  # OpenPI's ResizeImages(224, 224), config.py:131
ALOHA_CAMERAS = ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")  # AlohaInputs.EXPECTED_CAMERAS (:38)
_STATE_KEYS = {"aloha": ("state",), "none": ("state",), "libero": ("observation/state",),
               "droid": ("observation/joint_position", "observation/gripper_position")}
NOISE_KEY = "noise"
RESIZE_STEP = "OpenPIResizeStep"  # plugin steps.py, registry name pibridge_openpi_resize


@dataclass(frozen=True)
class Frame:
    """One client observation, robot-neutral: what both policies start from."""

    state: np.ndarray  # (S,) float64, the robot's own space (before adapt_to_pi)
    images: dict[str, np.ndarray]  # OpenPI slot -> (224, 224, 3) uint8 (native size with size=None); absent: absent
    prompt: str | None
    noise: np.ndarray | None  # (1, H, 32) float32


def _bad(found: str, expected: str, fix: str = "send what OpenPI's example client for this robot sends") -> PibridgeError:
    return PibridgeError(f"bad request: {found}", expected, fix)


def _numeric(value: Any, key: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiub":
        kind = f"a {value.dtype} array" if isinstance(value, np.ndarray) else type(value).__name__
        raise _bad(f"{key!r} is {kind}", f"{key!r} a numeric numpy array")
    return value


def _state(obs: Mapping[str, Any], profile: Profile) -> np.ndarray:
    from pibridge.hostx import droid_state

    robot = profile.robot or "none"
    for key in _STATE_KEYS[robot]:
        if key not in obs:
            raise _bad(f"no {key!r} key (keys: {', '.join(map(repr, obs))})",
                       f"{' and '.join(map(repr, _STATE_KEYS[robot]))} for a {robot} policy ({profile.name})")
    if robot == "droid":
        joints = _numeric(obs["observation/joint_position"], "observation/joint_position")
        grip = _numeric(obs["observation/gripper_position"], "observation/gripper_position")
        if joints.ndim != 1 or grip.ndim > 1 or grip.size != 1:
            raise _bad(f"joint_position {joints.shape}, gripper_position {grip.shape}",
                       "observation/joint_position (7,) and observation/gripper_position (1,) or ()")
        state = droid_state(joints, grip)
    else:
        key = _STATE_KEYS[robot][0]
        state = _numeric(obs[key], key)
    dim = profile.require("state_dim")
    if state.shape != (dim,):
        raise _bad(f"state has shape {state.shape}", f"({dim},) for {profile.name} (one observation, unbatched)")
    return np.asarray(state, np.float64)


def _image(value: Any, key: str, chw_only: bool, size: int | None = IMAGE_SIZE) -> np.ndarray:
    """-> (224, 224, 3) uint8 (droid_policy.py:21-27 / aloha_policy.py:165-171, then ResizeImages); size=None:
    (H, W, 3) uint8 at the client's size (for an observation file: each stack resizes it itself)."""
    from pibridge.hostx import image_to_uint8, resize_with_pad

    img = _numeric(value, key)
    layout = "(3, H, W)" if chw_only else "(H, W, 3) or (3, H, W)"
    if img.ndim != 3 or (img.shape[0] != 3 and (chw_only or img.shape[-1] != 3)):
        raise _bad(f"image {key!r} has shape {img.shape}", f"{layout} uint8, or float in [0, 1]")
    if img.dtype != np.uint8 and img.dtype.kind != "f":
        raise _bad(f"image {key!r} is {img.dtype}", "uint8, or float in [0, 1]")
    img = image_to_uint8(img)
    if img.shape[0] == 3:
        img = np.transpose(img, (1, 2, 0))  # (3, H, W) -> (H, W, 3)
    img = np.ascontiguousarray(img)
    return img if size is None else resize_with_pad(img, size, size)


def _nested(profile: Profile) -> bool:
    """aloha / none clients send images under "images" by camera name; droid / libero as top-level keys."""
    return (profile.robot or "none") in ("aloha", "none")


def put_client_image(obs: dict, profile: Profile, source: str, hwc: np.ndarray) -> None:
    """Place a (H, W, 3) uint8 camera image (e.g. read from an image file) into a client dict under the profile
    camera source `source`, in the layout that robot's client sends (ALOHA: (3, H, W))."""
    img = np.transpose(hwc, (2, 0, 1)) if profile.robot == "aloha" else hwc
    if _nested(profile):
        obs["images"] = {**(obs.get("images") or {}), source: img}
    else:
        obs[source] = img


def _images(obs: Mapping[str, Any], profile: Profile, size: int | None = IMAGE_SIZE) -> dict[str, np.ndarray]:
    robot, cams = profile.robot or "none", profile.require("cameras")
    nested = _nested(profile)
    given = obs.get("images") if nested else obs
    if nested:
        if not isinstance(given, Mapping):
            raise _bad(f"'images' is {type(given).__name__}" if "images" in obs else "no 'images' key",
                       "'images': {camera name: image}")
        known = {c.source for c in cams if not c.empty} | (set(ALOHA_CAMERAS) if robot == "aloha" else set())
        unknown = sorted(set(map(str, given)) - known)
        if unknown:
            raise _bad(f"unknown camera(s) {', '.join(unknown)}", f"cameras among {', '.join(sorted(known))}")
    out = {}
    for i, cam in enumerate(cams):
        if cam.empty:
            continue
        key = f"images/{cam.source}" if nested else cam.source
        if cam.source in given:
            out[cam.slot] = _image(given[cam.source], key, chw_only=robot == "aloha", size=size)
        elif i == 0 or robot in ("droid", "libero"):  # droid_policy.py:44-45, libero_policy.py:135-136
            raise _bad(f"no image {key!r}", f"the {cam.slot} camera {key!r}")
    return out


def _prompt(obs: Mapping[str, Any], profile: Profile, default_prompt: str | None) -> str | None:
    p = obs.get("prompt")
    if isinstance(p, bytes):  # droid_policy.py:69-72
        try:
            p = p.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad("'prompt' bytes are not UTF-8", "a str prompt") from None
    if p is not None and not isinstance(p, str):
        raise _bad(f"'prompt' is {type(p).__name__}", "'prompt' a str")
    if p is None:
        p = default_prompt  # serve_policy.py --default-prompt: InjectDefaultPrompt before the config's (policy_config.py:82)
    if p is None and profile.default_prompt is None:
        raise PibridgeError("bad request: no 'prompt', and the policy has no default prompt",
                            f"a 'prompt' in every request, or a default prompt ({profile.name} has none)",
                            "send 'prompt', or start the server with --default-prompt TEXT")
    return p


def _noise(value: Any, profile: Profile) -> np.ndarray | None:
    if value is None:
        return None
    noise = _numeric(value, NOISE_KEY)
    want = (profile.action_horizon, MODEL_ACTION_DIM)
    if noise.shape not in (want, (1, *want)) or noise.dtype.kind != "f":
        raise _bad(f"'noise' is {noise.dtype} {noise.shape}", f"float {want} or (1, *{want}) (pibridge extension)",
                   "draw it as np.random.standard_normal((action_horizon, 32)), or leave it out")
    return np.asarray(noise, np.float32).reshape(1, *want)


def client_frame(obs: Any, profile: Profile, default_prompt: str | None = None, *,
                 size: int | None = IMAGE_SIZE) -> Frame:
    """OpenPI client dict -> Frame; bad keys / shapes / dtypes are a PibridgeError ('bad request: ...').
    size=None keeps the images at the client's size (`pibridge parity obs --from-client`)."""
    if not isinstance(obs, Mapping):
        raise _bad(f"the request is a {type(obs).__name__}", "a map of observation keys (OpenPI's client dict)")
    return Frame(state=_state(obs, profile), images=_images(obs, profile, size),
                 prompt=_prompt(obs, profile, default_prompt), noise=_noise(obs.get(NOISE_KEY), profile))


def _timed(actions: np.ndarray, t0: float) -> dict:
    return {"actions": np.asarray(actions, np.float64), "policy_timing": {"infer_ms": (time.monotonic() - t0) * 1000}}


class LeRobotServedPolicy:
    """OUT run by the installed LeRobot, the way lerobot-eval loads a pretrained policy (pibridge's runtime fixes
    applied; tiny test variants patched in, as `parity capture --stack lerobot` does)."""

    def __init__(self, out_dir: str | Path, *, default_prompt: str | None = None, device: str | None = None,
                 fixes: bool = True):
        from pibridge.parity.stacks.lerobot import tiny as lerobot_tiny
        from pibridge.parity.stacks.lerobot.loader import load_policy, versions
        from pibridge.fixes.runtime import apply_runtime_fixes

        self.out_dir = Path(out_dir)
        prov = load_provenance(self.out_dir)
        self.profile = profile_from_dict(prov["profile"])
        self.default_prompt = default_prompt
        present = [s for s in OPENPI_SLOTS if s not in prov["empty_slots"]]
        self.camera_names = dict(zip(present, prov["camera_names"]))  # OpenPI slot -> OUT's LeRobot camera name
        if lerobot_tiny.needed(prov):
            lerobot_tiny.apply()
        self.policy, self.load_check = load_policy(self.out_dir, prov["model"])
        self.fixes = apply_runtime_fixes(self.policy, runtime_dtype=self.policy.config.dtype,
                                         lerobot_version=versions()["lerobot"]) if fixes else {}
        self.policy.eval()
        self.device = device or str(getattr(self.policy.config, "device", None) or "cpu")
        self.policy.to(self.device)
        from lerobot.policies.factory import make_pre_post_processors

        over = {"device_processor": {"device": self.device}}
        self.pre, self.post = make_pre_post_processors(self.policy.config, pretrained_path=str(self.out_dir),
                                                       preprocessor_overrides=over,
                                                       postprocessor_overrides={"device_processor": {"device": "cpu"}})
        # OUT's own OpenPI resize step (by class, as loaded: what runs, not what pibridge.json says)
        self.resizes_on_host = not any(type(s).__name__ == RESIZE_STEP for s in self.pre.steps)

    @property
    def metadata(self) -> dict:
        return dict(self.profile.policy_metadata)

    def frame_batch(self, frame: Frame) -> dict:
        """Frame -> the LeRobot frame OUT's preprocessor takes (see the module docstring)."""
        import torch

        batch = {f"observation.images.{self.camera_names[slot]}":
                 torch.from_numpy(img).permute(2, 0, 1)[None].to(torch.float32) / 255.0  # (H,W,3) -> (1,3,H,W)
                 for slot, img in frame.images.items()}
        batch["observation.state"] = torch.from_numpy(frame.state.astype(np.float32))[None]  # (S,) -> (1, S)
        if frame.prompt is not None:
            batch["task"] = [frame.prompt]
        return batch

    def predict_chunk(self, batch: dict, noise: np.ndarray | None):
        """OUT's preprocessor -> predict_action_chunk -> OUT's postprocessor over the whole chunk: (1, H, A)."""
        import torch

        with torch.no_grad():
            x = self.pre(batch)
            kw = {} if noise is None else {"noise": torch.from_numpy(noise).to(self.device)}
            chunk = self.policy.predict_action_chunk(x, **kw)
            return self.post(chunk)

    def infer(self, obs: Mapping[str, Any], noise: np.ndarray | None = None) -> dict:
        t0 = time.monotonic()
        frame = client_frame(obs, self.profile, self.default_prompt,
                             size=IMAGE_SIZE if self.resizes_on_host else None)
        noise = frame.noise if noise is None else _noise(noise, self.profile)
        actions = self.predict_chunk(self.frame_batch(frame), noise)
        return _timed(actions[0].detach().cpu().double().numpy(), t0)


class OpenPIServedPolicy:
    """An OpenPI checkpoint on pibridge's JAX stack with OpenPI's host side: what OpenPI's own serve_policy.py
    replies, without OpenPI installed (float32, or bf16 with precision='bf16')."""

    def __init__(self, ckpt: str | Path, profile: str | Profile, *, tokenizer: str | Path | None = None,
                 default_prompt: str | None = None, asset_id: str | None = None, precision: str = "float32",
                 num_steps: int = 10, seed: int = 0):
        from pibridge.configs import load_variant
        from pibridge.convert.detect import detect
        from pibridge.convert.reader import open_checkpoint
        from pibridge.parity.stacks.jax import get_policy, prepare_params
        from pibridge.tokenizer import load_tokenizer

        self.profile = load_profile(profile) if isinstance(profile, str) else profile
        self.profile.require("cameras")
        self.profile.require("state_dim")
        if tokenizer is None:
            raise PibridgeError("no tokenizer for the JAX stack's prompts", "a SentencePiece model file",
                                "pass --tokenizer PATH (PaliGemma's paligemma_tokenizer.model)")
        self.tokenizer = load_tokenizer(tokenizer)
        ck = open_checkpoint(ckpt)
        det = detect(ck.leaves)
        self.profile.check_model(det.model == "pi05")
        self.variant = load_variant(det.variant.name)
        self.norm_stats = ck.norm_stats(asset_id or self.profile.asset_id)
        self.precision, self.num_steps = precision, num_steps
        self.params = prepare_params(ck, self.variant, get_policy(precision))
        self.default_prompt = default_prompt
        self.rng = np.random.default_rng(seed)

    @property
    def metadata(self) -> dict:
        return dict(self.profile.policy_metadata)

    def infer(self, obs: Mapping[str, Any], noise: np.ndarray | None = None) -> dict:
        from pibridge.parity.stacks.jax import run_policy
        from pibridge.parity.openpi_preprocess import postprocess_actions, preprocess

        t0 = time.monotonic()
        frame = client_frame(obs, self.profile, self.default_prompt)
        noise = frame.noise if noise is None else _noise(noise, self.profile)
        if noise is None:  # OpenPI draws it from its policy rng (policy.py:76, pi0.py sample_actions)
            noise = self.rng.standard_normal((1, self.profile.action_horizon, MODEL_ACTION_DIM)).astype(np.float32)
        missing = {c.slot: False for c in self.profile.cameras if not c.empty and c.slot not in frame.images}
        raw = {"state": frame.state, "images": dict(frame.images), "image_mask": missing}
        if frame.prompt is not None:
            raw["prompt"] = frame.prompt
        inputs = preprocess(raw, self.profile, self.norm_stats, self.tokenizer)
        actions = run_policy(self.params, self.variant, inputs, noise, precision=self.precision,
                             num_steps=self.num_steps)
        return _timed(postprocess_actions(np.asarray(actions), inputs.state, self.profile, self.norm_stats)[0], t0)
