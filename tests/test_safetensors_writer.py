"""The streaming safetensors writer against the safetensors library itself (numpy and torch APIs)."""

from __future__ import annotations

import json
import tracemalloc

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from pibridge.configs import load_variant
from pibridge.convert import safetensors_writer as W
from pibridge.convert.plan import convert_tree, plan_conversion
from pibridge.convert.weights import LeafReader, write_weights
from pibridge.convert.tree import openpi_tree_shapes
from pibridge.errors import PibridgeError


def mixed_dict(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w.bf16": rng.standard_normal((5, 7)).astype(ml_dtypes.bfloat16),
        "a.f32": rng.standard_normal((3, 4, 2)).astype(np.float32),
        "odd.bf16": rng.standard_normal(3).astype(ml_dtypes.bfloat16),  # odd element count
        "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "u8": np.arange(5, dtype=np.uint8),
        "f16": rng.standard_normal(4).astype(np.float16),
    }


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}, {"a": "1", "z": "x y"}])
def test_byte_identical_to_library_numpy(tmp_path, metadata):
    d = mixed_dict()
    save_file(d, tmp_path / "lib.safetensors", metadata=metadata)
    W.write_safetensors(tmp_path / "ours.safetensors", d, metadata)
    ours, lib = (tmp_path / "ours.safetensors").read_bytes(), (tmp_path / "lib.safetensors").read_bytes()
    if metadata is None or len(metadata) <= 1:
        assert ours == lib
    else:  # the library keeps __metadata__ in a Rust HashMap: its key order changes from run to run
        n = int.from_bytes(lib[:8], "little")
        assert len(ours) == len(lib) and ours[:8] == lib[:8] and ours[8 + n:] == lib[8 + n:]
        assert json.loads(ours[8:8 + n]) == json.loads(lib[8:8 + n])
        assert ours[8:8 + n].index(b'"__metadata__"') == lib[8:8 + n].index(b'"__metadata__"') == 1


def test_byte_identical_to_library_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as torch_save

    t = {"x": torch.randn(4, 3).to(torch.bfloat16), "b": torch.randn(5), "n": torch.arange(3)}
    torch_save(t, tmp_path / "lib.safetensors", metadata={"format": "pt"})
    as_np = {k: (v.view(torch.int16).numpy().view(ml_dtypes.bfloat16) if v.dtype == torch.bfloat16 else v.numpy())
             for k, v in t.items()}
    W.write_safetensors(tmp_path / "ours.safetensors", as_np, {"format": "pt"})
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "lib.safetensors").read_bytes()


def test_header_layout():
    h = W.plan_header([W.spec("b", np.float32, (3,)), W.spec("a", ml_dtypes.bfloat16, (2, 2))], {"format": "pt"})
    n = int.from_bytes(h.data[:8], "little")
    assert n == len(h.data) - 8 and n % 8 == 0
    text = h.data[8:].decode()
    assert text.rstrip(" ") == text[: len(text.rstrip(" "))] and " " not in text.rstrip(" ")
    obj = json.loads(text)
    assert list(obj) == ["__metadata__", "b", "a"]  # metadata first, then data order
    assert obj["a"] == {"dtype": "BF16", "shape": [2, 2], "data_offsets": [12, 20]}
    assert h.total_size == 8 + n + 20


def test_given_order_reads_back_with_numpy_and_torch(tmp_path):
    d = mixed_dict(1)
    path = tmp_path / "given.safetensors"
    W.write_safetensors(path, d, {"format": "pt"}, order="given")
    back = load_file(path)
    assert set(back) == set(d) and all(same_bits(back[k], d[k]) for k in d)
    with safe_open(path, "np") as f:
        assert f.metadata() == {"format": "pt"}
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file as torch_load

    tb = torch_load(path)
    bf = tb["w.bf16"]
    assert bf.dtype == torch.bfloat16 and np.array_equal(bf.view(torch.int16).numpy(), d["w.bf16"].view(np.int16))
    assert np.array_equal(tb["a.f32"].numpy(), d["a.f32"])


def test_streaming_chunks_views_casts_and_zeros(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "CHUNK_BYTES", 64)  # force many chunks
    rng = np.random.default_rng(2)
    base = rng.standard_normal((33, 17)).astype(np.float32)
    items = [
        (W.spec("t", np.float32, (17, 33)), base.T),  # non-contiguous view
        (W.spec("z", ml_dtypes.bfloat16, (40, 9)), np.broadcast_to(np.zeros((), np.float32), (40, 9))),
        (W.spec("c", ml_dtypes.bfloat16, (33, 17)), base),  # float32 -> bf16 cast, chunkwise
    ]
    W.stream_safetensors(tmp_path / "s.safetensors", [s for s, _ in items], (a for _, a in items))
    back = load_file(tmp_path / "s.safetensors")
    assert np.array_equal(back["t"], base.T)
    assert back["z"].dtype == ml_dtypes.bfloat16 and not back["z"].astype(np.float32).any()
    assert same_bits(back["c"], base.astype(ml_dtypes.bfloat16))


def test_f32_to_bf16_cast_is_round_to_nearest_even_like_torch():
    torch = pytest.importorskip("torch")
    bits = np.array([0x3F808000, 0x3F818000, 0x3F80FFFF, 0x7F7FFFFF, 0x00000001, 0x80000000], dtype=np.uint32)
    x = np.concatenate([bits.view(np.float32), np.random.default_rng(3).standard_normal(10000).astype(np.float32)])
    ours = next(W._blocks(x, np.dtype(ml_dtypes.bfloat16))).view(np.int16)
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy()
    assert np.array_equal(ours, ref)


def test_memory_stays_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "CHUNK_BYTES", 1 << 20)
    big = np.ones((2048, 4096), dtype=np.float32)  # 32 MiB, written transposed and cast to bf16
    s = W.spec("big", ml_dtypes.bfloat16, (4096, 2048))
    tracemalloc.start()
    W.stream_safetensors(tmp_path / "big.safetensors", [s], [big.T])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4 << 20, peak  # a few 1 MiB chunks, not a 16-32 MiB copy
    assert load_file(tmp_path / "big.safetensors")["big"].shape == (4096, 2048)


def test_errors(tmp_path):
    specs = [W.spec("a", np.float32, (2,)), W.spec("b", np.float32, (3,))]
    with pytest.raises(PibridgeError, match="out of plan"):
        with W.SafetensorsWriter(tmp_path / "e1", specs) as w:
            w.write("b", np.zeros(3, np.float32))
    with pytest.raises(PibridgeError, match="never written"):
        with W.SafetensorsWriter(tmp_path / "e2", specs) as w:
            w.write("a", np.zeros(2, np.float32))
    with pytest.raises(PibridgeError, match="will not cast"):
        with W.SafetensorsWriter(tmp_path / "e3", specs[:1]) as w:
            w.write("a", np.zeros(2, np.int32))
    with pytest.raises(PibridgeError, match="duplicate"):
        W.plan_header(specs + specs[:1])
    with pytest.raises(PibridgeError, match="str to str"):
        W.plan_header(specs, {"a": 1})


@pytest.mark.parametrize("weights_dtype", ["float32", "bfloat16"])
def test_write_weights_tiny_pi05(tmp_path, weights_dtype):
    rng = np.random.default_rng(4)
    shapes = openpi_tree_shapes(load_variant("tiny-pi05"))
    tree = {p: rng.standard_normal(s, dtype=np.float32) for p, s in shapes.items()}
    plan = plan_conversion({p: a.shape for p, a in tree.items()}, weights_dtype=weights_dtype)
    header, _ = write_weights(plan, tree.__getitem__, tmp_path / "model.safetensors")
    _, ref = convert_tree(tree, weights_dtype=weights_dtype)
    back = load_file(tmp_path / "model.safetensors")
    assert list(back) and set(back) == set(ref) == set(plan.keys)
    assert all(same_bits(back[k], ref[k]) for k in ref)
    assert (tmp_path / "model.safetensors").stat().st_size == header.total_size
    with safe_open(tmp_path / "model.safetensors", "np") as f:
        assert f.metadata() == {"format": "pt"}


def test_write_weights_holds_one_source_leaf_at_a_time(tmp_path):
    import weakref

    rng = np.random.default_rng(5)
    shapes = openpi_tree_shapes(load_variant("tiny-pi0"))
    tree = {p: rng.standard_normal(s, dtype=np.float32) for p, s in shapes.items()}
    plan = plan_conversion({p: a.shape for p, a in tree.items()}, weights_dtype="bfloat16")
    alive: list[weakref.ref] = []

    def read(path):
        assert all(r() is None for r in alive), "a previous leaf is still referenced during the next read"
        leaf = tree[path].copy()  # a fresh array, as a reader returns
        alive.append(weakref.ref(leaf))
        return leaf

    write_weights(plan, read, tmp_path / "model.safetensors")
    assert len(alive) == len(tree)


@pytest.mark.parametrize("layout,dtype", [("released", "float32"), ("training", "bfloat16")])
def test_convert_a_synthetic_checkpoint_through_the_reader(tmp_path, layout, dtype):
    """OpenPI-layout checkpoint on disk -> reader -> plan -> ONE model.safetensors -> inverse == stored tree."""
    from pibridge.convert.lerobot_normstats import build_normalizer_states
    from pibridge.convert.plan import inverse_convert
    from pibridge.convert.reader import open_checkpoint
    from pibridge.convert.synth import write_synthetic_checkpoint

    write_synthetic_checkpoint(tmp_path / "ckpt", variant="tiny-pi0", seed=3, dtype=dtype, layout=layout)
    ck = open_checkpoint(tmp_path / "ckpt")
    plan = plan_conversion(ck.leaves, weights_dtype="float32")
    assert plan.model == "pi0" and plan.variant == load_variant("tiny-pi0") and plan.accounting.complete
    write_weights(plan, ck.read, tmp_path / "model.safetensors")
    back, acc = inverse_convert(load_file(tmp_path / "model.safetensors"), plan.variant)
    assert acc.complete
    for p in ck.leaves:  # float32 output holds bf16-stored leaves exactly
        assert same_bits(back[p], ck.read(p).astype(np.float32)), p
    stats = ck.norm_stats()
    n_state, n_action = stats["state"].dim, stats["actions"].dim
    states = build_normalizer_states(stats, state_dim=n_state, action_dim=n_action, fold_eps=True)
    assert states.pre["observation.state.mean"].shape == (n_state,)
