"""The fixes wing: every numeric fix a converted pi0 / pi05 needs on a runtime, in one package.

- table.py: configs/fixes.json as data (pure: no torch, no jax; the converter imports it), and every version
  predicate, evaluated from data (fixes.json, transformers_support.json "api").
- runtime.py: the functions that patch a loaded torch policy, registered by fix id (@runtime_fix).
- guard.py: `pibridge check` / `pibridge fixes`; probes registered by fix id (@probe), findings from the table.
- shims.py: named compatibility shims over the installed transformers release.
- exact.py: the opt-in fp32-exact Gemma attention (fix exact-fp32-attention).
Torch side: may import torch, never jax; imports nothing of pibridge.parity (tests/test_import_rules.py).
"""
