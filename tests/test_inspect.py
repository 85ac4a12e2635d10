"""`pibridge inspect`: variant from shapes, sizes, dtypes, norm stats, synth fingerprint; metadata only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pibridge.cli import main
from pibridge.configs import load_variant
from pibridge.convert import reader as reader_mod
from pibridge.convert.inspect import inspect_checkpoint, match_variant
from pibridge.convert.ocdbt import SHARDING_RELEASED, PyTreeItemWriter
from pibridge.convert.synth import write_synthetic_checkpoint
from pibridge.convert.synth_weights import generate, plan_leaves
from pibridge.convert.tree import count_params, openpi_tree_shapes


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    out = {}
    for variant, dtype, layout in (("tiny-pi05", "bfloat16", "training"), ("tiny-pi0", "float32", "released")):
        out[variant] = root / variant
        write_synthetic_checkpoint(out[variant], variant=variant, dtype=dtype, layout=layout,
                                   asset_id="physical-intelligence/libero", profile="pi05_libero")
    return out


def _run_json(capsys, *args) -> dict:
    with pytest.raises(SystemExit) as exc:
        main(["inspect", *map(str, args), "--json"])
    assert exc.value.code == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("variant,dtype,layout", [("tiny-pi05", "bfloat16", "training"),
                                                  ("tiny-pi0", "float32", "released")])
def test_inspect_json_of_synth(ckpts, capsys, variant, dtype, layout):
    doc = _run_json(capsys, ckpts[variant])
    shapes = openpi_tree_shapes(load_variant(variant))
    assert doc["variant"] == {"variant": variant, "closest": None, "differences": []}
    assert doc["model"] == ("pi05" if variant == "tiny-pi05" else "pi0") and doc["layout"] == layout
    assert doc["n_leaves"] == len(shapes) == len(doc["leaves"]) and doc["n_params"] == count_params(shapes)
    itemsize = 2 if dtype == "bfloat16" else 4
    assert doc["stored_bytes"] == count_params(shapes) * itemsize and doc["disk_bytes"] > 0
    assert doc["dtypes"] == {dtype: {"leaves": len(shapes), "params": count_params(shapes)}}
    assert {tuple(leaf["path"].split("/")): tuple(leaf["shape"]) for leaf in doc["leaves"]} == shapes
    assert doc["norm_stats"] == [{"asset_id": "physical-intelligence/libero", "keys": {
        "state": {"dim": 8, "fields": ["mean", "std", "q01", "q99"]},
        "actions": {"dim": 7, "fields": ["mean", "std", "q01", "q99"]}}}]
    assert doc["synth"]["fingerprint"].startswith("sha256:") and doc["synth"]["variant"] == variant


def test_inspect_reads_no_array_data(ckpts, monkeypatch):
    monkeypatch.setattr(reader_mod.OpenPICheckpoint, "_open", lambda *a: pytest.fail("array data opened"))
    assert inspect_checkpoint(ckpts["tiny-pi05"]).variant.variant == "tiny-pi05"


def test_rich_output_and_no_leaves(ckpts, capsys):
    with pytest.raises(SystemExit):
        main(["inspect", str(ckpts["tiny-pi0"])])
    out = capsys.readouterr().out
    assert "tiny-pi0" in out and "PaliGemma/llm/layers/attn/q_einsum/w" in out and "state dim 8" in out
    doc = _run_json(capsys, ckpts["tiny-pi0"] / "params", "--no-leaves")
    assert "leaves" not in doc and doc["variant"]["variant"] == "tiny-pi0"


def test_unknown_tree_reports_differences(tmp_path):
    """A pi05 tree with one leaf missing and one reshaped: unknown, closest tiny-pi05, both differences."""
    plans = plan_leaves(load_variant("tiny-pi05"), 0)
    writer = PyTreeItemWriter(tmp_path / "odd" / "params", SHARDING_RELEASED)
    for plan in plans:
        if plan.path == ("action_out_proj", "bias"):
            continue
        shape = (31,) if plan.path == ("PaliGemma", "img", "head", "bias") else plan.shape
        writer.write_array(("params",) + plan.path, shape, np.float32,
                           lambda box, plan=plan: generate(plan)[tuple(slice(0, s.stop - s.start) for s in box)])
    writer.finish()
    rep = inspect_checkpoint(tmp_path / "odd")
    assert rep.variant.variant == "unknown" and rep.variant.closest == "tiny-pi05"
    assert set(rep.variant.differences) == {"missing action_out_proj/bias (32,)",
                                            "shape PaliGemma/img/head/bias (31,) (expected (64,))"}
    assert rep.norm_stats == [] and rep.synth is None


def test_match_variant_never_uses_names():
    for name in ("pi0", "pi05", "tiny-pi0", "tiny-pi05"):
        assert match_variant(openpi_tree_shapes(load_variant(name))).variant == name
    shapes = dict(openpi_tree_shapes(load_variant("pi05")))
    shapes[("extra", "kernel")] = (3, 3)
    m = match_variant(shapes)
    assert m.variant == "unknown" and m.closest == "pi05" and m.differences == ("extra extra/kernel (3, 3)",)


def test_inspect_suggests_the_profile_and_the_convert_command(ckpts, capsys):
    doc = _run_json(capsys, ckpts["tiny-pi05"], "--no-leaves")
    (sug,) = doc["suggestions"]
    assert sug["asset_id"] == "physical-intelligence/libero" and (sug["state"], sug["actions"]) == (8, 7)
    assert sug["profiles"][0] == "pi05_libero" and "pi05_droid" not in sug["profiles"]  # droid: 8 actions
    assert sug["command"].startswith(f"pibridge convert {ckpts['tiny-pi05']} OUT --profile pi05_libero --camera-map ")


def test_inspect_recognises_a_converted_output(ckpts, tmp_path, capsys):
    from pibridge.convert.convert import ConvertRequest, convert

    out = tmp_path / "out"
    convert(ConvertRequest(ckpt=ckpts["tiny-pi0"], out=out, profile="pi0_libero", allow_tiny=True,
                           camera_map="base_0_rgb=top,left_wrist_0_rgb=wrist"))
    (out / "config.json").write_text("{}")
    doc = _run_json(capsys, out)
    assert doc["kind"] == "pibridge output" and doc["model"] == "pi0" and doc["profile"] == "pi0_libero"
    assert doc["source"]["asset"]["id"] == "physical-intelligence/libero" and doc["files_resized"] == ["config.json"]
    with pytest.raises(SystemExit):
        main(["inspect", str(out)])
    assert "written by pibridge" in capsys.readouterr().out
