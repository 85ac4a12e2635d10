"""Safety scan: no code path of pibridge, its tools, benchmarks or plugins can unpickle (run code from) a file.

Parsed with `ast` (no regex on text, so strings and comments do not count), names resolved through import
aliases (`import numpy as np`, `from torch import load`). Flagged:
  * importing pickle, _pickle, cPickle, cloudpickle, dill, joblib, shelve (shelve and joblib unpickle);
  * torch.load / torch.serialization.load without `weights_only=True` (torch < 2.6 defaults to False);
  * numpy.load with `allow_pickle=` anything but a literal False. numpy.load WITHOUT allow_pickle is allowed:
    its default has been False since numpy 1.16.3 (CVE-2019-6446) and pibridge requires numpy >= 1.26, so an
    object array in a file raises instead of unpickling;
  * pandas.read_pickle.
torch.save / numpy.save of arrays and safetensors are fine (writing, or a format without code).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("pibridge", "tools", "bench", "plugins")
PICKLING_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve"}
NEEDS_WEIGHTS_ONLY = {"torch.load", "torch.serialization.load"}
FORBIDDEN_CALLS = {"pandas.read_pickle"}


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted name it was imported as."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([aliases.get(node.id, node.id), *reversed(parts)])


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.expr | None, value: bool) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _imported_modules(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        return [node.module]
    return []


def scan_source(source: str, filename: str = "<string>") -> list[str]:
    """One finding per unsafe use: 'file:line: what'."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        for module in _imported_modules(node):
            if module.split(".")[0] in PICKLING_MODULES:
                found.append(f"{filename}:{node.lineno}: imports {module}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        if name in NEEDS_WEIGHTS_ONLY and not _is_const(_keyword(node, "weights_only"), True):
            found.append(f"{filename}:{node.lineno}: {name} without weights_only=True")
        elif name == "numpy.load" and _keyword(node, "allow_pickle") is not None \
                and not _is_const(_keyword(node, "allow_pickle"), False):
            found.append(f"{filename}:{node.lineno}: numpy.load with allow_pickle not False")
        elif name in FORBIDDEN_CALLS:
            found.append(f"{filename}:{node.lineno}: {name}")
    return found


def _sources() -> list[Path]:
    return sorted(p for d in SCANNED if (ROOT / d).is_dir() for p in (ROOT / d).rglob("*.py")
                  if ".venv" not in p.parts and "__pycache__" not in p.parts)


def test_project_source_never_unpickles():
    files = _sources()
    assert len(files) > 30 and any(p.parts[-2] == "tools" for p in files)  # the scan really covers the tree
    findings = [f for p in files for f in scan_source(p.read_text(), str(p.relative_to(ROOT)))]
    assert findings == []


@pytest.mark.parametrize("bad", [
    "import pickle",
    "import dill as d",
    "from joblib import load",
    "import shelve",
    "from _pickle import loads",
    "import torch\nsd = torch.load('m.pt')",
    "import torch\nsd = torch.load('m.pt', weights_only=False)",
    "import torch as T\nsd = T.load(f, map_location='cpu')",
    "from torch import load\nsd = load(f)",
    "import torch\nsd = torch.serialization.load(f)",
    "import numpy as np\nx = np.load('a.npy', allow_pickle=True)",
    "import numpy\nx = numpy.load(p, allow_pickle=flag)",
    "from numpy import load as L\nx = L(p, allow_pickle=True)",
    "import pandas as pd\ndf = pd.read_pickle('x.pkl')",
])
def test_scanner_flags_planted_unsafe_code(bad):
    assert len(scan_source(bad)) == 1, bad


@pytest.mark.parametrize("good", [
    "import torch\nsd = torch.load('m.pt', weights_only=True)",
    "import numpy as np\nx = np.load('a.npz')",
    "import numpy as np\nx = np.load('a.npy', allow_pickle=False)",
    "import torch\ntorch.save(model.state_dict(), 'm.pt')",
    "s = 'torch.load(f)'  # torch.load(f) in a string or comment is not code",
    "from safetensors.numpy import load_file\nx = load_file('m.safetensors')",
    "import json\nx = json.load(f)",
])
def test_scanner_accepts_safe_code(good):
    assert scan_source(good) == []
