"""Test driver, run in a LeRobot venv: `python capture_many.py OUT OBS TRACE [OUT OBS TRACE ...]`. One process
(LeRobot imported once) runs pibridge.parity.stacks.lerobot.capture.capture_lerobot (from_pretrained +
make_pre_post_processors + predict_action_chunk + postprocessor) for each triple, with the tiny-variant patch, and
writes each trace."""

import sys
from pathlib import Path

from pibridge.parity.stacks.lerobot.tiny import apply

apply()
from pibridge.parity.stacks.lerobot.capture import capture_lerobot  # noqa: E402
from pibridge.parity.trace import write_trace  # noqa: E402

args = sys.argv[1:]
assert args and len(args) % 3 == 0, "expected OUT OBS TRACE triples"
for i in range(0, len(args), 3):
    r = capture_lerobot(Path(args[i]), Path(args[i + 1]))
    write_trace(Path(args[i + 2]), r.stages, r.meta)
    print("captured", args[i + 2], flush=True)
