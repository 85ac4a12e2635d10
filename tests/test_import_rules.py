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

# parity modules allowed to import torch: the torch-side stacks, their shared helpers, the model of LeRobot's steps
TORCH_SIDE = ("stacks.torch", "stacks.lerobot", "stacks.transformers", "stacks.common", "lerobot_preprocess")
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
    mods = [m for m in _submodules(pibridge.parity) if any(t in m for t in TORCH_SIDE)] + _submodules(pibridge.fixes)
    assert "pibridge.fixes.runtime" in mods and "pibridge.fixes.guard" in mods
    loaded = _modules_loaded_after("\n".join(f"import {m}" for m in mods))
    assert not loaded & {"jax", "jaxlib", "flax", "orbax"}, loaded


def test_fix_table_imports_neither_jax_nor_torch():
    loaded = _modules_loaded_after("import pibridge.fixes.table")  # the converter imports it
    assert not loaded & {"jax", "jaxlib", "flax", "orbax", "torch", "transformers"}, loaded


# ----------------------------------------------------------------------------------------------- the never-rules, by AST
# Every import node counts: module level or inside a function, absolute or relative, and importlib.import_module /
# __import__ with a literal name. (The subprocess checks above see only what importing a module loads.)
import shutil  # noqa: E402

import pytest  # noqa: E402

PACKAGE_ROOT = Path(pibridge.convert.__file__).resolve().parents[1]  # .../pibridge
STACK_ROOTS = ("pibridge.parity.stacks.jax", "pibridge.parity.stacks.torch", "pibridge.parity.stacks.lerobot",
               "pibridge.parity.stacks.transformers")  # each stack's home; the rest of parity/ is the core
SHARED = ("pibridge.parity.stacks.common",)  # torch helpers two stacks share: any stack may import them
FRAMEWORKS = ("jax", "jaxlib", "flax", "orbax", "torch", "lerobot")  # convert: transformers only for the best-effort tokenizer.json
CLI_MODULE_LEVEL_OK = ("typer", "pibridge.vocab", "pibridge.errors")  # besides the standard library and the registry


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path):
    """(imported module, line, module level?) for every import node of one file."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:  # `from pibridge.parity import stages` imports pibridge.parity.stages
                yield (f"{base}.{a.name}" if a.name != "*" else base), node.lineno, id(node) in top
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            callee = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if callee in ("import_module", "__import__"):
                yield node.args[0].value, node.lineno, False


def _within(module: str, roots) -> str | None:
    return next((r for r in roots if module == r or module.startswith(r + ".")), None)


def rule_violations(root: Path = PACKAGE_ROOT) -> list[str]:
    """Every broken never-rule of DESIGN.md in the package tree at `root`, as 'file:line: rule (import)'."""
    found = []
    for path in sorted(root.rglob("*.py")):
        me = _module_name(path, root)
        for imported, line, module_level in _imports(path, root):
            where = f"{path.relative_to(root.parent)}:{line}"
            mine, theirs = _within(me, STACK_ROOTS), _within(imported, STACK_ROOTS)
            if me.startswith("pibridge.parity") and mine is None and _within(imported, SHARED) is not None \
                    and _within(me, SHARED) is None:
                theirs = "pibridge.parity.stacks.common"  # the shared helpers are stack code: not for the core
            broken = []
            if me.startswith("pibridge.convert"):
                if imported.startswith("pibridge.parity"):
                    broken.append("convert never imports parity")
                if imported.split(".")[0] in FRAMEWORKS:
                    broken.append("convert never imports jax / torch / lerobot")
            if me.startswith("pibridge.parity") and mine is None and theirs is not None:
                broken.append("the parity core imports no stack")
            if mine is not None and theirs is not None and mine != theirs:
                broken.append("a stack imports no other stack")
            if me.startswith("pibridge.fixes") and imported.startswith("pibridge.parity"):
                broken.append("the fixes wing imports nothing of parity")
            if me.startswith("pibridge.fixes") and imported.split(".")[0] in ("jax", "jaxlib", "flax", "orbax"):
                broken.append("the fixes wing (torch side) never imports jax")
            if mine == "pibridge.parity.stacks.jax" and imported.startswith("pibridge.convert.lora_merge"):
                broken.append("the JAX stack never imports convert's LoRA merge")
            registry_name = imported.rpartition(".")[0] == "pibridge.parity.stacks" and \
                _within(imported, STACK_ROOTS + SHARED) is None  # the registry's data (STACKS), no stack
            if me == "pibridge.cli" and module_level and imported.split(".")[0] in ("pibridge", *FRAMEWORKS) \
                    and _within(imported, CLI_MODULE_LEVEL_OK) is None and not registry_name:
                broken.append("the CLI imports lazily")
            found += [f"{where}: {b} ({imported})" for b in broken]
    return found


def test_no_never_rule_is_broken_anywhere():
    assert rule_violations() == []


PLANTED = {  # the file to plant into, the line appended, the rule that must fire
    "function-level": ("convert/convert.py", "def _planted():\n    from pibridge.parity import stages\n",
                       "convert never imports parity"),
    "relative": ("convert/convert.py", "def _planted():\n    from ..parity import stages\n",
                 "convert never imports parity"),
    "import_module": ("convert/plan.py", "def _planted():\n    import importlib\n"
                      "    return importlib.import_module('pibridge.parity.stages')\n", "convert never imports parity"),
    "framework": ("convert/reader.py", "def _planted():\n    import torch\n",
                  "convert never imports jax / torch / lerobot"),
    "core-imports-stack": ("parity/compare.py", "def _planted():\n    from pibridge.parity.stacks.jax import run_policy\n",
                           "the parity core imports no stack"),
    "stack-imports-stack": ("parity/stacks/jax/pi0.py", "def _planted():\n    from pibridge.parity.stacks import torch\n",
                            "a stack imports no other stack"),
    "relative-stack-import": ("parity/stacks/lerobot/loader.py", "def _planted():\n    from ..torch import model\n",
                              "a stack imports no other stack"),
    "jax-lora-merge": ("parity/stacks/jax/params.py", "def _planted():\n    from pibridge.convert import lora_merge\n",
                       "the JAX stack never imports convert's LoRA merge"),
    "fixes-imports-parity": ("fixes/guard.py", "def _planted():\n    from pibridge.parity import stages\n",
                             "the fixes wing imports nothing of parity"),
    "fixes-imports-jax": ("fixes/runtime.py", "def _planted():\n    import jax\n",
                          "the fixes wing (torch side) never imports jax"),
    "cli-eager": ("cli.py", "from pibridge.convert.convert import convert as _planted\n", "the CLI imports lazily"),
}


@pytest.mark.parametrize("case", sorted(PLANTED))
def test_each_planted_break_is_found(tmp_path, case):
    rel, code, rule = PLANTED[case]
    copy = tmp_path / "pibridge"
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__", "configs"))
    target = copy / rel
    assert target.is_file(), f"planted target {rel} moved: update PLANTED"
    target.write_text(target.read_text() + "\n\n" + code)
    found = rule_violations(copy)
    assert [v for v in found if rule in v and v.startswith(f"pibridge/{rel}:")], found
