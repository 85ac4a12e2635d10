"""DESIGN's dependency rules, checked in fresh interpreters: convert imports neither jax nor torch; the JAX
stack never imports torch; `pibridge --help` imports nothing heavy."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pibridge.convert
import pibridge.parity

TORCH_SIDE = ("torch_stack", "lerobot", "runtime_fixes", "transformers_")  # parity modules allowed to import torch
HEAVY = ("jax", "flax", "orbax", "torch", "transformers", "tensorstore")


def _modules_loaded_after(code: str) -> set[str]:
    probe = code + "\nimport sys; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return {line.split(".")[0] for line in out.splitlines()}


def _submodules(package) -> list[str]:
    return [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]


def test_convert_imports_neither_jax_nor_torch():
    mods = _submodules(pibridge.convert)
    assert mods, "pibridge.convert has no modules"
    loaded = _modules_loaded_after("\n".join(f"import {m}" for m in mods))
    assert not loaded & {"jax", "jaxlib", "flax", "orbax", "torch", "transformers"}, loaded


def test_jax_side_never_imports_torch():
    mods = [m for m in _submodules(pibridge.parity) if not any(t in m for t in TORCH_SIDE)]
    loaded = _modules_loaded_after("\n".join(f"import {m}" for m in mods))
    assert "torch" not in loaded and "transformers" not in loaded


def test_serve_imports_neither_jax_nor_torch():
    """pibridge.serve's modules import their stack lazily: the LeRobot side never pulls jax, the JAX side no torch."""
    import pibridge.serve

    mods = _submodules(pibridge.serve)
    assert {"pibridge.serve.wire", "pibridge.serve.policy", "pibridge.serve.server"} <= set(mods)
    loaded = _modules_loaded_after("\n".join(f"import {m}" for m in mods))
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_help_is_lazy():
    loaded = _modules_loaded_after(
        "from pibridge.cli import app\n"
        "try:\n    app(args=['--help'])\nexcept SystemExit:\n    pass"
    )
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_bad_usage_exits_2():
    proc = subprocess.run([sys.executable, "-m", "pibridge.cli", "synth", "--no-such-flag"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "No such option" in proc.stderr


def test_torch_side_never_imports_jax():
    mods = [m for m in _submodules(pibridge.parity) if any(t in m for t in TORCH_SIDE)]
    assert mods
    loaded = _modules_loaded_after("\n".join(f"import {m}" for m in mods))
    assert not loaded & {"jax", "jaxlib", "flax", "orbax"}, loaded
