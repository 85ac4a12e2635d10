"""One error type for bad input: what was found, what was expected, what to do. The CLI exits 2 on it."""

from __future__ import annotations


class PibridgeError(Exception):
    """Bad input or environment. Rendered as one message (no traceback unless --debug), exit code 2."""

    exit_code = 2

    def __init__(self, found: str, expected: str = "", fix: str = ""):
        self.found, self.expected, self.fix = found, expected, fix
        super().__init__(self.render())

    def render(self) -> str:
        lines = [self.found]
        if self.expected:
            lines.append(f"expected: {self.expected}")
        if self.fix:
            lines.append(f"what to do: {self.fix}")
        return "\n".join(lines)


class ParityFailure(PibridgeError):
    """A tolerance was broken. Exit code 1."""

    exit_code = 1


# An optional dependency's top-level module -> how to get it. One table for the CLI and the capture subprocesses.
EXTRAS = {"jax": "jax", "jaxlib": "jax", "flax": "jax", "orbax": "jax", "optax": "jax", "chex": "jax",
          "torch": "torch", "transformers": "torch", "tokenizers": "torch", "huggingface_hub": "torch",
          "websockets": "serve", "msgpack": "serve"}
LEROBOT_HINT = ("run it with the interpreter of a LeRobot environment: `make lerobot-env` builds .venvs/lr-0.6.1, or "
                "pass --torch-python / set PIBRIDGE_LEROBOT_PYTHON")


def missing_dependency(err: ImportError, what: str = "this command", lerobot_env: bool = False) -> PibridgeError | None:
    """A ModuleNotFoundError of an optional dependency as bad input naming the extra to install; None for any other
    import error (a bug or a broken install: keep its traceback). lerobot_env: the code runs in a LeRobot
    environment (the lerobot stack), whose torch / transformers come with LeRobot."""
    name = (getattr(err, "name", None) or "").split(".")[0]
    if not isinstance(err, ModuleNotFoundError) or not name:
        return None
    if name == "lerobot" or (lerobot_env and name in EXTRAS):
        return PibridgeError(f"{what} needs LeRobot ({name} is not installed in this Python, {_python()})",
                             "the real LeRobot (lerobot[pi]) importable", LEROBOT_HINT)
    extra = EXTRAS.get(name)
    if extra is None:
        return None
    return PibridgeError(f"{what} needs {name}, which is not installed in this Python ({_python()})",
                         f"pibridge's [{extra}] extra installed",
                         f"pip install 'pibridge[{extra}]' (or 'pibridge[all]'), or run with an interpreter that has it")


def _python() -> str:
    import sys

    return sys.executable
