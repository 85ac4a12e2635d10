"""Regenerate pibridge/configs/lerobot/<version>.json from a LeRobot wheel (maintainer tool, not imported).

    pip download --no-deps --python-version 3.12 --only-binary=:all: lerobot==0.6.1 -d /tmp/w
    python tools/extract_lerobot_schema.py /tmp/w/lerobot-0.6.1-py3-none-any.whl > 0.6.1.json

Reads the dataclass fields of PreTrainedConfig (lerobot/configs/policies.py) and PI05Config / PI0Config
(lerobot/policies/pi0{5,}/configuration_pi0{5,}.py) with `ast` (LeRobot is not imported: it needs Python
3.12 and torch), in dataclass order (base fields first; a redefined field keeps its first position and
takes its last default), with defaults encoded as draccus writes them to config.json (tuples -> lists,
str enums -> values). Also records the transformers requirement from the wheel METADATA.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import zipfile


class _Enum:  # NormalizationMode.X / FeatureType.X -> "X" (str enums whose values equal their names)
    def __getattr__(self, name: str) -> str:
        return name


def _field(default=None, default_factory=None, **_):
    return default_factory() if default_factory is not None else default


def _module_consts(tree: ast.Module) -> dict:
    ns = {"NormalizationMode": _Enum(), "FeatureType": _Enum(), "field": _field}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                ns[node.targets[0].id] = eval(compile(ast.Expression(node.value), "<c>", "eval"), dict(ns))
            except Exception:  # noqa: BLE001 - non-constant module globals are irrelevant here
                pass
    return ns


def _encode(value):
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def class_fields(source: str, class_name: str, base: list | None = None) -> list:
    tree = ast.parse(source)
    ns = _module_consts(tree)
    fields = [list(f) for f in (base or [])]
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        default = None if node.value is None else eval(compile(ast.Expression(node.value), "<d>", "eval"), dict(ns))
        entry = next((f for f in fields if f[0] == node.target.id), None)
        if entry is None:
            fields.append([node.target.id, _encode(default)])
        else:
            entry[1] = _encode(default)
    return fields


def extract(wheel: str) -> dict:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        read = lambda n: z.read(n).decode()  # noqa: E731
        meta = read(next(n for n in names if n.endswith(".dist-info/METADATA")))
        version = re.search(r"^Version: (.+)$", meta, re.M).group(1)
        base = class_fields(read("lerobot/configs/policies.py"), "PreTrainedConfig")
        policies = {}
        for typ, cls in (("pi05", "PI05Config"), ("pi0", "PI0Config")):
            path = f"lerobot/policies/{typ}/configuration_{typ}.py"
            policies[typ] = {"class": cls, "source": path, "fields": dict(class_fields(read(path), cls, base))}
    req = re.search(r"^Requires-Dist: transformers([^;\n]*); extra == \"transformers-dep\"$", meta, re.M)
    py = re.search(r"^Requires-Python: (.+)$", meta, re.M)
    draccus = re.search(r"^Requires-Dist: draccus([^;\n]*)$", meta, re.M)
    return {"lerobot_version": version, "source": f"{wheel.rsplit('/', 1)[-1]}: lerobot/configs/policies.py "
            "(PreTrainedConfig) + the policy files below", "requires_python": py.group(1) if py else None,
            "transformers_requirement": req.group(1).strip() if req else None,
            "draccus_requirement": draccus.group(1).strip() if draccus else None, "policies": policies}


if __name__ == "__main__":
    json.dump(extract(sys.argv[1]), sys.stdout, indent=1)
    sys.stdout.write("\n")
