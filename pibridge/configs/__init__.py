"""Data shipped with pibridge: model variants, policy profiles, tolerances, fix records.

transformers_support.json is read by load_transformers_support, fixes.json by pibridge.fixes.table.load_table,
lerobot/versions.json by pibridge.convert.lerobot_config._versions (one reader each).

Variants (configs/variants/*.json) give the sizes of each sub-model; they mirror OpenPI's
gemma.get_config / siglip.decode_variant (cited in each file's "sources").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pibridge.errors import PibridgeError

CONFIG_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class GemmaSize:
    variant: str
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class SiglipSize:
    variant: str
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: int
    image_size: int

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class Variant:
    name: str
    pi05: bool
    tiny: bool
    paligemma: GemmaSize
    action_expert: GemmaSize
    siglip: SiglipSize
    vocab_size: int
    action_dim: int


def variant_names() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "variants").glob("*.json"))


@cache
def load_variant(name: str) -> Variant:
    path = CONFIG_DIR / "variants" / f"{name}.json"
    if not path.is_file():
        raise PibridgeError(
            f"unknown variant {name!r}",
            expected=f"one of {', '.join(variant_names())}",
            fix="pass --variant with one of those names",
        )
    raw = json.loads(path.read_text())
    return Variant(
        name=raw["name"],
        pi05=raw["pi05"],
        tiny=raw["tiny"],
        paligemma=GemmaSize(**raw["paligemma"]),
        action_expert=GemmaSize(**raw["action_expert"]),
        siglip=SiglipSize(**raw["siglip"]),
        vocab_size=raw["vocab_size"],
        action_dim=raw["action_dim"],
    )


@cache
def load_transformers_support() -> dict:
    """configs/transformers_support.json (its only reader): "supported" range, "api" facts, "matrix", "gate"."""
    return json.loads((CONFIG_DIR / "transformers_support.json").read_text())
