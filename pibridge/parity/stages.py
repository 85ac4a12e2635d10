"""The closed vocabulary of parity stages and a recorder for them (numpy only; every stack uses it).

Axis legend: B batch, C cameras (OpenPI slot order base_0_rgb, left_wrist_0_rgb, right_wrist_0_rgb),
L prompt tokens, T prefix tokens (C*256 image tokens + L), S suffix tokens (pi0: 1 state token + A,
pi05: A), A action horizon, D width (D_vit SigLIP, D LLM, D_exp action expert), K kv heads, H head_dim,
K_steps Euler steps.

Stages, in execution order (indices zero-padded to two digits):
  input/image (B, C, 224, 224, 3) in [-1, 1]   input/image_mask (B, C)   input/tokens (B, L)
  input/token_mask (B, L)   input/state (B, 32)
  img/embed (B*C, 256, D_vit) patch embedding + position embedding, cameras batched b-major
  img/block{ii} (B*C, 256, D_vit)   img/out (B*C, 256, D_vit) after encoder_norm
  img/tokens (B, C*256, D) projector output   prefix/embeds (B, T, D) (image tokens then scaled text embeddings)
  prefix/mask (B, T)   llm/kv{ii}/k, llm/kv{ii}/v (B, T, K, H) (k after RoPE), llm/block{ii} (B, T, D)
  suffix/time (K_steps, B, D_exp) sine-cosine time embedding of every Euler step
  expert/step{kk}/block{ii} (B, S, D_exp)   velocity/step{kk} (B, A, 32)   actions (B, A, 32)
  actions/unnormalized (B, A, action_dim) Unnormalize alone, sliced to the native dim (written by the caller)
  actions/robot (B, A, action_dim) what the robot receives, after every output transform (JAX: OpenPI's
  AbsoluteActions + robot outputs via pibridge.hostx; torch / LeRobot: OUT's postprocessor)
A validity mask (bool, broadcastable to the stage) marks the entries a comparison may look at: rows of
padded text tokens and of masked cameras are invalid (their values are unused and differ by stack).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pibridge.errors import PibridgeError

INPUT_IMAGE = "input/image"
INPUT_IMAGE_MASK = "input/image_mask"
INPUT_TOKENS = "input/tokens"
INPUT_TOKEN_MASK = "input/token_mask"
INPUT_STATE = "input/state"
IMG_EMBED = "img/embed"
IMG_OUT = "img/out"
IMG_TOKENS = "img/tokens"
PREFIX_EMBEDS = "prefix/embeds"
PREFIX_MASK = "prefix/mask"
SUFFIX_TIME = "suffix/time"
ACTIONS = "actions"
ACTIONS_UNNORMALIZED = "actions/unnormalized"
ACTIONS_ROBOT = "actions/robot"

INPUT_STAGES = (INPUT_IMAGE, INPUT_IMAGE_MASK, INPUT_TOKENS, INPUT_TOKEN_MASK, INPUT_STATE)


def _index(i: int) -> str:
    if not 0 <= i <= 99:
        raise PibridgeError(f"stage index {i} out of range", expected="0..99 (two digits)", fix="report a bug")
    return f"{i:02d}"


def img_block(i: int) -> str:
    return f"img/block{_index(i)}"


def llm_block(i: int) -> str:
    return f"llm/block{_index(i)}"


def llm_kv(i: int, which: str) -> str:
    if which not in ("k", "v"):
        raise PibridgeError(f"kv stage part {which!r}", expected="'k' or 'v'", fix="report a bug")
    return f"llm/kv{_index(i)}/{which}"


def expert_block(step: int, i: int) -> str:
    return f"expert/step{_index(step)}/block{_index(i)}"


def velocity(step: int) -> str:
    return f"velocity/step{_index(step)}"


_FIXED = {*INPUT_STAGES, IMG_EMBED, IMG_OUT, IMG_TOKENS, PREFIX_EMBEDS, PREFIX_MASK, SUFFIX_TIME, ACTIONS,
          ACTIONS_UNNORMALIZED, ACTIONS_ROBOT}
_INDEXED = re.compile(r"img/block\d\d|llm/block\d\d|llm/kv\d\d/[kv]|expert/step\d\d/block\d\d|velocity/step\d\d")


def is_stage_name(name: str) -> bool:
    """True for a name of the vocabulary above (exact fixed names or the indexed patterns)."""
    return name in _FIXED or _INDEXED.fullmatch(name) is not None


def stage_order(vit_depth: int, llm_depth: int, num_steps: int, *, unnormalized: bool = False) -> list[str]:
    """Every stage a full sample records, in execution order."""
    names = [*INPUT_STAGES, IMG_EMBED, *(img_block(i) for i in range(vit_depth)), IMG_OUT, IMG_TOKENS,
             PREFIX_EMBEDS, PREFIX_MASK]
    for i in range(llm_depth):
        names += [llm_kv(i, "k"), llm_kv(i, "v"), llm_block(i)]
    names.append(SUFFIX_TIME)
    for k in range(num_steps):
        names += [expert_block(k, i) for i in range(llm_depth)] + [velocity(k)]
    names.append(ACTIONS)
    if unnormalized:
        names += [ACTIONS_UNNORMALIZED, ACTIONS_ROBOT]
    return names


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(shape[::-1], target[::-1]))


@dataclass(frozen=True)
class Stage:
    """One recorded stage: fp32 value, optional validity mask broadcastable to it, wall time in seconds."""

    name: str
    value: np.ndarray
    valid: np.ndarray | None
    seconds: float

    def valid_full(self) -> np.ndarray:
        """The validity mask broadcast to the value's shape (all True when none was given)."""
        if self.valid is None:
            return np.ones(self.value.shape, dtype=bool)
        return np.broadcast_to(self.valid, self.value.shape)


class StageRecorder:
    """Ordered name -> Stage store. Names must belong to the vocabulary; each name is recorded once."""

    def __init__(self, on_record=None) -> None:
        self._stages: dict[str, Stage] = {}
        self._on_record = on_record  # called with each recorded name (progress display)

    def record(self, name: str, value, valid=None, seconds: float = 0.0) -> None:
        if not is_stage_name(name):
            raise PibridgeError(f"unknown stage name {name!r}", expected="a name from pibridge.parity.stages",
                                fix="use the builder functions of pibridge.parity.stages")
        if name in self._stages:
            raise PibridgeError(f"stage {name!r} recorded twice", expected="each stage once per run",
                                fix="use a fresh StageRecorder for every run")
        array = np.array(value, dtype=np.float32)  # copies: later mutation of the source cannot leak in
        mask = None if valid is None else np.array(valid, dtype=bool)
        if mask is not None and not _broadcasts_to(mask.shape, array.shape):
            raise PibridgeError(f"validity mask {mask.shape} of stage {name!r}",
                                expected=f"a shape broadcastable to {array.shape}", fix="report a bug")
        self._stages[name] = Stage(name, array, mask, float(seconds))
        if self._on_record is not None:
            self._on_record(name)

    def __getitem__(self, name: str) -> Stage:
        return self._stages[name]

    def __contains__(self, name: object) -> bool:
        return name in self._stages

    def __len__(self) -> int:
        return len(self._stages)

    def __iter__(self) -> Iterator[Stage]:
        return iter(self._stages.values())

    @property
    def names(self) -> list[str]:
        """Recorded names in execution (recording) order."""
        return list(self._stages)

    def arrays(self) -> dict[str, np.ndarray]:
        return {n: s.value for n, s in self._stages.items()}

    def masks(self) -> dict[str, np.ndarray]:
        """Validity masks as given (not broadcast); stages recorded without one are absent."""
        return {n: s.valid for n, s in self._stages.items() if s.valid is not None}

    def timings(self) -> dict[str, float]:
        return {n: s.seconds for n, s in self._stages.items()}
