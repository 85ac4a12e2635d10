"""An observation file from what an OpenPI client sends (`pibridge parity obs --from-client FILE`).

A client file holds one OpenPI client dict (the request a robot or simulator sends to a policy server):
  .msgpack / .bin / .msg  the bytes of one request frame, OpenPI's msgpack-numpy encoding (pibridge.serve.wire);
  .npz                    np.savez(path, **client_dict); nested "images" entries (ALOHA, robot none) flattened
                          as "images/<camera>"; the prompt a 0-d str (or bytes) array.
The dict reaches the observation only through serve/policy.py's client_frame, the one documented key / layout map
(renames, CHW -> HWC, float -> uint8 as OpenPI's robot inputs do, DROID joint + gripper state). Images keep the
client's size (each stack resizes them itself); a camera the client left out that OpenPI fills with zeros (ALOHA's
wrists, aloha_policy.py:64-70) is a zeros image of the base camera's size, masked. Camera images may also come from
image files (--image CAMERA=FILE, read with PIL as RGB uint8). One file is one sample; several make a batch.
Noise: the client dict's "noise" (pibridge extension) or standard normal from --seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pibridge.convert.profile import Profile
from pibridge.errors import PibridgeError
from pibridge.vocab import MODEL_ACTION_DIM

MSGPACK_SUFFIXES = (".msgpack", ".msg", ".bin")
FORMATS = f"an .npz of the client dict or one msgpack frame ({', '.join(MSGPACK_SUFFIXES)})"


def read_client_file(path: Path) -> dict[str, Any]:
    """The client dict stored in `path` (format by suffix, see the module docstring)."""
    from pibridge.serve.wire import WireError, unpack

    path = Path(path)
    if not path.is_file():
        raise PibridgeError(f"client file {path} does not exist", FORMATS, "check the path")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                flat = {k: z[k] for k in z.files}
        except (OSError, ValueError) as err:
            raise PibridgeError(f"client file {path} is not a readable .npz ({err})", FORMATS,
                                "save it with np.savez(path, **client_dict)") from None
        return _unflatten(flat)
    if suffix in MSGPACK_SUFFIXES:
        try:
            obs = unpack(path.read_bytes())
        except WireError as err:
            raise PibridgeError(f"client file {path}: {err}", FORMATS,
                                "write the request's bytes (openpi_client.msgpack_numpy.packb(obs))") from None
        if not isinstance(obs, Mapping):
            raise PibridgeError(f"client file {path} holds a {type(obs).__name__}", "a map (OpenPI's client dict)",
                                "pack the observation dict itself")
        return dict(obs)
    raise PibridgeError(f"client file {path} has suffix {suffix or '(none)'!r}", FORMATS, "rename or convert it")


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    obs: dict[str, Any] = {}
    for key, arr in flat.items():
        value: Any = arr
        if arr.ndim == 0 and arr.dtype.kind in "US":
            value = arr.item()  # str, or bytes (client_frame decodes those as droid_policy.py:69-72 does)
        if key.startswith("images/"):
            obs.setdefault("images", {})[key[len("images/"):]] = value
        else:
            obs[key] = value
    return obs


def read_image_file(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an image file (PIL)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), np.uint8)
    except (OSError, UnidentifiedImageError) as err:
        raise PibridgeError(f"image file {path} is not readable ({err})", "a PNG / JPEG / ... image file",
                            "check the path and format") from None


def parse_image_args(items: list[str] | None) -> dict[str, Path]:
    """["cam_high=top.png", ...] (--image CAMERA=FILE) -> {camera: path}."""
    out: dict[str, Path] = {}
    for item in items or []:
        cam, sep, file = item.partition("=")
        if not sep or not cam.strip() or not file.strip():
            raise PibridgeError(f"--image {item!r}", "CAMERA=FILE, CAMERA a camera of the profile's client dict "
                                "(e.g. cam_high, observation/image)", "pass --image CAMERA=path/to/image.png")
        out[cam.strip()] = Path(file.strip())
    return out


def client_observation(files: list[Path], profile: Profile, *, seed: int = 0, prompt: str | None = None,
                       images: Mapping[str, Path] | None = None):
    """Observation (batch = len(files)) from client files; `prompt` stands in for a client without one when the
    profile has no default; `images` {camera source: image file} replace / add those cameras in every sample."""
    from pibridge.parity.observation import Observation, validate
    from pibridge.serve.policy import client_frame, put_client_image

    cams = profile.require("cameras")
    sources = [c.source for c in cams if not c.empty]
    bad = sorted(set(images or {}) - set(sources))
    if bad:
        raise PibridgeError(f"--image for camera(s) {', '.join(bad)}", f"cameras of {profile.name}: {', '.join(sources)}",
                            "name the camera as the profile's client dict does")
    pictures = {cam: read_image_file(p) for cam, p in (images or {}).items()}
    frames = []
    for path in files:
        obs = read_client_file(path)
        for cam, img in pictures.items():
            put_client_image(obs, profile, cam, img)
        if obs.get("prompt") is None and prompt is None and profile.default_prompt is None:
            raise PibridgeError(f"client file {path} has no 'prompt' and profile {profile.name!r} no default prompt",
                                "a prompt for every sample", "pass --prompt TEXT (used where the client sends none)")
        try:
            frames.append(client_frame(obs, profile, prompt, size=None))
        except PibridgeError as err:
            raise PibridgeError(f"client file {path}: {err.found}", err.expected, err.fix) from None
    base = cams[0].slot
    present = [c.slot for c in cams if not c.empty]
    out_images, mask = {}, np.ones((len(frames), len(present)), bool)
    for i, slot in enumerate(present):
        rows = []
        for b, f in enumerate(frames):
            if slot in f.images:
                rows.append(f.images[slot])
            else:  # aloha_policy.py:64-70: zeros like the base image, masked
                rows.append(np.zeros_like(f.images[base]))
                mask[b, i] = False
        if len({r.shape for r in rows}) > 1:
            raise PibridgeError(f"camera {slot} images of sizes {sorted({r.shape for r in rows})} across the files",
                                "one image size per camera in a batch", "give files from one camera setup")
        out_images[slot] = np.stack(rows)
    horizon = profile.action_horizon
    rng = np.random.default_rng(seed)
    noise = np.concatenate([f.noise if f.noise is not None else
                            rng.standard_normal((1, horizon, MODEL_ACTION_DIM)).astype(np.float32) for f in frames])
    prompts = tuple(f.prompt if f.prompt is not None else profile.default_prompt for f in frames)
    state = np.stack([f.state for f in frames]).astype(np.float32)
    result = Observation(out_images, mask, state, prompts, noise, seed)
    validate(result)
    return result
