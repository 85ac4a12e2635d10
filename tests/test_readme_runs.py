"""Every `pibridge ...` command line README.md shows RUNS (issue 16), not only parses (test_readme.py): each line,
with the tiny variant and the test tokenizer substituted, runs through the real CLI in a fresh directory in which
the placeholders it reads (CKPT, OUT, OBS.safetensors, REF / TRACE / INPUTS / CAND / BASE.safetensors) are files
made here by the same commands, and the ones it writes are left to it. A line must exit 0, or 1 where the README
says the result may be a parity failure (a tiny bf16 policy judged against float32 tolerances), and must write
what it names. Full-size lines are the same lines with the variant not substituted (bench/)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from test_readme import LINES

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "tests" / "data" / "test_spm.model"
LEROBOT_PY = ROOT / ".venvs" / "lr-0.6.1" / "bin" / "python"

# README spells full-size names; the gate runs the tiny twins (the only substitutions made)
SUBSTITUTE = {"--variant pi05 ": "--variant tiny-pi05 ", "paligemma.model": str(TOKENIZER),
              "pibridge/configs/tolerances.json": str(ROOT / "pibridge" / "configs" / "tolerances.json")}
# what each command writes (placeholder tokens that must not be pre-made); everything else it names is an input
WRITES = {("synth",): {0}, ("convert",): {1}, ("parity", "obs"): {0}, ("parity", "capture"): {"--out", "--save-inputs"}}
PLACEHOLDERS = ("CKPT", "OUT", "OBS.safetensors", "REF.safetensors", "TRACE.safetensors", "INPUTS.safetensors",
                "CAND.safetensors", "BASE.safetensors")


def _pibridge(args: list[str], cwd: Path, python: str | Path = sys.executable) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "160"}
    return subprocess.run([str(python), "-m", "pibridge.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _ok(proc: subprocess.CompletedProcess, what: str) -> None:
    assert proc.returncode == 0, f"{what} exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """The inputs README's lines name, made by pibridge's own commands on a tiny pi05 (droid profile, as README)."""
    d = tmp_path_factory.mktemp("readme-inputs")
    steps = [
        ["synth", "CKPT", "--variant", "tiny-pi05", "--profile", "pi05_droid", "--asset-id", "droid"],
        ["convert", "CKPT", "OUT", "--profile", "pi05_droid", "--camera-map", "base_0_rgb=top,left_wrist_0_rgb=wrist",
         "--tokenizer", str(TOKENIZER), "--allow-tiny"],
        ["parity", "obs", "OBS.safetensors", "--profile", "pi05_droid"],
        ["parity", "capture", "--stack", "jax", "--openpi", "CKPT", "--profile", "OUT", "--obs", "OBS.safetensors",
         "--out", "REF.safetensors", "--save-inputs", "INPUTS.safetensors"],
        ["parity", "capture", "--stack", "torch", "--lerobot", "OUT", "--obs", "OBS.safetensors",
         "--out", "TRACE.safetensors", "--shared-inputs", "INPUTS.safetensors"],
        # the bf16 allowance: CAND (the policy in bf16) against REF (float32) and BASE (OpenPI's own bf16)
        ["parity", "capture", "--stack", "jax", "--openpi", "CKPT", "--profile", "OUT", "--obs", "OBS.safetensors",
         "--precision", "bfloat16", "--out", "BASE.safetensors"],
        ["parity", "capture", "--stack", "torch", "--lerobot", "OUT", "--obs", "OBS.safetensors", "--precision",
         "bfloat16", "--out", "CAND.safetensors", "--shared-inputs", "INPUTS.safetensors"],
    ]
    for args in steps:
        _ok(_pibridge(args, d), "pibridge " + " ".join(args))
    return d


def _command_path(args: list[str]) -> tuple[str, ...]:
    return tuple(args[:2]) if args[0] == "parity" else (args[0],)


def _written(args: list[str]) -> set[str]:
    """The placeholder tokens this command line writes (positional index or option name -> its value)."""
    path = _command_path(args)
    rest = args[len(path):]
    spec = WRITES.get(path, set())
    positional = [a for i, a in enumerate(rest) if not a.startswith("-") and (i == 0 or not rest[i - 1].startswith("--")
                                                                           or rest[i - 1] in ("--force", "--dry-run"))]
    out = {positional[i] for i in spec if isinstance(i, int) and i < len(positional)}
    out |= {rest[i + 1] for i, a in enumerate(rest[:-1]) if a in spec}
    return out


def _tiny(line: str) -> str:
    for full, tiny in SUBSTITUTE.items():
        line = line.replace(full, tiny)
    return line


# `pibridge serve` runs until Ctrl-C: tests/test_serve.py runs README's serve lines (and stops them, exit 130)
RUNS = [x for x in LINES if not x.startswith("pibridge serve ")]


@pytest.mark.parametrize("line", RUNS)
def test_readme_command_runs(line, made, tmp_path):
    words = shlex.split(_tiny(line))
    python: str | Path = sys.executable
    if words[0] != "pibridge" or words[1] == "check":  # README: `check` runs in the LeRobot environment
        if not LEROBOT_PY.exists():
            pytest.skip("the LeRobot environment is not built (make lerobot-env)")
        python = LEROBOT_PY
    args = words[1:]
    writes = _written(args)
    for name in PLACEHOLDERS:
        if name in args and name not in writes:
            (tmp_path / name).symlink_to(made / name, target_is_directory=(made / name).is_dir())
    if args[0] == "convert" and "--allow-tiny" not in args:
        args.append("--allow-tiny")  # LeRobot cannot build a tiny variant without it (README's lines are full size)
    proc = _pibridge(args, tmp_path, python)
    said = f"{line}\n-> exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    if proc.returncode == 1 and args[:2] == ["parity", "run"] and "--shared-preprocessing" not in args:
        # README: each stack's own preprocessing differs from img/embed on by the resize (synthetic non-224 frames);
        # the report must say so and point at --shared-preprocessing
        assert "first diverging stage: img/embed" in proc.stdout and "--shared-preprocessing" in proc.stdout, said
    else:
        assert proc.returncode == 0, said
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if "--dry-run" not in args:
        for name in writes:
            assert (tmp_path / name).exists(), f"{line}: did not write {name}"
    for i, a in enumerate(args[:-1]):
        if a in ("--html", "--json"):
            assert (tmp_path / args[i + 1]).stat().st_size > 0, f"{line}: empty {args[i + 1]}"
