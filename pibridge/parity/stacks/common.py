"""Torch helpers that more than one torch-side stack uses (never a stack's own logic; torch imported lazily).

to_numpy / first / cache_kv: reading hooked module outputs (lerobot and transformers recorders).
gemma_config / paligemma_config: transformers configs for a pibridge variant (torch stack's model, transformers
stack's native config). mmap_safetensors: a zero-copy, copy-on-write view of a .safetensors file (torch stack's
loader, the lerobot stack's `mmap_load_file` for full-size loads).
"""

from __future__ import annotations

import json
import mmap
from dataclasses import dataclass
from pathlib import Path

from pibridge.configs import GemmaSize, Variant


def to_numpy(t):
    return t.detach().float().cpu().numpy()


def first(o):
    return o[0] if isinstance(o, (tuple, list)) else o


def cache_kv(cache, i: int):
    """(B, K, T, H) keys/values of layer i from a transformers cache (5.x .layers[i].keys; 4.x key_cache)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return layers[i].keys, layers[i].values
    return cache.key_cache[i], cache.value_cache[i]


def gemma_config(size: GemmaSize, vocab: int):
    from transformers import GemmaConfig

    return GemmaConfig(vocab_size=vocab, hidden_size=size.width, intermediate_size=size.mlp_dim,
                       num_hidden_layers=size.depth, num_attention_heads=size.num_heads,
                       num_key_value_heads=size.num_kv_heads, head_dim=size.head_dim,
                       hidden_activation="gelu_pytorch_tanh", hidden_act="gelu_pytorch_tanh", rms_norm_eps=1e-6,
                       max_position_embeddings=8192, attention_bias=False)


def paligemma_config(variant: Variant):
    from transformers import PaliGemmaConfig, SiglipVisionConfig

    v = variant.siglip
    vision = SiglipVisionConfig(hidden_size=v.width, intermediate_size=v.mlp_dim, num_hidden_layers=v.depth,
                                num_attention_heads=v.num_heads, patch_size=v.patch_size, image_size=v.image_size,
                                layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
                                projection_dim=variant.paligemma.width, vision_use_head=False)
    text = gemma_config(variant.paligemma, variant.vocab_size)
    cfg = PaliGemmaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                          image_token_index=variant.vocab_size, projection_dim=variant.paligemma.width)
    cfg.vision_config.projection_dim = variant.paligemma.width
    return cfg


# --- safetensors, memory-mapped -------------------------------------------------------------------------

@dataclass(frozen=True)
class MappedWeights:
    tensors: dict  # name -> torch.Tensor
    mapping: mmap.mmap


def mmap_safetensors(path: Path) -> MappedWeights:
    """Tensors backed by a private (copy-on-write) mapping of the file: nothing is read until used."""
    import torch

    st_dtypes = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "I64": torch.int64}
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    n = int.from_bytes(mm[:8], "little")
    header = json.loads(mm[8:8 + n])
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = st_dtypes[info["dtype"]]
        start, end = info["data_offsets"]
        count = (end - start) // torch.tensor([], dtype=dtype).element_size()
        t = torch.frombuffer(mm, dtype=dtype, count=count, offset=base + start) if count else torch.empty(0, dtype=dtype)
        tensors[name] = t.view(info["shape"])
    return MappedWeights(tensors, mm)
