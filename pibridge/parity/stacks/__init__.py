"""The parity stacks, one folder each, and their registry (data only: importing this package imports no stack).

    jax/           OpenPI's model as plain JAX on the checkpoint's tree (+ OpenPI's host preprocessing); never torch
    torch/         pibridge's LeRobot-structured torch model on OUT, pibridge's model of LeRobot's preprocessing
    lerobot/       the real LeRobot package on OUT (its processors, from_pretrained), in a LeRobot environment
    transformers/  transformers' own PI0 / PI05 models on OUT, in a .venvs/tf-<version> environment
    common.py      torch helpers more than one torch-side stack uses

Each stack's capture function (`entry`) takes a pibridge.parity.request.CaptureRequest and returns (stages, meta);
pibridge.parity.capture imports it by this string only, and `pibridge parity capture --stack` / `parity run
--torch-stack` offer exactly the names registered here. A stack imports no other stack (tests/test_import_rules.py).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class StackSpec:
    name: str  # `parity capture --stack NAME`
    entry: str  # "module:function(CaptureRequest) -> (stages, meta)"
    env_modules: tuple[str, ...]  # importable in the capture's interpreter, else exit 2 naming `env_command`
    env_command: str  # what builds that environment
    reads: str  # "openpi": --openpi CKPT (the JAX side), "lerobot": --lerobot OUT
    torch_side: str | None = None  # its `parity run --torch-stack` name; None: not a torch side
    precheck: str | None = None  # "module:function(RunRequest) -> interpreter or None", run by `parity run` first
    about: str = ""


STACKS: dict[str, StackSpec] = {s.name: s for s in (
    StackSpec("jax", "pibridge.parity.stacks.jax.capture:capture_jax", ("jax",),
              "pip install 'pibridge[jax]' (make setup builds .venv with it)", "openpi",
              about="OpenPI's model in JAX on the checkpoint"),
    StackSpec("torch", "pibridge.parity.stacks.torch.capture:capture_torch", ("torch", "transformers"),
              "pip install 'pibridge[torch]' (make setup builds .venv with it)", "lerobot", torch_side="ours",
              about="pibridge's LeRobot-structured model on the installed transformers, this Python"),
    StackSpec("lerobot", "pibridge.parity.stacks.lerobot.capture:capture_lerobot_stack", ("lerobot",),
              "make lerobot-env (builds .venvs/lr-0.6.1), then run with its interpreter", "lerobot",
              torch_side="lerobot", precheck="pibridge.parity.stacks.lerobot.capture:precheck",
              about="the real LeRobot policy and processors, in its own environment: --torch-python, "
                    "$PIBRIDGE_LEROBOT_PYTHON, or the .venvs/lr-0.6.1 that `make lerobot-env` builds; tiny OUTs "
                    "handled; --precision must match OUT's runtime dtype"),
    StackSpec("transformers", "pibridge.parity.stacks.transformers.capture:capture_transformers", (),
              "python tools/tfvenv.py VERSION (builds .venvs/tf-VERSION)", "lerobot", torch_side="transformers",
              precheck="pibridge.parity.stacks.transformers.capture:precheck",
              about="transformers' own PI0 / PI05 on the release OUT was converted for (float32)"),
)}


def register_stack(spec: StackSpec) -> None:
    """Make `--stack spec.name` (and, with torch_side, `parity run --torch-stack`) run spec.entry."""
    STACKS[spec.name] = spec


def torch_sides() -> dict[str, StackSpec]:
    """`parity run --torch-stack` name -> spec."""
    return {s.torch_side: s for s in STACKS.values() if s.torch_side}


def resolve(target: str):
    """"module:function" -> the function (the only place a stack's module is imported by the core)."""
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def missing_env(spec: StackSpec) -> list[str]:
    """The env_modules this interpreter cannot import."""
    return [m for m in spec.env_modules if importlib.util.find_spec(m) is None]


def check_env(spec: StackSpec) -> None:
    """PibridgeError (exit 2) naming the command that builds the stack's environment when a module is missing."""
    from pibridge.errors import PibridgeError

    lacks = missing_env(spec)
    if lacks:
        raise PibridgeError(f"the {spec.name} stack needs {', '.join(lacks)}, which this Python ({sys.executable}) "
                            "cannot import", f"an environment for the {spec.name} stack ({', '.join(spec.env_modules)})",
                            f"build it: {spec.env_command}")
