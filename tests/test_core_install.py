"""Every command in a core-only environment (issue 16): a real venv without system site-packages holding only
pibridge's core dependencies (pyproject `dependencies` and what they require, linked from this venv: no jax, no
torch, no transformers, no LeRobot). Commands that need an extra exit 2 with one message naming it; the rest
work. Building it costs about a second (links, no download)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "foreign-host" / "tiny-pi05-float32.safetensors"
TOKENIZER = ROOT / "tests" / "data" / "test_spm.model"
CAMS = "base_0_rgb=top,left_wrist_0_rgb=wrist"


def _core_closure() -> list[metadata.Distribution]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    todo, seen, out = [Requirement(d).name for d in deps], set(), []
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        dist = metadata.distribution(name)
        out.append(dist)
        for r in map(Requirement, dist.requires or []):
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
    return out


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    """(python, env, workdir) of a core-only venv; pibridge itself from this checkout via PYTHONPATH."""
    root = tmp_path_factory.mktemp("core")
    venv = root / "venv"
    subprocess.run([sys.base_prefix + "/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for dist in _core_closure():
        for f in dist.files or []:
            top = f.parts[0]
            if top in ("..", "__pycache__") or top.endswith(".pth") or (site / top).exists():
                continue
            src = Path(dist.locate_file(top))
            if src.exists():
                (site / top).symlink_to(src)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIBRIDGE_"))}
    env["PYTHONPATH"] = str(ROOT)
    work = root / "w"
    work.mkdir()
    probe = subprocess.run([str(py), "-c", "import importlib.util as u; print([m for m in ('jax', 'torch', "
                            "'transformers', 'lerobot', 'flax', 'numpy') if u.find_spec(m)])"],
                           capture_output=True, text=True, env=env, check=True)
    assert probe.stdout.strip() == "['numpy']", probe.stdout  # really core-only
    return str(py), env, work


def _run(core, *args):
    py, env, work = core
    return subprocess.run([py, "-m", "pibridge.cli", *map(str, args)], cwd=work, env=env, capture_output=True,
                          text=True, timeout=300)


WORKS = [
    ("version", ["--version"]),
    ("synth", ["synth", "ck", "--variant", "tiny-pi05", "--profile", "pi05_droid", "--asset-id", "droid"]),
    ("inspect", ["inspect", "ck", "--no-leaves"]),
    ("convert", ["convert", "ck", "out", "--profile", "pi05_droid", "--allow-tiny", "--camera-map", CAMS,
                 "--tokenizer", TOKENIZER]),
    ("fixes", ["fixes", "--dtype", "bf16"]),
    ("parity obs", ["parity", "obs", "obs.safetensors", "--profile", "pi05_droid"]),
    ("parity compare", ["parity", "compare", GOLDEN, GOLDEN]),
]
NEEDS = [  # (command, args, what the message must name)
    ("check", ["check", "out"], "pip install 'pibridge[torch]'"),
    ("capture jax", ["parity", "capture", "--stack", "jax", "--openpi", "ck", "--obs", "obs.safetensors",
                     "--out", "j.safetensors"], "pip install 'pibridge[jax]'"),
    ("capture torch", ["parity", "capture", "--stack", "torch", "--lerobot", "out", "--obs", "obs.safetensors",
                       "--out", "t.safetensors"], "pip install 'pibridge[torch]'"),
    ("capture lerobot", ["parity", "capture", "--stack", "lerobot", "--lerobot", "out", "--obs",
                         "obs.safetensors", "--out", "l.safetensors"], "make lerobot-env"),
    ("run", ["parity", "run", "--openpi", "ck", "--lerobot", "out", "--obs", "obs.safetensors"],
     "pip install 'pibridge[jax]'"),
]


def test_core_only_install_every_command(core):
    """In order (later commands use what earlier ones wrote)."""
    for name, args in WORKS:
        proc = _run(core, *args)
        assert proc.returncode == 0, (name, proc.stderr[-2000:])
    for name, args, hint in NEEDS:
        proc = _run(core, *args)
        assert proc.returncode == 2, (name, proc.returncode, proc.stderr[-2000:])
        assert hint in proc.stderr and "Traceback" not in proc.stderr, (name, proc.stderr)
        assert proc.stderr.count("pibridge: error:") == 1, (name, proc.stderr)
