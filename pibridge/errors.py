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
