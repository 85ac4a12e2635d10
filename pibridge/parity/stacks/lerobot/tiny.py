"""Lets the real LeRobot (0.5.x / 0.6.x) build pibridge's tiny variants (variant name "dummy"): `parity capture
--stack lerobot` / `parity run --torch-stack lerobot` apply it by themselves to an OUT converted with --allow-tiny
(pibridge.json variant tiny-*) and record that in the trace; tests/lerobot/tiny_patch.py applies it for the tests'
own LeRobot scripts. Never imported for a real-size OUT. It changes configuration VALUES only; all modeling code
stays LeRobot's:

  lerobot/policies/pi05|pi0/configuration_*.py  PI05Config / PI0Config.__post_init__: the variant check
      `paligemma_variant/action_expert_variant in ["gemma_300m", "gemma_2b"]` also accepts "dummy"
  lerobot/policies/pi05|pi0/modeling_*.py  get_gemma_config: + "dummy" -> GemmaConfig(width=64, depth=4,
      mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16)   (pibridge/configs tiny-pi0/tiny-pi05 = OpenPI "dummy")
  PaliGemmaWithExpertModel.__init__'s PaliGemma vision config (SigLIP So400m/14 -> OpenPI "mu/14"), applied to the
      config object just before PaliGemmaForConditionalGenerationWithPiGemma(config) is built:
      vision_config.hidden_size 1152 -> 32, intermediate_size 4304 -> 128, num_hidden_layers 27 -> 1,
      num_attention_heads 16 -> 2, projection_dim 2048 -> 64 (= tiny text width); patch 14, image 224 unchanged.
Only configs whose variant is "dummy" are affected; gemma_2b / gemma_300m build exactly as before.
"""

from __future__ import annotations

import importlib

from pibridge.configs import load_variant

_TINY = load_variant("tiny-pi05")
TINY_VARIANT = "dummy"


def _patch_config(cls) -> None:
    original = cls.__post_init__
    if getattr(original, "_pibridge_tiny", False):
        return

    def __post_init__(self):
        tiny = {f: getattr(self, f) for f in ("paligemma_variant", "action_expert_variant")
                if getattr(self, f) == TINY_VARIANT}
        for f in tiny:
            setattr(self, f, "gemma_300m")  # pass LeRobot's own validation, then restore the tiny name
        try:
            original(self)
        finally:
            for f, v in tiny.items():
                setattr(self, f, v)

    __post_init__._pibridge_tiny = True
    cls.__post_init__ = __post_init__


def _patch_modeling(mod) -> None:
    if getattr(mod.get_gemma_config, "_pibridge_tiny", False):
        return
    original_gemma, original_pg = mod.get_gemma_config, mod.PaliGemmaForConditionalGenerationWithPiGemma
    g, s = _TINY.paligemma, _TINY.siglip

    def get_gemma_config(variant):
        if variant == TINY_VARIANT:
            return mod.GemmaConfig(width=g.width, depth=g.depth, mlp_dim=g.mlp_dim, num_heads=g.num_heads,
                                   num_kv_heads=g.num_kv_heads, head_dim=g.head_dim)
        return original_gemma(variant)

    def paligemma(config):
        if config.text_config.hidden_size == g.width:  # a tiny text model: give it the tiny vision tower
            v = config.vision_config
            v.hidden_size, v.intermediate_size, v.num_hidden_layers = s.width, s.mlp_dim, s.depth
            v.num_attention_heads, v.projection_dim = s.num_heads, g.width
            config.projection_dim = g.width
        return original_pg(config=config)

    get_gemma_config._pibridge_tiny = True
    mod.get_gemma_config = get_gemma_config
    mod.PaliGemmaForConditionalGenerationWithPiGemma = paligemma


def apply() -> None:
    """Idempotent; imports LeRobot (call it in a LeRobot environment)."""
    for name in ("pi05", "pi0"):
        cfg = importlib.import_module(f"lerobot.policies.{name}.configuration_{name}")
        _patch_config(getattr(cfg, "PI05Config" if name == "pi05" else "PI0Config"))
        _patch_modeling(importlib.import_module(f"lerobot.policies.{name}.modeling_{name}"))


def needed(provenance: dict) -> bool:
    """An OUT of a test-size variant (converted with --allow-tiny), which LeRobot cannot build unpatched."""
    return str(provenance.get("variant", "")).startswith("tiny")
