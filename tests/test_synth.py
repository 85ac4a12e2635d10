"""`pibridge synth`: orbax reads what it writes, the layout is orbax's, the weights are pinned and sane.

orbax-checkpoint here is the project venv's (0.12.8); OpenPI's pinned 0.11.13 and restore_params are checked
by tools/validate_openpi_restore.py (run in a scratch venv with OpenPI's pins).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from pibridge.cli import main
from pibridge.configs import load_variant
from pibridge.convert import ocdbt, synth_weights
from pibridge.convert.reader import open_checkpoint
from pibridge.convert.synth import write_synthetic_checkpoint
from pibridge.convert.tree import flatten, count_params, openpi_tree_shapes
from pibridge.errors import PibridgeError

PINNED = {  # tiny-pi05, seed 0, no options: changes only if the formula, plan or numpy/ml_dtypes arithmetic changes
    "float32": "sha256:4b726c6eebd18c046ad647e875e3c49c19daaffa27fe3e3798bdaebb9c866f61",
    "bfloat16": "sha256:a021d8b38e7a6745e7a06c48743da1f40186f2b2177efab9570f04918d85d8f9",
}
CASES = [(d, lay) for d in ("float32", "bfloat16") for lay in ("released", "training")]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("synth")
    out = {}
    for dtype, layout in CASES:
        out[(dtype, layout)] = root / f"{dtype}-{layout}"
        write_synthetic_checkpoint(out[(dtype, layout)], variant="tiny-pi05", dtype=dtype, layout=layout,
                                   asset_id="physical-intelligence/libero")
    return out



def _bits(a) -> bytes:
    return np.ascontiguousarray(a).tobytes()


@pytest.mark.parametrize("dtype,layout", CASES)
def test_orbax_restores_synth_identically_to_reader(written, dtype, layout):
    ocp = pytest.importorskip("orbax.checkpoint")
    ck = open_checkpoint(written[(dtype, layout)])
    with ocp.PyTreeCheckpointer() as c:
        meta = dict(c.metadata(ck.params_dir).item_metadata)
        restored = c.restore(ck.params_dir, args=ocp.args.PyTreeRestore(item=meta, restore_args={
            "params": _map_tree(meta["params"], lambda _: ocp.RestoreArgs(restore_type=np.ndarray))}))
    flat = flatten(restored["params"])
    strip = (lambda k: k[:-1]) if layout == "training" else (lambda k: k)
    assert all(k[-1] == "value" for k in flat) == (layout == "training")
    assert {strip(k) for k in flat} == set(ck.leaves) == set(openpi_tree_shapes(load_variant("tiny-pi05")))
    for key, arr in flat.items():
        ours = ck.read(strip(key))
        assert arr.dtype == ours.dtype == np.dtype(dtype if dtype == "float32" else ml_dtypes.bfloat16)
        assert arr.shape == ours.shape and _bits(arr) == _bits(ours), key
    md = flatten(meta["params"])
    assert {strip(k): (tuple(m.shape), str(m.dtype)) for k, m in md.items()} == \
        {p: (i.shape, i.dtype) for p, i in ck.leaves.items()}


def _map_tree(tree, fn):
    return {k: _map_tree(v, fn) if isinstance(v, dict) else fn(v) for k, v in dict(tree).items()}


def _orbax_save(tree: dict, out: Path, layout: str) -> Path:
    """Save {"params": tree} with orbax itself, sharded as OpenPI's releases / training runs are."""
    jax = pytest.importorskip("jax")
    ocp = pytest.importorskip("orbax.checkpoint")
    if layout == "released":
        mesh = jax.sharding.Mesh(jax.devices(), ("x",))  # restore_params' mesh (openpi model.py:307-309)
    else:
        mesh = jax.make_mesh((1, 1), ("batch", "fsdp"))  # openpi training/sharding.py make_mesh on one device
    sharded = jax.device_put({"params": tree}, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    if layout == "released":
        with ocp.PyTreeCheckpointer() as c:
            c.save(out / "params", sharded)
        return out
    mngr = ocp.CheckpointManager(out, item_handlers={"params": ocp.PyTreeCheckpointHandler()},
                                 options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
    mngr.save(1000, args=ocp.args.Composite(params=ocp.args.PyTreeSave(sharded)))
    mngr.wait_until_finished()
    return out / "1000"


def _files(root: Path) -> set[str]:
    """Relative file paths, without orbax's content-addressed data files and commit markers."""
    rel = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    return {r for r in rel if "/d/" not in f"/{r}" and not r.endswith("commit_success.txt")}


def _sharding(params_dir: Path) -> dict:
    """_sharding with each record parsed; orbax 0.12 adds "axis_types" (0.11.13 does not; the byte-exact
    comparison with 0.11.13 / OpenPI's save_state is in tools/validate_openpi_restore.py)."""
    raw = json.loads((params_dir / "_sharding").read_text())
    return {k: {f: v for f, v in json.loads(rec).items() if f != "axis_types"} for k, rec in raw.items()}


def _zarr_meta(params_dir: Path) -> dict[str, dict]:
    import tensorstore as ts

    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{params_dir.resolve()}/"}).result()
    keys = kv.list().result()
    return {k.decode(): json.loads(bytes(kv.read(k).result().value)) if k.endswith(b".zarray") else None for k in keys}


@pytest.mark.parametrize("dtype,layout", CASES)
def test_layout_matches_what_orbax_writes(written, tmp_path, dtype, layout):
    ck = open_checkpoint(written[(dtype, layout)])
    tree = {}
    for path, arr in ck.iter_leaves():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = {"value": arr} if layout == "training" else arr
    ref = _orbax_save(tree, tmp_path / "orbax", layout)
    ours = ck.root
    ignore = {"pibridge_synth.json", "assets/physical-intelligence/libero/norm_stats.json", "train_state"}
    mine = {f for f in _files(ours) if f not in ignore and not f.startswith("train_state/")}
    assert mine == _files(ref)
    p_ours, p_ref = ours / "params", ref / "params"
    m_ours, m_ref = json.loads((p_ours / "_METADATA").read_text()), json.loads((p_ref / "_METADATA").read_text())
    m_ref.pop("use_ocdbt")  # orbax 0.12 adds it; 0.11.13 (OpenPI's pin) does not write it
    assert m_ours == m_ref
    assert (p_ours / "array_metadatas/process_0").read_bytes() == (p_ref / "array_metadatas/process_0").read_bytes()
    assert _sharding(p_ours) == _sharding(p_ref)
    z_ours, z_ref = _zarr_meta(p_ours), _zarr_meta(p_ref)
    assert z_ours == z_ref  # same OCDBT keys (one chunk per array) and identical .zarray (zstd 1, chunks == shape)
    step_meta = json.loads((ours / ("_CHECKPOINT_METADATA" if layout == "training" else "params/_CHECKPOINT_METADATA"))
                           .read_text())
    ref_meta = json.loads((ref / ("_CHECKPOINT_METADATA" if layout == "training" else "params/_CHECKPOINT_METADATA"))
                          .read_text())
    assert set(step_meta) == set(ref_meta)
    if layout == "released":
        assert step_meta["item_handlers"] == ref_meta["item_handlers"]


@pytest.mark.filterwarnings("ignore:Sharding info not provided")
def test_training_step_dir_has_openpi_items(written):
    step = written[("bfloat16", "training")]
    meta = json.loads((step / "_CHECKPOINT_METADATA").read_text())
    assert meta["item_handlers"] == {"assets": "openpi.training.checkpoints.CallbackHandler",
                                     "params": ocdbt.PYTREE_HANDLER, "train_state": ocdbt.PYTREE_HANDLER}
    ts_meta = json.loads((step / "train_state/_METADATA").read_text())["tree_metadata"]
    assert list(ts_meta) == ["('step',)", "('model_def',)", "('ema_params',)"]
    ocp = pytest.importorskip("orbax.checkpoint")
    with ocp.PyTreeCheckpointer() as c:
        restored = c.restore(step / "train_state")
    assert int(restored["step"]) == 0 and np.asarray(restored["step"]).dtype == np.int32


def test_pinned_fingerprints_and_determinism(written, tmp_path):
    for dtype, layout in CASES:
        ck = open_checkpoint(written[(dtype, layout)])
        assert ck.synth_record["fingerprint"] == PINNED[dtype]  # layout-independent: canonical paths
        assert ck.fingerprint() == PINNED[dtype]  # recomputed from the stored arrays
    again = write_synthetic_checkpoint(tmp_path / "again", variant="tiny-pi05")
    other = write_synthetic_checkpoint(tmp_path / "seed1", variant="tiny-pi05", seed=1)
    sharp = write_synthetic_checkpoint(tmp_path / "sharp", variant="tiny-pi05", sharp_attention=True)
    assert again.fingerprint == PINNED["float32"]
    assert len({PINNED["float32"], other.fingerprint, sharp.fingerprint}) == 3


def test_full_size_plans_equal_openpi_trees_without_allocating():
    expected = {"pi0": (50, 3_238_048_528), "pi05": (51, 3_353_433_872)}
    for name, (n_leaves, n_params) in expected.items():
        variant = load_variant(name)
        plans = synth_weights.plan_leaves(variant, 0, sharp_attention=True, outliers=True)
        shapes = openpi_tree_shapes(variant)
        assert [(p.path, p.shape) for p in plans] == list(shapes.items())
        assert len(plans) == n_leaves and sum(p.size for p in plans) == n_params == count_params(shapes)
    # The released pi05_base params/ (gs://openpi-assets, float32) has these object sizes: _METADATA 21402,
    # array_metadatas/process_0 8856, _sharding 11420 bytes. Our documents for full pi05 float32 match them.
    plans = synth_weights.plan_leaves(load_variant("pi05"), 0)
    written = [ocdbt.WrittenArray(("params",) + p.path, p.shape, "float32", ocdbt.orbax_chunk_shape(p.shape, 4))
               for p in plans]
    assert len(json.dumps(ocdbt.tree_metadata(written))) == 21402
    assert len(ocdbt.array_metadatas_document(written)) == 8856
    assert len(ocdbt.sharding_document(written, ocdbt.SHARDING_RELEASED)) == 11420


def test_chunk_shape_rule_matches_orbax():
    subchunking = pytest.importorskip("orbax.checkpoint._src.arrays.subchunking")
    shapes = [(18, 2, 2048, 16384), (18, 16384, 2048), (257152, 2048), (27, 1152, 4304), (7, 3, 5), ()]
    for shape in shapes:
        for dtype in (np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16)):
            nbytes = math.prod(shape) * dtype.itemsize
            target = ocdbt.TARGET_DATA_FILE_SIZE if nbytes > ocdbt.TARGET_DATA_FILE_SIZE else None
            ref = subchunking.choose_chunk_shape(shape, shape, dtype, target)
            assert ocdbt.orbax_chunk_shape(shape, dtype.itemsize) == tuple(ref), (shape, dtype)
    assert ocdbt.orbax_chunk_shape((18, 2, 2048, 16384), 4) == (18, 2, 2048, 4096)
    for ncells, rule in ((100, 7), (40, 40)):  # a small target forces a multi-chunk split we can write
        chunks = ocdbt.orbax_chunk_shape((ncells, 6), 4, target_bytes=rule * 6 * 4)
        boxes = list(ocdbt.chunk_boxes((ncells, 6), chunks))
        assert sum((b[0].stop - b[0].start) for b in boxes) == ncells


def test_multi_chunk_leaf_written_and_fingerprinted_in_c_order(tmp_path, monkeypatch):
    """Leaves above the chunk target are written chunk by chunk; the fingerprint still hashes C order."""
    monkeypatch.setattr(ocdbt, "TARGET_DATA_FILE_SIZE", 1 << 20)  # 1 MiB: the embedder and others split
    import pibridge.convert.synth as synth_mod

    monkeypatch.setattr(synth_mod, "_SLAB_ELEMENTS", 1 << 12)
    orig = ocdbt.orbax_chunk_shape
    monkeypatch.setattr(ocdbt, "orbax_chunk_shape", lambda s, i, target_bytes=1 << 20: orig(s, i, target_bytes))
    res = write_synthetic_checkpoint(tmp_path / "split", variant="tiny-pi05")
    ck = open_checkpoint(tmp_path / "split")
    emb = ck.leaves[("PaliGemma", "llm", "embedder", "input_embedding")]
    assert emb.chunks != emb.shape  # really split
    assert res.fingerprint == PINNED["float32"] == ck.fingerprint()


def test_weights_are_realistic_and_options_act(tmp_path):
    v = load_variant("tiny-pi05")
    base = {p.path: p for p in synth_weights.plan_leaves(v, 0)}
    opt = {p.path: p for p in synth_weights.plan_leaves(v, 0, sharp_attention=True, outliers=True)}
    for path, plan in base.items():
        a = synth_weights.generate(plan)
        assert np.isfinite(a).all() and a.std() > 0, path  # non-constant
    q = ("PaliGemma", "llm", "layers", "attn", "q_einsum", "w")
    ratio = synth_weights.generate(opt[q]).std() / synth_weights.generate(base[q]).std()
    assert ratio == pytest.approx(synth_weights.SHARP_GAIN, rel=1e-5)
    kv = ("PaliGemma", "llm", "layers", "attn", "kv_einsum", "w")
    k_b, k_o = synth_weights.generate(base[kv]), synth_weights.generate(opt[kv])
    assert np.array_equal(k_o[:, 1], k_b[:, 1]) and np.allclose(k_o[:, 0], 2.5 * k_b[:, 0])  # k sharpened, v not
    emb = ("PaliGemma", "llm", "embedder", "input_embedding")
    col_rms = np.sqrt((synth_weights.generate(opt[emb]) ** 2).mean(axis=0)) * math.sqrt(64)  # table * sqrt(D)
    big = set(np.flatnonzero(col_rms > 5))
    assert big == set(synth_weights.outlier_channels(0, "llm", 64)) and len(big) == synth_weights.OUTLIER_COUNT
    assert np.median(col_rms) == pytest.approx(1.0, rel=0.05)  # embeddings O(1) after the sqrt(D) scale
    bias = synth_weights.generate(base[("PaliGemma", "llm", "layers", "pre_attention_norm_1", "Dense_0", "bias")])
    scale, shift, gate = np.split(bias, 3, axis=-1)  # [scale | shift | gate] (openpi gemma.py:119-131)
    assert abs(scale.mean()) < 0.05 and abs(shift.mean()) < 0.05 and gate.mean() == pytest.approx(0.5, abs=0.05)
    norm = synth_weights.generate(base[("PaliGemma", "llm", "layers", "pre_ffw_norm", "scale")])
    assert abs(norm.mean()) < 0.05 and 0.05 < norm.std() < 0.2  # used as (1 + scale)


def test_generate_boxes_equal_slices_of_the_whole_leaf():
    plan = [p for p in synth_weights.plan_leaves(load_variant("tiny-pi0"), 3, outliers=True)
            if p.path[-1] == "gating_einsum"][0]
    whole = synth_weights.generate(plan)
    rng = np.random.default_rng(0)
    for _ in range(20):
        box = tuple(slice(int(a), int(a) + 1 + int(rng.integers(0, d - a))) for d in plan.shape
                    for a in [rng.integers(0, d)])
        assert np.array_equal(synth_weights.generate(plan, box), whole[box])
    z = synth_weights.hashed_normal(1, np.arange(1 << 20, dtype=np.uint64))
    assert abs(z.mean()) < 0.01 and z.std() == pytest.approx(1.0, abs=0.01) and np.abs(z).max() < 3.47


def test_norm_stats_openpi_format_nested_asset_and_profile_dims(written, tmp_path):
    ck = open_checkpoint(written[("float32", "released")])
    assert ck.asset_ids == ["physical-intelligence/libero"]
    text = (ck.root / "assets/physical-intelligence/libero/norm_stats.json").read_text()
    doc = json.loads(text)
    assert text == json.dumps(doc, indent=2) and "e-" not in text and "-0.0," not in text
    assert list(doc["norm_stats"]) == ["state", "actions"]
    for key, stats in ck.norm_stats().items():
        assert stats.dim == 8  # default native dims without --profile
        assert (stats.q01 < stats.mean).all() and (stats.mean < stats.q99).all() and (stats.std > 0).all()
    assert ck.synth_record["dims_from"] == "default (no --profile)"
    res = write_synthetic_checkpoint(tmp_path / "libero", variant="tiny-pi05", profile="pi05_libero", asset_id="a/b/c")
    stats = open_checkpoint(tmp_path / "libero").norm_stats("a/b/c")
    assert (stats["state"].dim, stats["actions"].dim) == (8, 7) == (res.state_dim, res.action_dim)


def test_refuses_existing_out_and_force_replaces(tmp_path, capsys):
    out = tmp_path / "ck"
    write_synthetic_checkpoint(out, variant="tiny-pi0")
    with pytest.raises(SystemExit) as exc:
        main(["synth", str(out), "--variant", "tiny-pi0"])
    assert exc.value.code == 2 and "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["synth", str(tmp_path / "x"), "--variant", "nope"])
    assert exc.value.code == 2
    res = write_synthetic_checkpoint(out, variant="tiny-pi05", force=True)
    assert open_checkpoint(out).synth_record["variant"] == "tiny-pi05" == res.variant
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary siblings left


def test_failure_midway_leaves_no_out(tmp_path, monkeypatch):
    import pibridge.convert.synth as synth_mod

    calls = {"n": 0}
    real = synth_mod.generate

    def failing(plan, box=None):
        calls["n"] += 1
        if calls["n"] > 10:
            raise RuntimeError("disk full")
        return real(plan, box)

    monkeypatch.setattr(synth_mod, "generate", failing)
    with pytest.raises(RuntimeError):
        write_synthetic_checkpoint(tmp_path / "ck", variant="tiny-pi05")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kw", [{"dtype": "float16"}, {"layout": "sharded"}, {"asset_id": "../up"},
                                {"asset_id": "/abs"}, {"asset_id": ""}])
def test_bad_arguments(tmp_path, kw):
    with pytest.raises(PibridgeError):
        write_synthetic_checkpoint(tmp_path / "x", variant="tiny-pi05", **kw)
    assert not (tmp_path / "x").exists()


def test_cli_prints_fingerprint(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["synth", str(tmp_path / "c"), "--variant", "tiny-pi05"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert PINNED["float32"] in out and "51 leaves" in out
