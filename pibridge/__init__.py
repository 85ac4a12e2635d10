"""pibridge: OpenPI pi0 / pi0.5 (JAX) -> LeRobot (PyTorch) conversion with stage-by-stage numeric parity.

Subpackages: `convert` (no jax, no torch), `parity` (may import `convert`), `configs` (data).
"""

__version__ = "0.1.0"
