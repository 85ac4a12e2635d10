"""The reader on checkpoints written by orbax itself (project venv: orbax-checkpoint 0.12.8) and its errors.

Reading OpenPI's own save_state output and restore_params equality (orbax 0.11.13) are checked by
tools/validate_openpi_restore.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from pibridge.convert import reader as reader_mod
from pibridge.convert.reader import open_checkpoint
from pibridge.convert.tree import flatten
from pibridge.errors import PibridgeError

RNG = np.random.default_rng(0)
TREE = {  # an OpenPI-like tree with mixed dtypes (LoRA fine-tunes store frozen params as bf16)
    "PaliGemma": {"llm": {"final_norm": {"scale": RNG.standard_normal(16).astype(np.float32)},
                          "layers": {"mlp": {"linear": RNG.standard_normal((2, 8, 16)).astype(ml_dtypes.bfloat16)}}}},
    "action_in_proj": {"kernel": RNG.standard_normal((4, 16)).astype(np.float32),
                       "bias": RNG.standard_normal(16).astype(np.float32)},
}



def _orbax_write(step: Path, training: bool) -> Path:
    jax = pytest.importorskip("jax")
    ocp = pytest.importorskip("orbax.checkpoint")
    tree = TREE
    if training:  # nnx.State leaves end in "value" (openpi training/checkpoints.py:84)
        tree = {}
        for path, arr in flatten(TREE).items():
            node = tree
            for k in path:
                node = node.setdefault(k, {})
            node["value"] = arr
    mesh = jax.sharding.Mesh(jax.devices(), ("x",))
    sharded = jax.device_put({"params": tree}, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    with ocp.PyTreeCheckpointer() as c:
        c.save(step / "params", sharded)
    assets = step / "assets" / "physical-intelligence" / "libero"
    assets.mkdir(parents=True)
    (assets / "norm_stats.json").write_text(json.dumps({"norm_stats": {
        "state": {"mean": [0.0, 1.0], "std": [1.0, 2.0], "q01": [-1.0, -2.0], "q99": [1.0, 3.0]},
        "actions": {"mean": [0.5], "std": [0.1], "q01": None, "q99": None}}}, indent=2))
    return step


@pytest.fixture(scope="module")
def orbax_ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("orbax")
    return {"released": _orbax_write(root / "released", False), "training": _orbax_write(root / "training", True)}


@pytest.mark.parametrize("layout", ["released", "training"])
def test_reads_orbax_written_checkpoint(orbax_ckpts, layout):
    for path in (orbax_ckpts[layout], orbax_ckpts[layout] / "params"):  # step dir or its params/ dir
        ck = open_checkpoint(path)
        assert ck.layout == layout and ck.root == orbax_ckpts[layout]
        expected = flatten(TREE)
        assert list(ck.leaves) == sorted(expected)  # orbax's flatten order = sorted keys
        for p, arr in expected.items():
            info = ck.leaves[p]
            assert (info.shape, info.dtype, info.nbytes) == (arr.shape, arr.dtype.name, arr.nbytes)
            assert info.key == ".".join(("params",) + p + (("value",) if layout == "training" else ()))
            got = ck.read(p)
            assert got.dtype == arr.dtype and got.tobytes() == arr.tobytes()
        assert ck.n_params == sum(a.size for a in expected.values())


def test_read_tree_is_restore_params_shaped_and_casts(orbax_ckpts):
    tree = open_checkpoint(orbax_ckpts["training"]).read_tree()
    assert set(tree) == {"PaliGemma", "action_in_proj"} and "value" not in tree["action_in_proj"]
    assert tree["PaliGemma"]["llm"]["layers"]["mlp"]["linear"].dtype == np.dtype(ml_dtypes.bfloat16)
    f32 = open_checkpoint(orbax_ckpts["released"]).read_tree(dtype="float32")
    lin = f32["PaliGemma"]["llm"]["layers"]["mlp"]["linear"]
    assert lin.dtype == np.float32 and np.array_equal(lin, TREE["PaliGemma"]["llm"]["layers"]["mlp"]["linear"]
                                                      .astype(np.float32))
    assert open_checkpoint(orbax_ckpts["released"]).read(("action_in_proj", "bias"), "bfloat16").dtype.name == "bfloat16"


def test_leaves_come_from_metadata_without_array_data(orbax_ckpts, monkeypatch):
    monkeypatch.setattr(reader_mod.OpenPICheckpoint, "_open", lambda *a: pytest.fail("array data opened"))
    ck = open_checkpoint(orbax_ckpts["released"])
    assert len(ck.leaves) == 4 and ck.asset_ids == ["physical-intelligence/libero"]


def test_norm_stats_nested_ids_and_null_quantiles(orbax_ckpts, tmp_path):
    ck = open_checkpoint(orbax_ckpts["released"])
    stats = ck.norm_stats()
    assert stats["state"].dim == 2 and stats["actions"].q01 is None and stats["state"].q99[1] == 3.0
    with pytest.raises(PibridgeError, match="no assets/droid"):
        ck.norm_stats("droid")


def test_several_asset_ids_need_a_choice(orbax_ckpts, tmp_path):
    import shutil

    step = tmp_path / "two"
    shutil.copytree(orbax_ckpts["released"], step)
    (step / "assets" / "droid").mkdir()
    shutil.copy(step / "assets/physical-intelligence/libero/norm_stats.json", step / "assets/droid/")
    ck = open_checkpoint(step)
    assert ck.asset_ids == ["droid", "physical-intelligence/libero"]
    with pytest.raises(PibridgeError, match="2 norm-stats asset ids"):
        ck.norm_stats()
    assert ck.norm_stats("droid")["state"].dim == 2
    (step / "assets/droid/norm_stats.json").write_text('{"stats": {}}')
    with pytest.raises(PibridgeError, match="norm_stats"):
        ck.norm_stats("droid")


def test_errors_name_what_is_wrong(tmp_path, orbax_ckpts):
    with pytest.raises(PibridgeError, match="does not exist"):
        open_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PibridgeError, match="no params/"):
        open_checkpoint(tmp_path / "empty")
    (tmp_path / "noparams" / "params").mkdir(parents=True)
    with pytest.raises(PibridgeError, match="no _METADATA"):
        open_checkpoint(tmp_path / "noparams")
    for text in ("{not json", '{"tree_metadata": 3}', '{"other": {}}'):
        bad = tmp_path / "bad" / "params"
        bad.mkdir(parents=True, exist_ok=True)
        (bad / "_METADATA").write_text(text)
        with pytest.raises(PibridgeError, match="cannot parse"):
            open_checkpoint(bad.parent)
    ck = open_checkpoint(orbax_ckpts["released"])
    with pytest.raises(PibridgeError, match="no leaf"):
        ck.read(("PaliGemma", "nope"))


def test_refuses_a_non_params_item(tmp_path):
    jax = pytest.importorskip("jax")
    ocp = pytest.importorskip("orbax.checkpoint")
    with ocp.PyTreeCheckpointer() as c:
        c.save(tmp_path / "train_state", jax.device_put({"step": np.int32(3)}))
    with pytest.raises(PibridgeError, match="single root 'params'"):
        open_checkpoint(tmp_path / "train_state")


def test_reads_pre_ocdbt_orbax_layout(tmp_path):
    """Older saves (use_ocdbt=False) keep one zarr directory per leaf, e.g. params.PaliGemma...value/.zarray."""
    jax = pytest.importorskip("jax")
    ocp = pytest.importorskip("orbax.checkpoint")
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=False)) as c:
        c.save(tmp_path / "params", args=ocp.args.PyTreeSave(jax.device_put({"params": TREE})))
    assert not (tmp_path / "params" / "manifest.ocdbt").exists()
    ck = open_checkpoint(tmp_path)
    for path, arr in flatten(TREE).items():
        assert ck.read(path).tobytes() == arr.tobytes() and ck.leaves[path].dtype == arr.dtype.name
