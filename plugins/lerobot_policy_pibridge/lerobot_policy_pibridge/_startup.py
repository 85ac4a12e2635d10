"""Imported at interpreter start by lerobot_policy_pibridge_startup.pth (stdlib only, nothing else imported).

A meta-path finder waits for LeRobot's pi05 / pi0 modeling modules; once one has executed, it imports the plugin,
which wraps PI05Policy / PI0Policy.from_pretrained. So a script that calls `PI05Policy.from_pretrained(OUT)` itself
(no LeRobot script, no register_third_party_plugins) still gets the load check and the runtime fixes for a
pibridge OUT. Any other import is untouched; the cost at start is one finder on sys.meta_path.
"""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder

TARGETS = frozenset({"lerobot.policies.pi05.modeling_pi05", "lerobot.policies.pi0.modeling_pi0"})


class _PolicyModuleFinder(MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in TARGETS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_then_wrap(module):
            exec_module(module)
            try:
                import lerobot_policy_pibridge  # noqa: F401  (its import wraps the policy classes)
            except Exception as err:  # never break LeRobot's import; say so instead
                print(f"WARNING: pibridge: runtime fixes NOT installed for {name} ({type(err).__name__}: {err}); "
                      "pibridge-converted policies may load without them", file=sys.stderr)

        spec.loader.exec_module = exec_then_wrap
        return spec


if not any(isinstance(f, _PolicyModuleFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _PolicyModuleFinder())
