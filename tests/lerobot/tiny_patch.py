"""Test-only preload (`python -m pibridge.parity.lerobot_stack --preload tests/lerobot/tiny_patch.py ...`,
PIBRIDGE_LEROBOT_PRELOAD): applies pibridge.parity.lerobot_tiny, which lets the real LeRobot build the tiny variants
(its docstring lists every value it changes)."""

from pibridge.parity.lerobot_tiny import apply

apply()
