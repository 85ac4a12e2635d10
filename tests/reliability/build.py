"""Inputs for the bad-input cases: one shared set built once (a tiny synthetic checkpoint, an OpenPI tree writer
for arbitrary leaf sets, observations, traces) and the per-case mutations of copies of it.

Copies share file data with the originals (hard links); every mutation here REPLACES a file (unlink, write new)
instead of editing it in place, so a case never changes the shared inputs. Numpy / tensorstore only (no jax).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pibridge.configs import load_variant
from pibridge.convert.ocdbt import PYTREE_HANDLER, SHARDING_RELEASED, PyTreeItemWriter, checkpoint_metadata_json
from pibridge.convert.synth import write_synthetic_checkpoint
from pibridge.convert.tree import openpi_tree_shapes
from pibridge.parity import stages as st
from pibridge.parity.observation import OBS_KEY, save_observation, synthetic_observation
from pibridge.parity.stages import Stage
from pibridge.parity.tensorfile import save_tensors
from pibridge.parity.trace import write_trace

Path_ = tuple[str, ...]
PROFILE = "pi05_droid"
CAMS = "base_0_rgb=top,left_wrist_0_rgb=wrist"
LEAF_VALUE = 0.02  # tree-writer leaves are constant: fast to write, finite, and only shapes matter to detection
TOKENIZER = Path(__file__).resolve().parents[1] / "data" / "test_spm.model"


@dataclass(frozen=True)
class Shared:
    """Inputs built once per session, used read-only (copied per case)."""

    root: Path
    ck: Path  # tiny-pi05 synthetic checkpoint (profile pi05_droid, asset id droid)
    obs: Path  # a valid observation for pi05_droid, batch 1, small camera images
    out: Path  # `ck` converted by pibridge (profile pi05_droid, cameras CAMS): an OUT --force may replace


def build_shared(root: Path) -> Shared:
    root.mkdir(parents=True, exist_ok=True)
    ck = root / "ck"
    if not ck.exists():
        write_synthetic_checkpoint(ck, variant="tiny-pi05", profile=PROFILE, asset_id="droid", progress=False)
    obs = root / "obs.safetensors"
    if not obs.exists():
        save_observation(obs, synthetic_observation(batch=1, horizon=15, state_dim=8, seed=0,
                                                    image_sizes={"base_0_rgb": (24, 32), "left_wrist_0_rgb": (12, 16)}))
    out = root / "out"
    if not out.exists():
        from pibridge.convert.convert import ConvertRequest, convert

        convert(ConvertRequest(ckpt=ck, out=out, profile=PROFILE, camera_map=CAMS, allow_tiny=True))
    return Shared(root, ck, obs, out)


# --- copies and hashes ------------------------------------------------------------------------------------

def link_copy(src: Path, dst: Path) -> Path:
    """Copy a tree with hard links (no data copied); mutate the copy only through replace_file / unlink."""
    shutil.copytree(src, dst, copy_function=os.link, symlinks=True)
    return dst


def replace_file(path: Path, data: bytes) -> None:
    """Write `data` as a new file at `path` (never through a hard link to a shared file)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def tree_digest(path: Path) -> str:
    """sha256 over every entry under `path` (relative name, kind, symlink target or file bytes); 'absent' if none."""
    if not os.path.lexists(path):
        return "absent"
    h = hashlib.sha256()
    entries = [path] if not path.is_dir() or path.is_symlink() else \
        [path] + sorted(Path(d) / n for d, dirs, files in os.walk(path) for n in dirs + files)
    for p in entries:
        h.update(str(p.relative_to(path.parent)).encode() + b"\0")
        if p.is_symlink():
            h.update(b"L" + os.readlink(p).encode())
        elif p.is_file():
            h.update(b"F" + hashlib.sha256(p.read_bytes()).digest())
        else:
            h.update(b"D")
    return h.hexdigest()


def temp_siblings(out: Path) -> list[str]:
    """pibridge's atomic-write leftovers beside `out` (.<name>.pibridge-tmp-* / -old-*)."""
    if not out.parent.is_dir():
        return []
    return sorted(p.name for p in out.parent.glob(f".{out.name}.pibridge-*"))


# --- checkpoint mutations -----------------------------------------------------------------------------------

def data_files(ck: Path) -> list[Path]:
    """The per-process OCDBT data files (the leaf chunks), largest first."""
    return sorted((ck / "params" / "ocdbt.process_0" / "d").iterdir(), key=lambda p: -p.stat().st_size)


def node_file(ck: Path) -> Path:
    """The root OCDBT store's data file (b-tree nodes, CRC-32C protected)."""
    return next((ck / "params" / "d").iterdir())


def truncate(path: Path, size: int) -> None:
    replace_file(path, path.read_bytes()[:size])


def flip_bit(path: Path, offset: int, bit: int = 4) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 1 << bit
    replace_file(path, bytes(data))


def write_norm_stats(ck: Path, asset_id: str, text: str) -> None:
    d = ck / "assets" / asset_id
    d.mkdir(parents=True, exist_ok=True)
    replace_file(d / "norm_stats.json", text.encode())


def edit_norm_stats(ck: Path, edit) -> None:
    """Apply `edit(doc)` to assets/droid/norm_stats.json (a copy)."""
    p = ck / "assets" / "droid" / "norm_stats.json"
    doc = json.loads(p.read_text())
    edit(doc["norm_stats"])
    replace_file(p, json.dumps(doc, indent=2).encode())


# --- arbitrary OpenPI trees ---------------------------------------------------------------------------------

def tiny_shapes(variant: str = "tiny-pi05") -> dict[Path_, tuple[int, ...]]:
    return dict(openpi_tree_shapes(load_variant(variant)))


def write_tree(dst: Path, shapes: dict[Path_, tuple[int, ...]], assets_from: Path,
               poison: tuple[Path_, float] | None = None) -> Path:
    """A released-layout OpenPI checkpoint holding exactly `shapes` (float32, constant LEAF_VALUE), written in
    orbax's layout by pibridge's OCDBT writer; `poison` = (leaf, value) puts `value` into that leaf's element 0."""
    writer = PyTreeItemWriter(dst / "params", SHARDING_RELEASED)
    for path in sorted(shapes):
        shape = shapes[path]

        def fill(box, path=path):
            block = np.full(tuple(s.stop - s.start for s in box), LEAF_VALUE, np.float32)
            if poison and path == poison[0] and all(s.start == 0 for s in box):
                block.reshape(-1)[0] = poison[1]
            return block

        writer.write_array(("params",) + path, shape, np.dtype(np.float32), fill)
    writer.finish()
    (dst / "params" / "_CHECKPOINT_METADATA").write_text(checkpoint_metadata_json(PYTREE_HANDLER))
    (dst / "params" / "commit_success.txt").write_text("")
    shutil.copytree(assets_from / "assets", dst / "assets")
    return dst


def fast_shapes() -> dict[Path_, tuple[int, ...]]:
    """pi0-FAST: PaliGemma alone, no action expert (no *_1 leaves, no action / state / time heads)."""
    heads = {"action_in_proj", "action_out_proj", "state_proj", "action_time_mlp_in", "action_time_mlp_out"}
    return {p: s for p, s in tiny_shapes("tiny-pi0").items()
            if not (any(x.endswith("_1") for x in p) or p[0] in heads)}


# --- observations and traces --------------------------------------------------------------------------------

def write_raw_observation(path: Path, images: dict[str, np.ndarray], prompt: str = "pick up the block") -> None:
    """An observation file with these images, written WITHOUT the observation writer's validation (what a
    foreign producer could write): batch 1, horizon 15, state dim 8."""
    tensors = {f"image/{s}": v for s, v in images.items()}
    tensors.update(image_mask=np.ones((1, len(images)), np.uint8), state=np.zeros((1, 8), np.float32),
                   noise=np.zeros((1, 15, 32), np.float32))
    save_tensors(path, tensors, OBS_KEY, {"format": 1, "slots": list(images), "prompts": [prompt], "seed": 0})


def write_valid_observation(path: Path, prompt: str, sizes: dict[str, tuple[int, int]]) -> None:
    save_observation(path, synthetic_observation(batch=1, horizon=15, state_dim=8, seed=0, prompts=[prompt],
                                                 image_sizes=sizes))


def trace_stages(names: tuple[str, ...] = (st.INPUT_STATE, st.IMG_EMBED, st.ACTIONS), scale: float = 0.0,
                 shapes: dict[str, tuple[int, ...]] | None = None) -> list[Stage]:
    """Deterministic stage values; `scale` adds that much (relative) disagreement to every stage."""
    out = []
    for name in names:
        shape = (shapes or {}).get(name, (1, 4, 8))
        base = np.linspace(-1.0, 1.0, int(np.prod(shape)), dtype=np.float32).reshape(shape) + len(name) % 5
        out.append(Stage(name, base + scale * np.cos(np.arange(base.size, dtype=np.float32)).reshape(shape), None, 0.0))
    return out


def write_trace_file(path: Path, stages: list[Stage]) -> Path:
    write_trace(path, stages, {"stack": "synthetic", "precision": "float32"})
    return path
