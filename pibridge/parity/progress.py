"""Progress of a long capture on a terminal: per stack and phase (load, preprocess, vision + prefix, denoise step
k/N), one line on stderr rewritten in place. Quiet when stderr is not a terminal, unless PIBRIDGE_PROGRESS=1 asks
for machine-readable lines (`pibridge-progress: ...`), which `parity run` sets for its capture subprocesses and
renders on its own terminal."""

from __future__ import annotations

import os
import re
import sys
import time

ENV = "PIBRIDGE_PROGRESS"
PREFIX = "pibridge-progress: "
_STEP = re.compile(r"velocity/step(\d+)$")


class Progress:
    def __init__(self, stack: str, steps: int, stream=None):
        self.stack, self.steps, self.stream = stack, steps, stream or sys.stderr
        self.relay = os.environ.get(ENV) == "1"
        self.enabled = self.relay or _isatty(self.stream)
        self.t0 = time.perf_counter()
        self._phase = ""

    def phase(self, text: str) -> None:
        if not self.enabled or text == self._phase:
            return
        self._phase = text
        line = f"{self.stack}: {text} ({time.perf_counter() - self.t0:.0f} s)"
        if self.relay:
            print(PREFIX + line, file=self.stream, flush=True)
        else:
            print(f"\r\x1b[2K{line}", end="", file=self.stream, flush=True)

    def on_record(self, name: str) -> None:
        """StageRecorder callback: the phase a just-recorded stage ends or starts."""
        if name.startswith("img/embed"):
            self.phase("vision tower and prefix (LLM)")
        elif name == "suffix/time" or name.startswith("expert/step00/"):
            self.phase(f"denoise step 1/{self.steps}")
        elif m := _STEP.match(name):
            k = int(m.group(1)) + 1
            self.phase(f"denoise step {min(k + 1, self.steps)}/{self.steps}" if k < self.steps else "postprocess")

    def done(self) -> None:
        if self.enabled and not self.relay and self._phase:
            print("\r\x1b[2K", end="", file=self.stream, flush=True)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
