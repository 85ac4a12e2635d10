"""Test-only preload (PIBRIDGE_LEROBOT_PRELOAD=tests/lerobot/tiny_patch.py, or run first by a test script):
applies pibridge.parity.stacks.lerobot.tiny, which lets the real LeRobot build the tiny variants (its docstring lists
every value it changes)."""

from pibridge.parity.stacks.lerobot.tiny import apply

apply()
