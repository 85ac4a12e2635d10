"""Every command line README.md shows parses (issue 16): each indented `pibridge ...` line (continuations joined,
`# comments` dropped) goes through the real click command tree's parser (types, choices, required options, no
unknown or repeated flags) without running; the `make` targets it names exist; `check` and `fixes` are documented.
Each of those lines also runs, with the tiny variant substituted, in test_readme_runs.py."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from pibridge.cli import _refuse_repeats, command

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _command_lines(text: str) -> list[str]:
    lines, cur = [], ""
    for raw in text.splitlines():
        if not raw.startswith("    ") and not cur:
            continue
        line = raw.strip()
        cur = f"{cur} {line}".strip() if cur else line
        if cur.endswith("\\"):
            cur = cur[:-1].rstrip()
            continue
        if re.match(r"(\S*/)?pibridge ", cur):
            lines.append(cur.split(" # ")[0].split("   #")[0].strip())
        cur = ""
    return lines


LINES = _command_lines(README)


def test_readme_shows_every_command():
    shown = {tuple(shlex.split(line)[1:3]) for line in LINES}
    firsts = {s[0] for s in shown}
    assert {"synth", "inspect", "convert", "check", "fixes", "parity"} <= firsts, firsts
    assert {("parity", n) for n in ("obs", "run", "capture", "compare")} <= shown
    assert len(LINES) >= 15
    for word in ("`check OUT`", "`fixes`", "I trained with OpenPI, I want LeRobot"):
        assert word in README


@pytest.mark.parametrize("line", LINES)
def test_readme_command_parses(line):
    args = shlex.split(line)[1:]
    cmd = command()
    path = []
    while hasattr(cmd, "commands"):
        path.append(args[0])
        cmd = cmd.commands[args.pop(0)]
    _refuse_repeats(cmd, args)
    ctx = cmd.make_context(" ".join(path), list(args))  # raises on an unknown flag, a bad choice or type
    assert ctx.params


def test_make_targets_named_in_readme_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in sorted(set(re.findall(r"`make ([a-z-]+)", README))):
        assert re.search(rf"^{target}:", makefile, re.M), target
