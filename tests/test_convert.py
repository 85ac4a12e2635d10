"""`pibridge convert` end to end on tiny synthetic checkpoints: outputs, audit, refusals, atomicity, round trip,
and a strict load into the LeRobot-layout module tree built from the installed transformers classes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from pibridge.configs import load_variant
from pibridge.convert.convert import ConvertRequest, convert
from pibridge.convert.plan import inverse_convert
from pibridge.convert.reader import open_checkpoint
from pibridge.convert.synth import write_synthetic_checkpoint
from pibridge.errors import PibridgeError

CAMS = "base_0_rgb=top,left_wrist_0_rgb=wrist"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pibridge.cli", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ck")
    out = {}
    for variant, profile in (("tiny-pi05", "pi05_droid"), ("tiny-pi0", "pi0_droid")):
        out[variant] = root / variant
        write_synthetic_checkpoint(out[variant], variant=variant, profile=profile, asset_id="droid")
    return out


def _req(ck, out, **kw):
    base = dict(ckpt=ck, out=out, profile="pi05_droid", camera_map=CAMS, allow_tiny=True)
    return ConvertRequest(**(base | kw))


@pytest.mark.parametrize("variant,profile", [("tiny-pi05", "pi05_droid"), ("tiny-pi0", "pi0_droid")])
def test_convert_writes_a_complete_lerobot_dir_and_round_trips(ckpts, tmp_path, variant, profile):
    out = tmp_path / "out"
    rec = convert(_req(ckpts[variant], out, profile=profile))
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["config.json", "model.safetensors", "pibridge.json", "policy_preprocessor.json",
                            "policy_postprocessor.json", "policy_postprocessor_step_0_unnormalizer_processor.safetensors",
                            # pi0_droid: pibridge_prompt_clean before the newline step moves the normalizer from 6 to 7
                            f"policy_preprocessor_step_{3 if variant == 'tiny-pi05' else 7}_normalizer_processor.safetensors"])
    ck = open_checkpoint(ckpts[variant])
    assert rec["source"]["fingerprint"] == ck.synth_record["fingerprint"]  # streamed fingerprint == synth's
    from pibridge.convert.assets import norm_stats_hash

    assert rec["source"]["asset"] == {"id": "droid", "chosen_by": "profile",  # whose stats went into OUT (issue 15)
                                      "norm_stats_sha256": norm_stats_hash(ckpts[variant] / "assets/droid/norm_stats.json")}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["type"] == ("pi05" if variant == "tiny-pi05" else "pi0")
    assert list(cfg["input_features"]) == ["observation.images.top", "observation.images.wrist", "observation.state",
                                           "observation.images.empty_camera_0"]  # as LeRobot's validate_features adds it
    assert cfg["empty_cameras"] == 1 and cfg["chunk_size"] == (15 if variant == "tiny-pi05" else 10)
    state = load_file(str(out / "model.safetensors"))
    tree, acct = inverse_convert(state, load_variant(variant), transformers_version=rec["target"]["transformers_version"])
    assert acct.complete
    for path in ck.leaves:  # float32 output without folds: bit-exact round trip
        np.testing.assert_array_equal(tree[path], ck.read(path), err_msg="/".join(path))


def test_strict_load_into_installed_transformers_module_tree(ckpts, tmp_path):
    torch = pytest.importorskip("torch")
    from pibridge.parity.stacks.torch.model import load_policy

    out = tmp_path / "out"
    convert(_req(ckpts["tiny-pi05"], out, weights_dtype="bfloat16", runtime_dtype="bfloat16"))
    policy = load_policy(out, load_variant("tiny-pi05"), "bfloat16")
    q = policy.model.paligemma_with_expert.paligemma.model.language_model.layers[0].self_attn.q_proj.weight
    assert q.dtype == torch.bfloat16
    assert policy.model.action_in_proj.weight.dtype == torch.float32


def test_dry_run_audits_every_tensor_and_writes_nothing(ckpts, tmp_path):
    proc = _cli("convert", str(ckpts["tiny-pi05"]), str(tmp_path / "out"), "--profile", "pi05_droid",
                "--camera-map", CAMS, "--allow-tiny", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stdout.splitlines() if " <- " in l]  # the audit is the output: stdout
    assert len(lines) == 117 and any("q_proj" in l and "q_einsum" in l for l in lines)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("camera_map,message", [
    ("base_0_rgb=top", "no LeRobot camera name for slot left_wrist_0_rgb"),
    ("base_0_rgb=top,base_0_rgb=other,left_wrist_0_rgb=w", "given twice"),
    ("base_rgb=top,left_wrist_0_rgb=w", "unknown"),
    ("base_0_rgb=top,left_wrist_0_rgb=top", "used twice"),
    ("base_0_rgb=observation.images.top,left_wrist_0_rgb=w", "invalid"),
    ("base_0_rgb=top,left_wrist_0_rgb=w,right_wrist_0_rgb=r", "keeps empty"),
])
def test_camera_map_errors_exit_2_and_write_nothing(ckpts, tmp_path, camera_map, message):
    proc = _cli("convert", str(ckpts["tiny-pi05"]), str(tmp_path / "out"), "--profile", "pi05_droid",
                "--camera-map", camera_map, "--allow-tiny")
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_slot_can_be_declared_empty(ckpts, tmp_path):
    convert(_req(ckpts["tiny-pi05"], tmp_path / "out", camera_map="base_0_rgb=top", empty_cameras=("left_wrist_0_rgb",)))
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["empty_cameras"] == 2 and "observation.images.top" in cfg["input_features"]


def test_refusals(ckpts, tmp_path):
    with pytest.raises(PibridgeError, match="sizes LeRobot cannot build"):
        convert(_req(ckpts["tiny-pi05"], tmp_path / "o", allow_tiny=False))
    with pytest.raises(PibridgeError, match="no --profile"):
        convert(_req(ckpts["tiny-pi05"], tmp_path / "o", profile=None))
    with pytest.raises(PibridgeError, match="pi05 model but profile"):
        convert(_req(ckpts["tiny-pi05"], tmp_path / "o", profile="pi0_droid"))
    with pytest.raises(PibridgeError, match="inside the checkpoint"):
        convert(_req(ckpts["tiny-pi05"], ckpts["tiny-pi05"] / "out"))
    with pytest.raises(PibridgeError, match="--state-dim"):
        convert(_req(ckpts["tiny-pi05"], tmp_path / "o", profile="pi05_base"))
    assert not (tmp_path / "o").exists()


def test_existing_output_needs_force_and_only_pibridges_own_is_replaced(ckpts, tmp_path):
    """--force replaces only an OUT pibridge wrote whose files its pibridge.json lists unmodified (issue 15); an
    empty directory is a valid OUT without --force."""
    from pibridge.convert.guard import HASH, file_hash

    out = tmp_path / "out"
    out.mkdir()
    rec = convert(_req(ckpts["tiny-pi05"], out))  # existing empty directory
    listed = {f["name"]: f for f in rec["files"]}
    assert sorted(listed) == sorted(p.name for p in out.iterdir() if p.name != "pibridge.json")
    assert all(listed[n][HASH] == file_hash(out / n) and listed[n]["size"] == (out / n).stat().st_size for n in listed)
    with pytest.raises(PibridgeError, match="already exists"):
        convert(_req(ckpts["tiny-pi05"], out))
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(PibridgeError, match="notes.txt, which was not written by pibridge"):
        convert(_req(ckpts["tiny-pi05"], out, force=True))
    assert (out / "notes.txt").read_text() == "keep me"
    (out / "notes.txt").unlink()
    convert(_req(ckpts["tiny-pi05"], out, force=True, weights_dtype="bfloat16"))
    assert json.loads((out / "pibridge.json").read_text())["target"]["weights_dtype"] == "bfloat16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_pi05_without_discrete_state_gets_openpi_prompt_without_state(ckpts, tmp_path):
    rec = convert(_req(ckpts["tiny-pi05"], tmp_path / "out", overrides={"discrete_state_input": False}))
    steps = [s.get("registry_name") or s["class"]
             for s in json.loads((tmp_path / "out" / "policy_preprocessor.json").read_text())["steps"]]
    assert "pi05_prepare_state_tokenizer_processor_step" not in steps and "pi0_new_line_processor" in steps
    assert steps.index("lerobot_policy_pibridge.steps.PromptCleanStep") < steps.index("pi0_new_line_processor")
    assert rec["prompt_format"] == "openpi-no-state"


def test_nonfinite_weight_is_named(tmp_path):
    ck = tmp_path / "ck"
    write_synthetic_checkpoint(ck, variant="tiny-pi05", profile="pi05_droid", asset_id="droid")
    import tensorstore as ts  # poison one leaf in place through the same OCDBT store

    reader = open_checkpoint(ck)
    path = ("action_in_proj", "bias")
    kv = dict(reader._kvstore_spec(), path=reader.leaves[path].key + "/")
    store = ts.open({"driver": "zarr", "kvstore": kv}, open=True, read=True, write=True).result()
    bad = reader.read(path).copy()
    bad[3] = np.nan
    store.write(bad).result()
    with pytest.raises(PibridgeError, match="action_in_proj/bias contains NaN"):
        convert(_req(ck, tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(PibridgeError, match="not the .* `pibridge synth` recorded"):  # edited after synth: caught
        convert(_req(ck, tmp_path / "out", allow_nonfinite=True))
    (ck / "pibridge_synth.json").unlink()  # as a real OpenPI checkpoint: no recorded fingerprint to check
    convert(_req(ck, tmp_path / "out", allow_nonfinite=True))


def test_openpi_pytorch_converter_layout_is_accepted(ckpts, tmp_path):
    """A directory as OpenPI's convert_jax_model_to_pytorch.py writes it (openpi.md 3.1-3.2): LeRobot keys without
    `model.`, lm_head stored instead of the tied embed_tokens, no expert lm_head, a small config.json, assets/ copied.
    Built here from a pibridge conversion by applying exactly those documented differences."""
    import shutil

    from safetensors.numpy import save_file

    lerobot = tmp_path / "lerobot"
    convert(_req(ckpts["tiny-pi05"], lerobot, transformers_version="4.53.2"))
    state = load_file(str(lerobot / "model.safetensors"))
    embed = "model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"
    openpi = {k.removeprefix("model."): v for k, v in state.items()
              if k != embed and "gemma_expert.lm_head" not in k}
    openpi["paligemma_with_expert.paligemma.lm_head.weight"] = state[embed]
    src = tmp_path / "openpi_pt"
    src.mkdir()
    save_file(openpi, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({"action_dim": 32, "action_horizon": 15, "paligemma_variant": "dummy",
                                                  "action_expert_variant": "dummy", "precision": "float32"}))
    shutil.copytree(ckpts["tiny-pi05"] / "assets", src / "assets")
    rec = convert(_req(src, tmp_path / "again"))
    assert rec["source"]["layout"] == "openpi-pytorch"
    again = load_file(str(tmp_path / "again" / "model.safetensors"))
    reference = load_file(str(lerobot / "model.safetensors"))
    assert again.keys() == reference.keys()
    for k in reference:  # same tensors, bit for bit, except the unused expert lm_head (zeros either way)
        np.testing.assert_array_equal(again[k], reference[k], err_msg=k)


def test_bf16_param_fold_is_applied_and_recorded(ckpts, tmp_path):
    from pibridge.convert.folds import FOLD_ID, fold_bf16_param

    with pytest.raises(PibridgeError, match="float32 runtime"):
        convert(_req(ckpts["tiny-pi05"], tmp_path / "x", fold_bf16_params=True))
    rec = convert(_req(ckpts["tiny-pi05"], tmp_path / "out", weights_dtype="bfloat16", runtime_dtype="bfloat16",
                       fold_bf16_params=True))
    assert FOLD_ID in rec["folds"]
    state = load_file(str(tmp_path / "out" / "model.safetensors"))
    scale = open_checkpoint(ckpts["tiny-pi05"]).read(("PaliGemma", "llm", "layers", "pre_attention_norm", "scale"))
    got = state["model.paligemma_with_expert.paligemma.model.language_model.layers.2.input_layernorm.weight"]
    np.testing.assert_array_equal(got, fold_bf16_param("llm.norm.attn", scale[2]))
