"""Write orbax-checkpoint PyTree items (OCDBT kvstore + zarr v2 arrays) without jax or orbax.

Mirrors orbax-checkpoint 0.11.13, the version OpenPI pins (openpi pyproject.toml:8-41, uv override),
as observed by saving trees with it (and with 0.12.8) and spying on its tensorstore specs:
  <item>/ocdbt.process_0/            per-process OCDBT store the arrays are written to
                                     (kvstore config: manifest_kind single, max_inline_value_bytes 1024,
                                     max_decoded_node_bytes 1e8; zarr v2, compressor zstd level 1)
  <item>/manifest.ocdbt, <item>/d/   root OCDBT store, made by copying the per-process store's keys into it
                                     (orbax type_handlers.merge_ocdbt_per_process_files)
  <item>/_METADATA                   tree_metadata in pytree flatten order; 0.11.13 writes no "use_ocdbt" key
  <item>/_sharding                   {base64(param name): sharding JSON string}, keys sorted (tensorstore json)
  <item>/array_metadatas/process_0   write_shape / chunk_shape per array, in tree order
Key of an array: its key path joined with "." (e.g. `params.PaliGemma.llm.final_norm.scale`), stored as
zarr keys `<name>/.zarray` and `<name>/<chunk index>` inside the OCDBT store.
Chunking follows orbax 0.11.13 (serialization/tensorstore_utils.py calculate_chunk_byte_size +
arrays/subchunking.py choose_chunk_shape) for an unsharded (single-device) array: one chunk per array,
except that an array above the OCDBT target data-file size (2 GiB) is split by repeatedly halving (next
smaller divisor of) its currently largest axis until a chunk fits. The released pi05_base checkpoint
(gs://openpi-assets, object sizes of params/array_metadatas/process_0 and _METADATA) matches this exactly.

Why 0.11.13 and not 0.12.8 (installed in the project venv): OpenPI's restore_params only works with
0.11.x, released OpenPI checkpoints have 0.11-era files (no `use_ocdbt` key, no commit_success text), and
both orbax versions read this layout (tests/test_synth.py, tools/validate_openpi_restore.py).
Deliberate difference: small arrays are committed in groups of up to 64 MiB and larger ones chunk by
chunk, where orbax commits one transaction for the whole tree; only the number and names of the
content-addressed files under ocdbt.process_0/d/ differ (names differ between two orbax saves too), and
memory stays bounded by about two chunks (<= 2 x 2 GiB) instead of the whole model.
"""

from __future__ import annotations

import base64
import ctypes
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorstore as ts

KeyPath = tuple[str, ...]
Shape = tuple[int, ...]
Box = tuple[slice, ...]

ORBAX_VERSION_MIRRORED = "0.11.13"
TARGET_DATA_FILE_SIZE = 2**31  # orbax tensorstore_utils._DEFAULT_OCDBT_TARGET_DATA_FILE_SIZE
GROUP_BYTES = 64 << 20  # arrays up to this size are committed together (orbax: one transaction for all)
ZARR_COMPRESSOR = {"id": "zstd", "level": 1}
OCDBT_CONFIG = {"manifest_kind": "single", "max_decoded_node_bytes": 100000000, "max_inline_value_bytes": 1024}
PROCESS_DIR = "ocdbt.process_0"
PYTREE_HANDLER = "orbax.checkpoint._src.handlers.pytree_checkpoint_handler.PyTreeCheckpointHandler"

# Sharding records (orbax sharding_metadata NamedShardingMetadata.to_serialized_string), one device:
# - released checkpoints: params restored by restore_params (replicated over Mesh(jax.devices(), ("x",)),
#   openpi model.py:307-309) and saved again; matches the released pi05_base _sharding size exactly.
SHARDING_RELEASED = ('{"sharding_type": "NamedSharding", "shape": [1], "axis_names": ["x"], '
                     '"partition_spec": [], "device_mesh": {"mesh": [{"id": 0}]}}')
# - training checkpoints: OpenPI's (batch, fsdp) mesh (openpi training/sharding.py make_mesh) on one device,
#   every param replicated (fsdp_sharding returns PartitionSpec() when the fsdp axis has size 1).
SHARDING_TRAINING = ('{"sharding_type": "NamedSharding", "shape": [1, 1], "axis_names": ["batch", "fsdp"], '
                     '"partition_spec": [], "device_mesh": {"mesh": [[{"id": 0}]]}}')


def ts_dtype_name(dtype: np.dtype) -> str:
    """tensorstore / orbax dtype name: float32, bfloat16, int32, ..."""
    return np.dtype(dtype).name


def orbax_chunk_shape(shape: Shape, itemsize: int, target_bytes: int = TARGET_DATA_FILE_SIZE) -> Shape:
    """The zarr chunk shape orbax 0.11.13 picks for an unsharded array (module docstring)."""
    chunk = [max(1, d) for d in shape]
    if math.prod(chunk) * itemsize <= target_bytes:
        return tuple(chunk)
    divisors = [[k for k in range(1, d + 1) if d % k == 0] for d in chunk]
    target_elements = target_bytes // itemsize
    while math.prod(chunk) > target_elements:
        axis = max(range(len(chunk)), key=lambda i: (chunk[i], -i))  # largest axis, first one on ties
        if chunk[axis] == 1:
            break
        chunk[axis] = divisors[axis][divisors[axis].index(chunk[axis]) - 1]
    return tuple(chunk)


def chunk_boxes(shape: Shape, chunks: Shape) -> Iterator[Box]:
    """The chunk regions of an array, in C order of the chunk grid."""
    grid = [range(0, d, c) for d, c in zip(shape, chunks)]
    for starts in np.ndindex(*[len(g) for g in grid]) if shape else [()]:
        yield tuple(slice(g[i], min(g[i] + c, d)) for g, i, c, d in zip(grid, starts, chunks, shape))


def kvstore_spec(item_dir: Path, *, process: bool, write: bool) -> dict:
    """OCDBT kvstore over `item_dir` (or its per-process store), as orbax 0.11.13 builds it."""
    base = os.path.abspath(item_dir / PROCESS_DIR if process else item_dir)
    spec: dict = {"driver": "ocdbt", "base": {"driver": "file", "path": base + "/"}, "cache_pool": "cache_pool#ocdbt"}
    if write:
        spec.update(config=dict(OCDBT_CONFIG), assume_config=True)
    return spec


def ts_context() -> ts.Context:
    return ts.Context({"file_io_concurrency": {"limit": 128}, "cache_pool#ocdbt": {"total_bytes_limit": 100000000}})


def checkpoint_metadata_json(item_handlers: str | dict[str, str]) -> str:
    """_CHECKPOINT_METADATA of a PyTreeCheckpointer save (str) or a CheckpointManager step (dict)."""
    now = time.time_ns()
    return json.dumps({"item_handlers": item_handlers, "metrics": {}, "performance_metrics": {},
                       "init_timestamp_nsecs": now, "commit_timestamp_nsecs": now, "custom_metadata": {}})


@dataclass(frozen=True)
class WrittenArray:
    keypath: KeyPath
    shape: Shape
    dtype: str
    chunks: Shape | None  # None for a None leaf (no data, skip_deserialize)


class PyTreeItemWriter:
    """Write one orbax PyTree item directory (e.g. `params/`) leaf by leaf; call `finish()` once at the end.

    Leaves must be added in the order orbax flattens the tree (sorted keys for dicts, field order for
    dataclasses): `_METADATA` and `array_metadatas` keep the insertion order.
    """

    def __init__(self, item_dir: Path, sharding_json: str):
        self.item_dir = Path(item_dir)
        self.sharding_json = sharding_json
        self.written: list[WrittenArray] = []
        self._ctx = ts_context()
        self._txn: ts.Transaction | None = None
        self._txn_bytes = 0
        (self.item_dir / PROCESS_DIR).mkdir(parents=True, exist_ok=True)

    def write_array(self, keypath: KeyPath, shape: Shape, dtype: np.dtype,
                    fill: Callable[[Box], np.ndarray], on_chunk: Callable[[int], None] | None = None) -> Shape:
        """Create the zarr array `<dot.joined keypath>` and write it chunk by chunk from `fill(box)`.

        Small arrays share one transaction (up to GROUP_BYTES, fewer OCDBT files); a larger array commits
        chunk by chunk, so at most one chunk (plus its compressed copy) is in memory. Returns the chunk shape.
        """
        dtype = np.dtype(dtype)
        chunks = orbax_chunk_shape(tuple(shape), dtype.itemsize)
        txn = self._transaction_for(math.prod(shape) * dtype.itemsize)
        store = ts.open(self._zarr_spec(keypath, shape, dtype, chunks), create=True, open=True,
                        context=self._ctx, transaction=txn).result()
        for box in chunk_boxes(tuple(shape), chunks):
            block = np.asarray(fill(box), dtype=dtype)
            if not block.flags.c_contiguous:
                block = block.copy()
            store[box].write(block, can_reference_source_data_indefinitely=True).result()
            if on_chunk is not None:
                on_chunk(block.nbytes)
            big = block.nbytes > GROUP_BYTES
            del block
            if big:
                release_freed_memory()
        self.written.append(WrittenArray(tuple(keypath), tuple(shape), ts_dtype_name(dtype), chunks))
        return chunks

    def add_none(self, keypath: KeyPath) -> None:
        """A None leaf (orbax records value_type "None", skip_deserialize, and stores nothing)."""
        self.written.append(WrittenArray(tuple(keypath), (), "None", None))

    def _transaction_for(self, nbytes: int) -> ts.Transaction | None:
        if nbytes > GROUP_BYTES or self._txn_bytes + nbytes > GROUP_BYTES:
            self._commit()
        if nbytes > GROUP_BYTES:
            return None
        if self._txn is None:
            self._txn = ts.Transaction(atomic=True)
        self._txn_bytes += nbytes
        return self._txn

    def _commit(self) -> None:
        if self._txn is not None:
            self._txn.commit_async().result()
        self._txn, self._txn_bytes = None, 0

    def finish(self) -> None:
        """Merge the per-process store into the root store, then write the orbax JSON files."""
        self._commit()
        self._merge_process_store()
        (self.item_dir / "_sharding").write_text(sharding_document(self.written, self.sharding_json))
        (self.item_dir / "array_metadatas").mkdir(exist_ok=True)
        (self.item_dir / "array_metadatas" / "process_0").write_text(array_metadatas_document(self.written))
        (self.item_dir / "_METADATA").write_text(json.dumps(tree_metadata(self.written)))

    def _zarr_spec(self, keypath: KeyPath, shape: Shape, dtype: np.dtype, chunks: Shape) -> dict:
        kv = kvstore_spec(self.item_dir, process=True, write=True)
        kv["path"] = ".".join(keypath) + "/"
        return {"driver": "zarr", "kvstore": kv, "dtype": ts_dtype_name(dtype),
                "metadata": {"chunks": list(chunks), "compressor": dict(ZARR_COMPRESSOR), "shape": list(shape)},
                "recheck_cached_data": False, "recheck_cached_metadata": False,
                "store_data_equal_to_fill_value": True}

    def _merge_process_store(self) -> None:
        child = ts.KvStore.open(kvstore_spec(self.item_dir, process=True, write=False), context=self._ctx).result()
        parent = ts.KvStore.open(kvstore_spec(self.item_dir, process=False, write=True), context=self._ctx).result()
        txn = ts.Transaction(atomic=True)
        child.experimental_copy_range_to(parent.with_transaction(txn)).result()
        txn.commit_async().result()


def release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc malloc_trim). tensorstore compresses a chunk into many small
    buffers allocated in per-thread arenas; once freed, glibc keeps them resident, so without this the
    peak RSS of a full-size write grows from ~2 chunks to ~3-4 chunks. No-op where glibc is absent."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def tree_metadata(written: list[WrittenArray]) -> dict:
    """The `_METADATA` document of orbax 0.11.13 (string-keyed dict levels: key_type 2)."""
    entries = {}
    for w in written:
        value = ({"value_type": "None", "skip_deserialize": True} if w.chunks is None else
                 {"value_type": "jax.Array", "skip_deserialize": False, "write_shape": list(w.shape)})
        entries[str(w.keypath)] = {"key_metadata": [{"key": k, "key_type": 2} for k in w.keypath],
                                   "value_metadata": value}
    return {"tree_metadata": entries, "use_zarr3": False, "store_array_data_equal_to_fill_value": True,
            "custom_metadata": None}


def sharding_document(written: list[WrittenArray], sharding_json: str) -> str:
    """`_sharding`: {base64(param name): sharding JSON string}, compact, keys sorted (tensorstore json driver)."""
    names = [".".join(w.keypath) for w in written if w.chunks is not None]
    doc = {base64.b64encode(n.encode()).decode(): sharding_json for n in names}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def array_metadatas_document(written: list[WrittenArray]) -> str:
    """`array_metadatas/process_0`: write and chunk shape of every array, in tree order."""
    return json.dumps({"array_metadatas": [
        {"array_metadata": {"param_name": ".".join(w.keypath), "write_shape": list(w.shape),
                            "chunk_shape": list(w.chunks), "ext_metadata": None}}
        for w in written if w.chunks is not None]})
