"""DESIGN's dependency rules, checked in fresh interpreters: convert imports neither jax nor torch; the JAX
stack never imports torch; `pibridge --help` imports nothing heavy. And, from the source (every import node:
module- and function-level, relative, importlib.import_module with a literal name): a stack imports no other stack;
the parity core (parity/ outside stacks/) imports no stack, it names them by string in the registry only."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import pibridge.convert
import pibridge.parity

# parity modules allowed to import torch: the torch-side stacks, their shared helpers, the fixes wing's files
TORCH_SIDE = ("stacks.torch", "stacks.lerobot", "stacks.transformers", "stacks.common", "torch_stack",
              "runtime_fixes", "lerobot_preprocess")
PARITY = Path(pibridge.parity.__file__).parent
STACKS_PKG = "pibridge.parity.stacks"
SHARED = {STACKS_PKG, STACKS_PKG + ".common"}  # the registry (names stacks by string) and the shared helpers
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
    mods = [m for m in _submodules(pibridge.parity) if any(t in m for t in TORCH_SIDE)]
    assert mods
    loaded = _modules_loaded_after("\n".join(f"import {m}" for m in mods))
    assert not loaded & {"jax", "jaxlib", "flax", "orbax"}, loaded


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent.parent).with_suffix("").parts)  # root = .../pibridge/parity
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: Path) -> bool:
    """name (pibridge.parity....) is a module or package of the tree at root (not a name inside a module)."""
    if not name.startswith("pibridge.parity."):
        return False
    rel = root.joinpath(*name.split(".")[2:])
    return rel.with_suffix(".py").is_file() or (rel / "__init__.py").is_file()


def imported_names(path: Path, module: str, root: Path = PARITY) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file: import / from-import at any depth, relative ones
    resolved, and importlib.import_module("literal")."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names  # `from pkg import submodule`
                    if _is_module(f"{base}.{a.name}", root)]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == \
                "import_module" and node.args and isinstance(node.args[0], ast.Constant):
            out.append((node.lineno, str(node.args[0].value)))
    return out


def _stack_of(name: str) -> str | None:
    """The stack a module belongs to ("pibridge.parity.stacks.jax.sampler" -> "jax"), None outside the stacks."""
    if not name.startswith(STACKS_PKG + ".") or name in SHARED or name.startswith(STACKS_PKG + ".common."):
        return None
    return name[len(STACKS_PKG) + 1:].split(".")[0]


def stack_rule_violations(root: Path = PARITY) -> list[str]:
    """Stacks import no other stack; the parity core imports no stack (the registry package itself excepted)."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        own = _stack_of(module)
        in_stacks = module == STACKS_PKG or module.startswith(STACKS_PKG + ".")
        for line, name in imported_names(path, module, root):
            target = _stack_of(name)
            if target is None or target == own:
                continue
            what = f"stack {own!r}" if own else ("the registry" if in_stacks else "the parity core")
            bad.append(f"{path.relative_to(root.parent.parent)}:{line}: {what} imports {name} (stack {target!r})")
    return bad


def test_stacks_import_no_other_stack_and_the_core_no_stack():
    assert stack_rule_violations() == []


PLANTED = {
    "function-level in the core": ("capture.py", "def f():\n    from pibridge.parity.stacks.jax import run_policy\n"),
    "relative, stack to stack": ("stacks/torch/capture.py", "from ..lerobot import batches\n"),
    "import_module in the core": ("run.py", "import importlib\nimportlib.import_module('pibridge.parity.stacks.torch.model')\n"),
    "module-level, stack to stack": ("stacks/transformers/model.py", "import pibridge.parity.stacks.lerobot.recorder\n"),
}


@pytest.mark.parametrize("case", sorted(PLANTED))
def test_stack_rules_catch_a_planted_import(tmp_path, case):
    """A scratch copy of parity/ with one broken rule planted: the checker names exactly that file."""
    import shutil

    root = tmp_path / "pibridge" / "parity"
    shutil.copytree(PARITY, root, ignore=shutil.ignore_patterns("__pycache__"))
    rel, code = PLANTED[case]
    with open(root / rel, "a") as f:
        f.write("\n" + code)
    bad = stack_rule_violations(root)
    assert bad and all(b.startswith(f"pibridge/parity/{rel}:") for b in bad), bad
