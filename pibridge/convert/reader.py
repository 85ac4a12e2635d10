"""Read OpenPI checkpoints (orbax OCDBT + zarr v2) with tensorstore alone: no jax, no orbax, no torch.

A checkpoint is a step directory holding `params/` (and `assets/`), or that `params/` directory itself.
- Leaf list: key paths and shapes from `params/_METADATA` (orbax tree metadata, `write_shape`), dtypes from
  each leaf's zarr `.zarray` inside the OCDBT store (orbax's own `metadata()` opens them the same way);
  no array data is read.
- Paths are given like OpenPI's `restore_params` returns them (openpi model.py:286-332): without the
  "params" root and, when every leaf ends in "value" (nnx.State saved by training), without that suffix.
- One leaf: zarr driver over an ocdbt kvstore whose base is the params directory, key `params.<dot.path>`
  (older orbax saves without OCDBT keep the same key as a directory under params/: plain file kvstore).
"""

from __future__ import annotations

import ast
import errno
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import ml_dtypes
import numpy as np
import tensorstore as ts

from pibridge.convert import normstats
from pibridge.convert.fingerprint import Fingerprint
from pibridge.convert.tree import nest
from pibridge.errors import PibridgeError

TreePath = tuple[str, ...]
SYNTH_FILE = "pibridge_synth.json"


@dataclass(frozen=True)
class LeafInfo:
    shape: tuple[int, ...]
    dtype: str  # numpy / ml_dtypes name: float32, bfloat16, ...
    nbytes: int
    key: str  # stored array name, e.g. params.PaliGemma.llm.final_norm.scale(.value)
    chunks: tuple[int, ...]


def open_checkpoint(path: Path | str) -> OpenPICheckpoint:
    """Open a step directory or its params/ directory; PibridgeError when it is not an OpenPI checkpoint."""
    path = Path(path)
    _require_directory(path)
    if (path / "params").is_symlink():
        _require_directory(path / "params")
    if (path / "_METADATA").is_file():
        params, root = path, path.parent
    elif (path / "params").is_dir():
        params, root = path / "params", path
    else:
        raise PibridgeError(f"{path} has no params/ directory (and is not one: no _METADATA)",
                            "a checkpoint directory holding params/ (orbax) and assets/",
                            "pass the directory that contains params/, e.g. .../pi05_base or .../<exp>/<step>")
    return OpenPICheckpoint(root=root, params_dir=params, _entries=tuple(_read_metadata(params)))


def _require_directory(path: Path) -> None:
    """PibridgeError for a missing path, a symlink loop / dangling link, or a file where a directory belongs."""
    expected = "an OpenPI checkpoint directory (containing params/) or its params/ directory"
    try:
        path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise PibridgeError(f"checkpoint path {path} is a symlink loop ({err.strerror})", expected,
                                f"point the link at the real checkpoint directory (ls -l {path})") from None
        if path.is_symlink():
            raise PibridgeError(f"checkpoint path {path} is a dangling symlink (to {os.readlink(path)})", expected,
                                "point the link at an existing checkpoint directory") from None
        raise PibridgeError(f"checkpoint path {path} does not exist", expected, "check the path") from None
    if not path.is_dir():
        raise PibridgeError(f"checkpoint path {path} is a file, not a directory", expected,
                            "pass the checkpoint directory (the one holding params/ and assets/)")


def _read_metadata(params: Path) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
    """(full key path, write_shape) of every array leaf in `_METADATA`, in stored (tree) order."""
    meta = params / "_METADATA"
    if not meta.is_file():
        raise PibridgeError(f"{params} has no _METADATA file", "an orbax PyTree checkpoint (_METADATA, manifest.ocdbt, d/)",
                            "the params/ directory is incomplete; copy or download it again")
    try:
        doc = json.loads(meta.read_text())
        entries = []
        for key, entry in doc["tree_metadata"].items():
            value = entry["value_metadata"]
            if value.get("skip_deserialize") or "write_shape" not in value:
                continue
            keypath = tuple(k["key"] for k in entry["key_metadata"]) if "key_metadata" in entry else ast.literal_eval(key)
            entries.append((tuple(str(k) for k in keypath), tuple(int(d) for d in value["write_shape"])))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, SyntaxError,
            AttributeError) as err:
        raise PibridgeError(f"cannot parse {meta}: {type(err).__name__}: {err}",
                            "orbax's _METADATA JSON ({\"tree_metadata\": {...}} with write_shape per array)",
                            "the checkpoint is damaged or not written by orbax; copy or download it again") from None
    roots = sorted({k[0] for k, _ in entries})
    if roots != ["params"]:
        raise PibridgeError(f"{meta} has tree roots {roots}", "a single root 'params' (OpenPI saves {'params': tree})",
                            "pass the params/ item of an OpenPI checkpoint (not train_state/)")
    return entries


@dataclass(frozen=True)
class OpenPICheckpoint:
    root: Path  # the step directory (parent of params/)
    params_dir: Path
    _entries: tuple = field(repr=False)

    @cached_property
    def layout(self) -> str:
        """"training" when every leaf ends in "value" (nnx.State; openpi model.py:327-331), else "released"."""
        return "training" if all(k[-1] == "value" for k, _ in self._entries) else "released"

    @cached_property
    def leaves(self) -> dict[TreePath, LeafInfo]:
        """{path: LeafInfo} in stored order; dtypes from the zarr metadata (no array data)."""
        strip = 1 if self.layout == "training" else 0
        kv = self._kvstore()
        out = {}
        for keypath, shape in self._entries:
            name = ".".join(keypath)
            zarray = self._zarray(kv, name)
            dtype = _zarr_dtype(zarray["dtype"], name)
            out[keypath[1:len(keypath) - strip]] = LeafInfo(shape, dtype.name, math.prod(shape) * dtype.itemsize,
                                                            name, tuple(zarray.get("chunks") or shape))
        return out

    @property
    def n_params(self) -> int:
        return sum(math.prod(i.shape) for i in self.leaves.values())

    def read(self, path: TreePath, dtype: str | np.dtype | None = None) -> np.ndarray:
        """One leaf as a numpy array (stored dtype unless `dtype` is given)."""
        arr = self.read_async(path).result()
        return arr if dtype is None else arr.astype(_np_dtype(dtype))

    def read_async(self, path: TreePath) -> _LeafRead:
        """Start reading one leaf (tensorstore decodes on its own threads); `.result()` gives the array, or a
        PibridgeError naming the leaf when the stored data is missing, truncated or fails to decode."""
        info = self._info(path)
        try:
            return _LeafRead(self._open(info).read(), info.key, self.params_dir)
        except ValueError as err:
            raise _damaged(info.key, self.params_dir, err) from None

    def read_tree(self, dtype: str | np.dtype | None = None) -> dict:
        """Nested dict like OpenPI's restore_params returns (use on tiny models: loads everything)."""
        return nest({path: self.read(path, dtype) for path in self.leaves})

    def iter_leaves(self) -> Iterator[tuple[TreePath, np.ndarray]]:
        """Every leaf, one at a time (memory: the largest leaf)."""
        for path in self.leaves:
            yield path, self.read(path)

    def fingerprint(self) -> str:
        """sha256 fingerprint of the stored values (fingerprint.py), in canonical (sorted path) order."""
        fp = Fingerprint()
        for path in sorted(self.leaves):
            arr = self.read(path)
            fp.add(path, arr)
            del arr
        return fp.hexdigest()

    # --- assets ---

    @cached_property
    def asset_ids(self) -> list[str]:
        """Asset ids with a norm_stats.json under assets/ (nested ids such as physical-intelligence/libero)."""
        assets = self.root / "assets"
        if not assets.is_dir():
            return []
        return sorted(p.parent.relative_to(assets).as_posix() for p in assets.rglob("norm_stats.json"))

    def norm_stats(self, asset_id: str | None = None) -> dict[str, normstats.NormStats]:
        ids = self.asset_ids
        if not ids:
            raise PibridgeError(f"no norm_stats.json under {self.root / 'assets'}",
                                "assets/<asset_id>/norm_stats.json, as OpenPI's training writes it",
                                "copy the checkpoint's assets/ directory too (or compute the stats with OpenPI's "
                                "scripts/compute_norm_stats.py)")
        if asset_id is None:
            if len(ids) != 1:
                raise PibridgeError(f"{len(ids)} norm-stats asset ids in {self.root / 'assets'}: {ids}",
                                    "exactly one, or an --asset-id naming one", "pass --asset-id with one of them")
            asset_id = ids[0]
        if asset_id not in ids:
            raise PibridgeError(f"no assets/{asset_id}/norm_stats.json in {self.root}", f"one of {ids}",
                                "pass an --asset-id that exists, or copy the checkpoint's assets/ directory")
        return normstats.load(self.root / "assets" / asset_id / "norm_stats.json")

    @cached_property
    def synth_record(self) -> dict | None:
        """pibridge_synth.json of a synthetic checkpoint, if present."""
        p = self.root / SYNTH_FILE
        try:
            return json.loads(p.read_text()) if p.is_file() else None
        except (OSError, json.JSONDecodeError):
            return None

    # --- internals ---

    def _info(self, path: TreePath) -> LeafInfo:
        path = tuple(path)
        if path not in self.leaves:
            raise PibridgeError(f"no leaf {'/'.join(path)} in {self.params_dir}",
                                "a path as restore_params returns it (no 'params' root, no trailing 'value')",
                                "run `pibridge inspect CKPT` to list the leaves")
        return self.leaves[path]

    @cached_property
    def _ctx(self) -> ts.Context:
        return ts.Context({"cache_pool": {"total_bytes_limit": 0}})

    def _kvstore_spec(self) -> dict:
        base = {"driver": "file", "path": str(self.params_dir.resolve()) + "/"}
        if not (self.params_dir / "manifest.ocdbt").is_file():  # pre-OCDBT orbax: one zarr directory per leaf
            return base
        return {"driver": "ocdbt", "base": base}

    def _kvstore(self) -> ts.KvStore:
        try:
            return ts.KvStore.open(self._kvstore_spec(), context=self._ctx).result()
        except ValueError as err:
            raise PibridgeError(f"cannot open the OCDBT store in {self.params_dir}: {err}",
                                "manifest.ocdbt and d/ written by orbax (use_ocdbt)",
                                "copy or download the params/ directory again") from None

    def _zarray(self, kv: ts.KvStore, name: str) -> dict:
        try:
            rec = kv.read(f"{name}/.zarray").result()
        except ValueError as err:  # OCDBT b-tree node missing, truncated or failing its CRC-32C
            raise _damaged(name, self.params_dir, err) from None
        if rec.state != "value":
            raise PibridgeError(f"array {name} listed in _METADATA has no zarr metadata in {self.params_dir}",
                                "<name>/.zarray in the OCDBT store", "the checkpoint is incomplete; copy it again")
        try:
            return json.loads(bytes(rec.value))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise _damaged(name, self.params_dir, err) from None

    def _open(self, info: LeafInfo) -> ts.TensorStore:
        kv = self._kvstore_spec()
        kv = dict(kv, path=(kv["path"] if kv["driver"] == "file" else "") + info.key + "/")
        return ts.open({"driver": "zarr", "kvstore": kv}, open=True, read=True, context=self._ctx).result()


@dataclass(frozen=True)
class _LeafRead:
    """A pending leaf read whose `.result()` turns tensorstore's decode errors into a PibridgeError."""

    future: ts.Future
    key: str
    params_dir: Path

    def result(self) -> np.ndarray:
        try:
            return self.future.result()
        except ValueError as err:
            raise _damaged(self.key, self.params_dir, err) from None


def _damaged(name: str, params_dir: Path, err: Exception) -> PibridgeError:
    """The error for stored data that cannot be read back (deleted / truncated data file, zstd frame or OCDBT
    node corruption). Keeps the cause of tensorstore's message: the part after its last quoted file name."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    cause = text.rsplit('": ', 1)[-1].split("; at byte")[0]
    leaf = name.removeprefix("params.").replace(".", "/")
    if "permission denied" in text.lower():
        return PibridgeError(f"checkpoint data of leaf {leaf} in {params_dir} is not readable: {cause}",
                             "data files readable by this user",
                             f"fix the permissions (e.g. chmod -R a+rX {params_dir}) or run as the checkpoint's owner")
    return PibridgeError(f"checkpoint data of leaf {leaf} in {params_dir} is damaged or missing: {cause}",
                         "intact orbax data files (params/d/, params/ocdbt.process_0/d/) as written by the save",
                         "copy or download the checkpoint again (compare file sizes with the source)")


def _zarr_dtype(code: str, name: str) -> np.dtype:
    if code == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    try:
        return np.dtype(code)
    except TypeError:
        raise PibridgeError(f"array {name} has zarr dtype {code!r}", "a numpy / bfloat16 dtype",
                            "this checkpoint uses a dtype pibridge cannot read") from None


def _np_dtype(dtype: str | np.dtype) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if str(dtype) == "bfloat16" else np.dtype(dtype)
