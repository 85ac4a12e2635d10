"""The OpenPI parameter tree of a variant, as (path -> shape), without allocating anything; derived from the key
table (convert/mapping.py: each row's source leaf and its shape in axis symbols, `axis_sizes`).

Paths are tuples relative to the tree root that OpenPI's `restore_params` returns (no "params" level,
no trailing "value"). Layout: openpi src/openpi/models/{pi0.py:66-103, gemma.py:159-381, siglip.py:75-288,
lora.py:44-148} at commit 15a9616; all params float32 at init (nnx/linen defaults).
"""

from __future__ import annotations

from collections.abc import Mapping

from pibridge.configs import Variant
from pibridge.convert.mapping import axis_sizes, row_shape, rows_for

Path = tuple[str, ...]


def openpi_tree_shapes(variant: Variant) -> dict[Path, tuple[int, ...]]:
    """Every leaf of OpenPI's Pi0 parameter tree for `variant`, in a stable (sorted) order: derived from the key
    table's rows (each row names its source leaf and that leaf's shape in axis symbols; rows sharing a source, e.g.
    kv_einsum's k and v, agree on it)."""
    sizes = axis_sizes(variant)
    tree: dict[Path, tuple[int, ...]] = {}
    for row in rows_for("pi05" if variant.pi05 else "pi0"):
        if row.source is None:
            continue
        shape = row_shape(row, sizes)
        if tree.setdefault(row.source, shape) != shape:
            raise AssertionError(f"key table rows disagree on the shape of {'/'.join(row.source)}")
    return dict(sorted(tree.items()))


def count_params(shapes: dict[Path, tuple[int, ...]]) -> int:
    total = 0
    for shape in shapes.values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def flatten(tree: Mapping, prefix: Path = ()) -> dict[Path, object]:
    """Nested dict -> {path tuple: leaf} (keys as str)."""
    flat: dict[Path, object] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix + (str(key),)))
        else:
            flat[prefix + (str(key),)] = value
    return flat


def nest(flat: Mapping[Path, object]) -> dict:
    """{path tuple: leaf} -> nested dict (inverse of flatten)."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree
