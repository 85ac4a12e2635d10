"""DESIGN's dependency rules, checked in fresh interpreters: convert imports neither jax nor torch; the JAX
stack never imports torch; the fixes wing (torch side) never imports jax and its table imports neither;
`pibridge --help` imports nothing heavy. And, on the source (every import node: function-level, relative,
`import_module` with a literal name): pibridge/fixes/ imports nothing of pibridge.parity."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pibridge.convert
import pibridge.fixes
import pibridge.parity

TORCH_SIDE = ("torch_stack", "lerobot", "transformers_")  # parity modules allowed to import torch
FIXES_DIR = Path(pibridge.fixes.__file__).parent
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
    mods = [m for m in _submodules(pibridge.parity) if any(t in m for t in TORCH_SIDE)] + _submodules(pibridge.fixes)
    assert "pibridge.fixes.runtime" in mods and "pibridge.fixes.guard" in mods
    loaded = _modules_loaded_after("\n".join(f"import {m}" for m in mods))
    assert not loaded & {"jax", "jaxlib", "flax", "orbax"}, loaded


def test_fix_table_imports_neither_jax_nor_torch():
    loaded = _modules_loaded_after("import pibridge.fixes.table")  # the converter imports it
    assert not loaded & {"jax", "jaxlib", "flax", "orbax", "torch", "transformers"}, loaded


def imported_modules(source: str, package: str) -> list[str]:
    """Every module name an import node of `source` (a module of `package`) names, wherever the node sits:
    `import a.b`, `from a import b` (a and a.b), relative imports resolved, import_module / __import__ with a
    literal first argument."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            names += [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) \
                and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__"):
            names.append(node.args[0].value)
    return names


def _parity(names: list[str]) -> list[str]:
    return [n for n in names if n == "pibridge.parity" or n.startswith("pibridge.parity.")]


def test_import_walker_sees_every_form():
    planted = {"def f():\n    from pibridge.parity import stages\n": "pibridge.parity",
               "from ..parity.torch_stack import model\n": "pibridge.parity.torch_stack",
               "from .. import parity\n": "pibridge.parity",
               "import importlib\nm = importlib.import_module('pibridge.parity.stages')\n": "pibridge.parity.stages",
               "class A:\n    def g(self):\n        import pibridge.parity.trace as t\n": "pibridge.parity.trace"}
    for source, expected in planted.items():
        assert expected in _parity(imported_modules(source, "pibridge.fixes")), source
    assert _parity(imported_modules("from . import shims\nfrom pibridge.fixes.table import Fix\n", "pibridge.fixes")) == []


def test_fixes_import_nothing_of_parity():
    files = sorted(FIXES_DIR.glob("*.py"))
    assert {p.stem for p in files} >= {"table", "runtime", "guard", "shims", "exact"}
    bad = {p.name: _parity(imported_modules(p.read_text(), "pibridge.fixes")) for p in files}
    bad = {name: found for name, found in bad.items() if found}
    assert not bad, f"pibridge/fixes/ imports pibridge.parity: {bad}"
