"""Test driver, run in a LeRobot venv: `python capture_many.py OUT OBS TRACE [OUT OBS TRACE ...]`. One process
(LeRobot imported once) runs pibridge.parity.lerobot_stack.capture_lerobot (from_pretrained +
make_pre_post_processors + predict_action_chunk + postprocessor) for each triple, with the tiny-variant patch."""

import sys
from pathlib import Path

from pibridge.parity.lerobot_tiny import apply

apply()
from pibridge.parity.lerobot_stack import capture_lerobot  # noqa: E402

args = sys.argv[1:]
assert args and len(args) % 3 == 0, "expected OUT OBS TRACE triples"
for i in range(0, len(args), 3):
    capture_lerobot(Path(args[i]), Path(args[i + 1]), Path(args[i + 2]))
    print("captured", args[i + 2], flush=True)
