"""Named compatibility shims over the installed transformers release (the only torch-side place that looks at
versions or API shapes; the version facts are data: configs/transformers_support.json "supported" and "api").
The supported range is enforced by `check_supported` (called by the torch stack's load_policy).
"""

from __future__ import annotations

import inspect
import os
from functools import cache

import torch

from pibridge.configs import load_transformers_support
from pibridge.errors import PibridgeError
from pibridge.fixes.table import VISION_MODEL, release_in, transformers_api

ALLOW_UNSUPPORTED_ENV = "PIBRIDGE_ALLOW_UNSUPPORTED_TRANSFORMERS"


@cache
def transformers_version() -> str:
    import transformers

    return transformers.__version__


@cache
def supported_range() -> dict:
    """configs/transformers_support.json "supported": min, max, specifier, newest_on_registry."""
    return load_transformers_support()["supported"]


def is_supported(version: str) -> bool:
    try:
        return release_in(supported_range()["specifier"], version, "transformers")  # 5.25.0.dev0 -> 5.25.0
    except PibridgeError:  # not a version
        return False


def check_supported(version: str | None = None) -> str:
    """Raise PibridgeError naming the supported range when `version` (default: the installed transformers) is
    outside it. PIBRIDGE_ALLOW_UNSUPPORTED_TRANSFORMERS=1 (used by `make canary`) lets a newer release run."""
    version = version or transformers_version()
    if is_supported(version) or os.environ.get(ALLOW_UNSUPPORTED_ENV) == "1":
        return version
    r = supported_range()
    raise PibridgeError(
        f"transformers {version} is outside the releases pibridge's torch stack supports",
        f"a transformers release from {r['min']} through {r['max']}.x ({r['specifier']}; "
        "pibridge/configs/transformers_support.json)",
        f"install a supported release, e.g. pip install 'transformers{r['specifier']}' "
        f"({ALLOW_UNSUPPORTED_ENV}=1 runs anyway, unverified)")


@cache
def attention_cache_kwarg() -> str:
    """Name of GemmaAttention.forward's KV-cache argument: past_key_value (<= 4.55), past_key_values, cache (>= 5.24)."""
    from transformers.models.gemma.modeling_gemma import GemmaAttention

    params = inspect.signature(GemmaAttention.forward).parameters
    for name in ("cache", "past_key_values", "past_key_value"):
        if name in params:
            return name
    raise RuntimeError(f"transformers {transformers_version()}: GemmaAttention.forward takes no KV-cache argument")


def image_features_return_output() -> bool:
    """get_image_features returns BaseModelOutputWithPooling from 5.0, a tensor up to 4.57 (transformers_support.json
    api.image_features_return_output)."""
    return transformers_api("image_features_return_output", transformers_version())


def image_features(paligemma_model, pixel_values: torch.Tensor) -> torch.Tensor:
    """PaliGemmaModel.get_image_features: a tensor (4.x) or BaseModelOutputWithPooling with .pooler_output (5.x)."""
    out = paligemma_model.get_image_features(pixel_values)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def siglip_core(vision_tower):
    """The module holding embeddings / encoder / post_layernorm: .vision_model up to 5.5, the tower itself from 5.6."""
    return getattr(vision_tower, "vision_model", vision_tower)


def text_embedding_is_scaled(embed_tokens) -> bool:
    """From 5.4 the sqrt(hidden) text scale lives in GemmaTextScaledWordEmbedding (buffer embed_scale)."""
    return hasattr(embed_tokens, "embed_scale")


def rope_inv_freq(theta: float, head_dim: int) -> torch.Tensor:
    """fp32 inverse frequencies 1 / theta^(2i/H), i < H/2, as every release computes them (openpi gemma.py:424-440)."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def rope_theta(config) -> float:
    """4.x: config.rope_theta; 5.x: config.rope_parameters["rope_theta"]."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(getattr(config, "rope_theta", 10000.0))


def materialize_buffers(root: torch.nn.Module) -> None:
    """Fill the non-persistent buffers a meta-device build left empty (they are not in any checkpoint)."""
    for mod_name, module in root.named_modules():
        for buf_name, buf in list(module.named_buffers(recurse=False)):
            if buf is None or buf.device.type != "meta":
                continue
            if buf_name in ("inv_freq", "original_inv_freq"):
                value = rope_inv_freq(rope_theta(module.config), config_head_dim(module.config))
            elif buf_name == "embed_scale":
                value = torch.tensor(float(module.scalar_embed_scale))
            elif buf_name == "position_ids":
                value = torch.arange(buf.shape[-1]).expand(buf.shape).contiguous()
            else:
                raise RuntimeError(f"transformers {transformers_version()}: unknown buffer {mod_name}.{buf_name}; "
                                   "pibridge does not know how to initialise it (new release? see pibridge/fixes/shims.py)")
            module.register_buffer(buf_name, value.to(buf.dtype), persistent=False)
        _realias_original_inv_freq(module)


def _realias_original_inv_freq(module: torch.nn.Module) -> None:
    """4.x keeps `original_inv_freq` as a plain attribute aliasing inv_freq (not a buffer, 4.53.3
    modeling_gemma.py:100-101): after a meta build it still points at the meta tensor; re-alias it."""
    orig = module.__dict__.get("original_inv_freq")
    if isinstance(orig, torch.Tensor) and orig.device.type == "meta":
        module.original_inv_freq = module.inv_freq


def config_head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def adapt_vision_keys(keys, flat_tower: bool) -> dict[str, str]:
    """{file key: module key}: SigLIP keys carry `vision_model.` up to transformers 5.5 and not from 5.6
    (SiglipVisionTransformer merged into SiglipVisionModel). Renames only that segment, both ways."""
    if flat_tower:
        return {k: k.replace(VISION_MODEL, ".vision_tower.") for k in keys}
    return {k: k.replace(".vision_tower.", VISION_MODEL) if VISION_MODEL not in k else k for k in keys}
