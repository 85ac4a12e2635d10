"""Input written by OpenPI's own PyTorch converter (examples/convert_jax_model_to_pytorch.py): a directory with
model.safetensors (LeRobot's keys without the `model.` prefix; `paligemma.lm_head.weight` stored instead of the tied
`embed_tokens`; gemma_expert.lm_head optional), a small config.json {action_dim, action_horizon, paligemma_variant,
action_expert_variant, precision} and, when the user copied it, assets/<asset_id>/norm_stats.json
(openpi.md 3.1-3.2; lerobot.md 5).

`OpenPITorchCheckpoint` offers the reader interface of `OpenPICheckpoint` (`leaves`, `read`, norm stats), rebuilding
each stacked OpenPI leaf on demand from the memory-mapped file through the inverse of the key table, so the rest of
the converter is unchanged and memory stays at about one leaf.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from pibridge.configs import load_variant
from pibridge.convert import normstats
from pibridge.convert import transforms as T
from pibridge.convert.detect import Detection
from pibridge.convert.plan import NP_DTYPES, plan_conversion
from pibridge.convert.reader import LeafInfo
from pibridge.convert.tree import openpi_tree_shapes
from pibridge.errors import PibridgeError

PREFIX = "model."
EMBED = "paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"
LM_HEAD = "paligemma_with_expert.paligemma.lm_head.weight"
ST_DTYPES = {"F32": "float32", "BF16": "bfloat16"}


def is_openpi_torch_dir(path: Path) -> bool:
    cfg = Path(path) / "config.json"
    if not (Path(path) / "model.safetensors").is_file() or not cfg.is_file():
        return False
    try:
        raw = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return "paligemma_variant" in raw and "type" not in raw  # LeRobot configs carry "type"


@dataclass(frozen=True)
class OpenPITorchCheckpoint:
    root: Path
    _header: dict = field(repr=False)

    layout = "openpi-pytorch"
    synth_record = None

    @classmethod
    def open(cls, root: Path) -> OpenPITorchCheckpoint:
        from safetensors import safe_open

        with safe_open(str(Path(root) / "model.safetensors"), "np") as f:
            header = {k.removeprefix(PREFIX): (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype(), k)
                      for k in f.keys()}
        return cls(Path(root), header)

    @cached_property
    def detection(self) -> Detection:
        """The shipped variant whose planned key shapes match the file (OpenPI's converter itself hard-codes
        gemma_2b + gemma_300m, openpi.md 3.4; tiny sizes come from tests and are refused later unless allowed)."""
        pi05 = any(".input_layernorm.dense." in k for k in self._header) or "time_mlp_in.weight" in self._header
        model = "pi05" if pi05 else "pi0"
        for name in (model, f"tiny-{model}"):
            det = Detection(model, load_variant(name), ("openpi-pytorch layout",))
            plan = self._plan_for(det)
            if all(self._header.get(self._file_key(t.key), (None,))[0] == t.shape
                   for t in plan.tensors if t.source is not None):
                return det
        raise PibridgeError(f"{self.root / 'model.safetensors'} matches no known {model} size",
                            "a file written by OpenPI's convert_jax_model_to_pytorch.py (gemma_2b + gemma_300m)",
                            "convert the JAX checkpoint directly with pibridge convert")

    def _plan_for(self, det: Detection):
        vision_model = any(".vision_tower.vision_model." in k for k in self._header)
        return plan_conversion(openpi_tree_shapes(det.variant), transformers_version="5.5.4" if vision_model else "5.6.0",
                               detection=det)

    @cached_property
    def _plan(self):
        return self._plan_for(self.detection)

    def _file_key(self, key: str) -> str:
        key = key.removeprefix(PREFIX)
        return LM_HEAD if key == EMBED and key not in self._header else key  # tied: only lm_head is stored

    @cached_property
    def leaves(self) -> dict[tuple[str, ...], LeafInfo]:
        out = {}
        missing = []
        for path, shape in openpi_tree_shapes(self.detection.variant).items():
            parts = [t for t in self._plan.tensors if t.source == path]
            keys = [self._file_key(t.key) for t in parts]
            absent = [k for k in keys if k not in self._header]
            if absent:
                missing += absent
                continue
            dtype = ST_DTYPES[self._header[keys[0]][1]]
            out[path] = LeafInfo(shape, dtype, math.prod(shape) * NP_DTYPES[dtype].itemsize, keys[0], shape)
        if missing:
            raise PibridgeError(f"{self.root / 'model.safetensors'} lacks {len(missing)} tensors (e.g. {missing[:3]})",
                                "a complete file written by OpenPI's convert_jax_model_to_pytorch.py",
                                "convert again with OpenPI's converter, or convert the JAX checkpoint directly")
        return out

    @property
    def n_params(self) -> int:
        return sum(math.prod(i.shape) for i in self.leaves.values())

    def read(self, path: tuple[str, ...], dtype=None) -> np.ndarray:
        from safetensors import safe_open

        info = self.leaves[tuple(path)]
        leaf = np.empty(info.shape, NP_DTYPES[info.dtype])
        with safe_open(str(self.root / "model.safetensors"), "np") as f:
            for t in (t for t in self._plan.tensors if t.source == tuple(path)):
                y = f.get_tensor(self._header[self._file_key(t.key)][2])
                x = T.get_transform(t.transform).inverse(y, t.source_shape)
                idx = tuple(i for i in (t.layer, t.part) if i is not None)
                leaf[idx] = x  # tied copies write the same slot twice with equal values
        return leaf if dtype is None else leaf.astype(dtype)

    @cached_property
    def asset_ids(self) -> list[str]:
        assets = self.root / "assets"
        return sorted(p.parent.relative_to(assets).as_posix() for p in assets.rglob("norm_stats.json")) \
            if assets.is_dir() else []

    def norm_stats(self, asset_id: str | None = None):
        ids = self.asset_ids
        if asset_id is None and len(ids) != 1:
            raise PibridgeError(f"{len(ids)} norm-stats asset ids in {self.root / 'assets'}: {ids}",
                                "exactly one, or an --asset-id naming one",
                                "copy the JAX checkpoint's assets/ next to model.safetensors (OpenPI's converter "
                                "copies them from the wrong directory, openpi issue #810), or pass --asset-id")
        asset_id = asset_id or ids[0]
        if asset_id not in ids:
            raise PibridgeError(f"no assets/{asset_id}/norm_stats.json in {self.root}", f"one of {ids}",
                                "pass an --asset-id that exists")
        return normstats.load(self.root / "assets" / asset_id / "norm_stats.json")
