"""Policy profiles: what the weights of a pi0 / pi05 checkpoint do not say.

A profile (configs/profiles/<name>.json) mirrors one OpenPI TrainConfig at commit
15a9616a00943ada6c20a0f158e3adb39df2ccac: action horizon, prompt length, state format, native
dims, which robot camera feeds each OpenPI image slot, delta-action joints, norm type, asset id,
default prompt. Each JSON field cites its upstream file:line in "sources" (checked by
tests/test_profiles.py against an OpenPI checkout).

A null value means "unknown": it must be given by the CLI flag that `Profile.require` names;
nothing is filled in silently. pi0_base / pi05_base (the released base checkpoints) have no
OpenPI TrainConfig: only Pi0Config's defaults are known for them.

Pure data + json: imports neither jax nor torch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pibridge.configs import CONFIG_DIR
from pibridge.errors import PibridgeError
from pibridge.vocab import OPENPI_SLOTS

PROFILE_DIR = CONFIG_DIR / "profiles"

MODELS = ("pi0", "pi05")
NORMS = ("zscore", "quantile")
EMPTY = "empty"

# The CLI flag that supplies each field when a profile leaves it null (Profile.require's default).
FLAGS: dict[str, str] = {
    "action_horizon": "--action-horizon",
    "max_token_len": "--max-token-len",
    "discrete_state_input": "--discrete-state-input/--no-discrete-state-input",
    "state_dim": "--state-dim",
    "action_dim": "--action-dim",
    "cameras": "--camera-map",
    "delta_action_mask": "--delta-action-mask",
    "asset_id": "--asset-id",
    "default_prompt": "--default-prompt",
    "adapt_to_pi": "--adapt-to-pi/--no-adapt-to-pi",
    "norm": "--norm",
    "robot": "--robot",
    "policy_metadata": "--policy-metadata",
}
ROBOTS = ("aloha", "droid", "libero", "none")  # the robot transforms of policies/*_policy.py (pibridge.hostx)


@dataclass(frozen=True)
class CameraSlot:
    """One OpenPI image slot: the robot camera that feeds it, or empty (zeros image, image_mask False)."""

    slot: str
    source: str | None
    empty: bool


@dataclass(frozen=True)
class Profile:
    name: str
    model: str  # "pi0" | "pi05"
    action_horizon: int
    max_token_len: int
    discrete_state_input: bool  # pi05 format: discretised state inside the prompt
    state_dim: int | None  # native (before padding to 32)
    action_dim: int | None  # native: what the robot gets back after the output transform
    cameras: tuple[CameraSlot, ...] | None  # one per OPENPI_SLOTS entry, in OPENPI_SLOTS order
    delta_action_mask: tuple[bool, ...] | None  # () = no delta actions; None = unknown
    norm: str  # "zscore" | "quantile"
    asset_id: str | None  # assets/<asset_id>/norm_stats.json (may be nested: a/b)
    default_prompt: str | None
    adapt_to_pi: bool | None  # aloha joint flip + gripper conversion (aloha_policy.py)
    robot: str | None = None  # robot family (ROBOTS): AlohaInputs / DroidInputs / LiberoInputs; None = unknown
    openpi_config: str | None = None  # the upstream TrainConfig name, None for base profiles
    # TrainConfig.policy_metadata (training/config.py:529): what OpenPI's server sends first (serve_policy.py:101-113)
    policy_metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)
    note: str = ""
    overrides: tuple[str, ...] = ()  # fields changed by flags (recorded in provenance)
    sources: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def pi05(self) -> bool:
        return self.model == "pi05"

    def require(self, field_name: str, flag: str | None = None) -> Any:
        """The field's value; a PibridgeError naming the flag that supplies it when the profile leaves it null."""
        value = getattr(self, field_name)
        if value is None:
            flag = flag or FLAGS.get(field_name, f"--{field_name.replace('_', '-')}")
            raise PibridgeError(
                f"profile {self.name!r} does not know {field_name}",
                expected=f"a value for {field_name} (OpenPI has no training config fixing it for {self.name})",
                fix=f"pass {flag}",
            )
        return value

    def with_overrides(self, **flags: Any) -> Profile:
        """A new profile with flag values replacing the profile's; a None value means 'flag not given'."""
        unknown = sorted(set(flags) - set(FLAGS))
        if unknown:
            raise PibridgeError(f"unknown profile field(s) {', '.join(unknown)}",
                                expected=f"one of {', '.join(FLAGS)}", fix="check the flag names")
        given = {k: v for k, v in flags.items() if v is not None}
        if "cameras" in given:
            given["cameras"] = _override_cameras(self, given["cameras"])
        if "delta_action_mask" in given:
            given["delta_action_mask"] = parse_delta_mask(given["delta_action_mask"])
        if "policy_metadata" in given:
            given["policy_metadata"] = parse_policy_metadata(given["policy_metadata"])
        changed = tuple(k for k, v in given.items() if getattr(self, k) != v)
        new = dataclasses.replace(self, **given, overrides=tuple(dict.fromkeys(self.overrides + changed)))
        _validate(new)
        return new

    def check_model(self, pi05: bool) -> None:
        """Raise when the checkpoint's detected model (pi0 / pi05) is not the profile's."""
        found = "pi05" if pi05 else "pi0"
        if found != self.model:
            raise PibridgeError(f"the checkpoint is a {found} model but profile {self.name!r} is for {self.model}",
                                expected=f"a {found} profile, e.g. {found}_base or {found}_droid",
                                fix="pass --profile with a profile of the checkpoint's model")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the profile file format (plus 'overrides'); inverse of profile_from_dict."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.cameras is not None:
            out["cameras"] = [{"slot": c.slot, "source": EMPTY if c.empty else c.source} for c in self.cameras]
        if self.delta_action_mask is not None:
            out["delta_action_mask"] = list(self.delta_action_mask)
        out["overrides"] = list(self.overrides)
        out["sources"] = dict(self.sources)
        return out

    def to_json(self) -> str:
        """The profile as a JSON string, for provenance."""
        return json.dumps(self.to_dict(), indent=2)


KNOWN_FIELDS = tuple(f.name for f in dataclasses.fields(Profile))  # the profile file format (= to_dict's keys)
# Fields a profile file must name (null allowed where FLAGS gives a flag for it); the rest have defaults.
REQUIRED_FIELDS = ("name", "model", "action_horizon", "max_token_len", "discrete_state_input", "state_dim",
                   "action_dim", "norm", "asset_id", "default_prompt", "adapt_to_pi")


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


def serving_profile_names() -> list[str]:
    """The shipped profiles that name an OpenPI TrainConfig (`openpi_config`; the base ones, pi0_base / pi05_base,
    name none: their serving transforms come from flags)."""
    return [n for n in profile_names() if json.loads((PROFILE_DIR / f"{n}.json").read_text()).get("openpi_config")]


def load_profile(name_or_path: str | Path) -> Profile:
    """A profile file (an existing file, or any value ending in .json: a user's own training config, in the
    configs/profiles/*.json format), else configs/profiles/<name>.json. PibridgeError on an unknown name, a
    missing or unreadable file, or a file profile_from_dict refuses."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file() or text.endswith(".json"):
        return _load_file(path)
    shipped = PROFILE_DIR / f"{text}.json"
    if not shipped.is_file():
        raise PibridgeError(f"unknown profile {text!r}", expected=f"one of {', '.join(profile_names())}, or a "
                            "profile file path (.json)",
                            fix="pass --profile with one of those names (and flags for what differs), or "
                                "--profile path/to/profile.json")
    return profile_from_dict(json.loads(shipped.read_text()))


def _load_file(path: Path) -> Profile:
    fmt = f"a JSON object in the format of {PROFILE_DIR}/*.json"
    if not path.is_file():
        raise PibridgeError(f"profile file {path} does not exist", fmt,
                            f"check the path, or pass a shipped profile name: {', '.join(profile_names())}")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PibridgeError(f"profile file {path} is not readable JSON ({type(err).__name__}: {err})", fmt,
                            "fix the file (copy a shipped profile and edit it)") from None
    if not isinstance(raw, dict):
        raise PibridgeError(f"profile file {path} holds a JSON {type(raw).__name__}", fmt,
                            "fix the file (copy a shipped profile and edit it)")
    return profile_from_dict(raw, source=str(path))


def profile_from_dict(raw: Mapping[str, Any], source: str | None = None) -> Profile:
    """Build and validate a Profile from the JSON format (a profile file or a provenance record). Unknown or
    missing fields are a PibridgeError naming them (source: the file, for the message)."""
    where = f"profile file {source}" if source else f"profile {raw.get('name')!r}"
    fix = "fix the profile file (field names and formats as in a shipped one, e.g. pi05_droid.json)"
    unknown = sorted(set(raw) - set(KNOWN_FIELDS))
    if unknown:
        raise PibridgeError(f"{where} has unknown field(s) {', '.join(unknown)}",
                            f"fields among {', '.join(KNOWN_FIELDS)}", fix)
    missing = [k for k in REQUIRED_FIELDS if k not in raw]
    if missing:
        raise PibridgeError(f"{where} lacks the required field(s) {', '.join(missing)}",
                            f"every one of {', '.join(REQUIRED_FIELDS)} (null where unknown: a CLI flag then "
                            "supplies it)", fix)
    cams = raw.get("cameras")
    mask = raw.get("delta_action_mask")
    try:
        cameras = None if cams is None else tuple(_camera(c["slot"], c["source"]) for c in cams)
    except (TypeError, KeyError):
        raise PibridgeError(f"{where}: cameras {cams!r} is not a list of {{slot, source}} objects",
                            '[{"slot": "base_0_rgb", "source": CAMERA}, ...] (source "empty" for an empty slot)',
                            fix) from None
    prof = Profile(
        name=raw["name"], model=raw["model"], action_horizon=raw["action_horizon"],
        max_token_len=raw["max_token_len"], discrete_state_input=raw["discrete_state_input"],
        state_dim=raw["state_dim"], action_dim=raw["action_dim"], cameras=cameras,
        delta_action_mask=None if mask is None else _file_mask(mask, where, fix),
        norm=raw["norm"], asset_id=raw["asset_id"], default_prompt=raw["default_prompt"],
        adapt_to_pi=raw["adapt_to_pi"], robot=raw.get("robot"), openpi_config=raw.get("openpi_config"),
        policy_metadata=dict(raw.get("policy_metadata") or {}), note=raw.get("note", ""),
        overrides=tuple(raw.get("overrides", ())), sources=raw.get("sources", {}),
    )
    _validate(prof, source)
    return prof


def _file_mask(value: Any, where: str, fix: str) -> tuple[bool, ...]:
    """A file's delta_action_mask: a list of booleans, or make_bool_mask notation as a string ("6,-1")."""
    if isinstance(value, str):
        return parse_delta_mask(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, bool) for v in value):
        return tuple(value)
    raise PibridgeError(f"{where}: delta_action_mask {value!r} is neither booleans nor a run-length string",
                        'a list of true / false, one per action dim, or OpenPI\'s make_bool_mask notation "6,-1"',
                        fix)


def parse_camera_map(text: str) -> dict[str, str | None]:
    """'base_0_rgb=top,left_wrist_0_rgb=wrist,right_wrist_0_rgb=empty' -> {slot: camera or None (empty)}."""
    out: dict[str, str | None] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        slot, sep, cam = item.partition("=")
        if not sep or not slot.strip() or not cam.strip():
            raise PibridgeError(f"bad camera map entry {item!r}", expected="SLOT=CAMERA or SLOT=empty",
                                fix=f"use slots {', '.join(OPENPI_SLOTS)}, e.g. base_0_rgb=top,right_wrist_0_rgb=empty")
        out[slot.strip()] = None if cam.strip() == EMPTY else cam.strip()
    return out


def parse_delta_mask(value: Any) -> tuple[bool, ...]:
    """Delta-action mask from bools, or OpenPI's make_bool_mask notation '6,-1,6,-1' (transforms.py:433-452;
    n > 0: n True, n < 0: |n| False), or 'none' for no delta actions."""
    if isinstance(value, str):
        if value.strip().lower() in ("none", ""):
            return ()
        try:
            dims = [int(s) for s in value.split(",")]
        except ValueError:
            raise PibridgeError(f"bad delta-action mask {value!r}", expected="e.g. '6,-1,6,-1' or 'none'",
                                fix="give run lengths: n>0 for n delta joints, -n for n absolute ones") from None
        return tuple(d > 0 for d in dims for _ in range(abs(d)))
    return tuple(bool(v) for v in value)


def parse_policy_metadata(value: Any) -> dict[str, Any]:
    """--policy-metadata: a JSON object (TrainConfig.policy_metadata, e.g. ALOHA's {"reset_pose": [0, -1.5, 1.5, 0,
    0, 0]}, training/config.py:570), or a dict."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as err:
            raise PibridgeError(f"--policy-metadata {value!r} is not JSON ({err})", "a JSON object",
                                "e.g. --policy-metadata '{\"reset_pose\": [0, -1.5, 1.5, 0, 0, 0]}'") from None
    if not isinstance(value, Mapping):
        raise PibridgeError(f"--policy-metadata is a {type(value).__name__}", "a JSON object (what OpenPI's server "
                            "sends first)", "wrap the values in {...}")
    return dict(value)


def _camera(slot: str, source: str | None) -> CameraSlot:
    empty = source is None or source == EMPTY
    return CameraSlot(slot=slot, source=None if empty else source, empty=empty)


def _override_cameras(prof: Profile, value: Any) -> tuple[CameraSlot, ...]:
    """Cameras from a camera map (str or {slot: camera|None}) or CameraSlots. A profile without cameras needs
    all three slots named; a known profile keeps the slots the map does not name."""
    if isinstance(value, (tuple, list)) and all(isinstance(c, CameraSlot) for c in value):
        return tuple(value)
    mapping = parse_camera_map(value) if isinstance(value, str) else dict(value)
    bad = sorted(set(mapping) - set(OPENPI_SLOTS))
    if bad:
        raise PibridgeError(f"unknown image slot(s) {', '.join(bad)} in the camera map",
                            expected=f"slots {', '.join(OPENPI_SLOTS)}", fix="name OpenPI slots on the left of '='")
    if prof.cameras is None and set(mapping) != set(OPENPI_SLOTS):
        missing = ", ".join(s for s in OPENPI_SLOTS if s not in mapping)
        raise PibridgeError(f"profile {prof.name!r} has no camera slots and the camera map leaves out {missing}",
                            expected=f"every slot named: {', '.join(OPENPI_SLOTS)}",
                            fix="add SLOT=CAMERA or SLOT=empty for each slot to --camera-map")
    old = {c.slot: c for c in prof.cameras or ()}
    return tuple(_camera(s, mapping[s]) if s in mapping else old[s] for s in OPENPI_SLOTS)


def _validate(p: Profile, source: str | None = None) -> None:
    problems = []
    if p.model not in MODELS:
        problems.append(f"model {p.model!r} not in {MODELS}")
    if p.robot is not None and p.robot not in ROBOTS:
        problems.append(f"unknown robot family: robot {p.robot!r} not in {', '.join(ROBOTS)}")
    if p.norm not in NORMS:
        problems.append(f"norm {p.norm!r} not in {NORMS}")
    if p.discrete_state_input and p.model != "pi05":
        problems.append("discrete_state_input needs a pi05 model (pi0 has no discrete-state prompt)")
    for name in ("action_horizon", "max_token_len", "state_dim", "action_dim"):
        v = getattr(p, name)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            problems.append(f"{name} must be a positive integer, got {v!r}")
    if p.cameras is not None and tuple(c.slot for c in p.cameras) != OPENPI_SLOTS:
        problems.append(f"cameras must list the slots {OPENPI_SLOTS} in order")
    if p.cameras is not None and all(c.empty for c in p.cameras):
        problems.append("every camera slot is empty")
    # One entry per native action dim (what the robot gets back). OpenPI's DeltaActions applies the first len(mask)
    # dims and leaves the rest absolute (transforms.py:203-244), so a shorter mask means "pad with False": asking
    # for it spelled out keeps a miscounted mask from being silently read that way.
    if p.delta_action_mask and p.action_dim is not None and len(p.delta_action_mask) != p.action_dim:
        problems.append(f"delta_action_mask has {len(p.delta_action_mask)} entries but action_dim is {p.action_dim} "
                        "(give one entry per action dim; pad with -n, e.g. 6,-1 for a 7-dim arm)")
    if problems:
        where = f"profile file {source}" if source else f"profile {p.name!r}"
        raise PibridgeError(f"{where} is inconsistent: " + "; ".join(problems),
                            expected="values OpenPI accepts", fix="fix the profile file or the flags")
