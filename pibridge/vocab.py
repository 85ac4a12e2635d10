"""The vocabulary, named once: dtype spellings, the exit-code table, default targets, and what several modules
spell (OpenPI's image slots, the model's padded action width, LeRobot's float32-kept selectors).

dtype: `bfloat16` is canonical (its name in torch, JAX, ml_dtypes, LeRobot's config.json `dtype` and OpenPI's
configs, so what a user types matches what the files say); `bf16` (and `fp32` / `float`) are accepted everywhere.
Inside the parity package a capture's precision *policy* keeps its short token ("bf16", PRECISION_TOKENS): it
names a policy (which tensors a stack keeps in float32), recorded in traces, tolerances.json and allowance.json.
"""

from __future__ import annotations

from pibridge.errors import PibridgeError

DTYPES = ("float32", "bfloat16")  # canonical spellings, in help order
DTYPE_ALIASES = {"float32": "float32", "fp32": "float32", "f32": "float32", "float": "float32",
                 "bfloat16": "bfloat16", "bf16": "bfloat16"}
PRECISION_TOKENS = {"float32": "float32", "bfloat16": "bf16"}  # canonical dtype -> parity precision policy

DEFAULT_LEROBOT_VERSION = "0.6.1"

# OpenPI's image slots, in model order (src/openpi/models/model.py:39-43 IMAGE_KEYS).
OPENPI_SLOTS: tuple[str, ...] = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
# The model's padded state / action width: OpenPI's action_dim (models/pi0_config.py:24-25; PadStatesAndActions),
# LeRobot's max_state_dim / max_action_dim (PI0Config / PI05Config).
MODEL_ACTION_DIM = 32
# With config.dtype="bfloat16" LeRobot casts PaliGemmaWithExpertModel to bf16, then moves parameters whose name
# (relative to that module) contains one of these back to fp32: lerobot 0.6.1 policies/pi05/modeling_pi05.py:244-265
# (pi0/modeling_pi0.py:247-268; identical list in 0.5.1 and 0.6.0). The flow-matching heads live outside that module
# and stay fp32. ("model.norm" also matches "language_model.norm".)
KEEP_FP32_SELECTORS = ("vision_tower", "multi_modal_projector", "input_layernorm", "post_attention_layernorm",
                       "model.norm")

EXIT_CODES = (
    (0, "success; parity within every tolerance"),
    (1, "parity failed (a stage broke its tolerance); `check`: the runtime is unsafe (--strict: or a warning)"),
    (2, "bad input or environment (one message: what was found, expected, what to do)"),
    (130, "interrupted by Ctrl-C (SIGINT); temporaries removed"),
    (143, "terminated (SIGTERM); temporaries removed"),
)


def canonical_dtype(value: str, flag: str = "--dtype") -> str:
    """'bf16' / 'bfloat16' / 'float32' / 'fp32' -> 'bfloat16' or 'float32'; anything else is bad input."""
    key = str(value).strip().lower()
    if key not in DTYPE_ALIASES:
        raise PibridgeError(f"{flag} {value!r}", f"one of {', '.join(DTYPES)} (bf16 is accepted for bfloat16)",
                            f"pass {flag} float32 or {flag} bfloat16")
    return DTYPE_ALIASES[key]


def precision_token(value: str, flag: str = "--precision") -> str:
    """A dtype in any accepted spelling -> the parity precision policy token ('float32' or 'bf16')."""
    return PRECISION_TOKENS[canonical_dtype(value, flag)]


def exit_code_table() -> str:
    return "\n".join(f"{code:>4}  {what}" for code, what in EXIT_CODES)
