"""LeRobot config.json per target version, and the schema data it is built from."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from pibridge.configs import CONFIG_DIR
from pibridge.convert.lerobot_config import build_config_json, config_schema, lerobot_target, lerobot_versions
from pibridge.convert.mapping import vision_prefix
from pibridge.errors import PibridgeError

CAMS = ["top_head", "wrist_left"]


def droid_like(version="0.6.1", model="pi05", **kw):
    args = dict(model=model, horizon=15, max_token_len=200, state_dim=8, action_dim=8, camera_names=CAMS,
                empty_cameras=1, runtime_dtype="bfloat16")
    args.update(kw)
    return build_config_json(version, **args)


@pytest.mark.parametrize("version", ["0.5.1", "0.6.0", "0.6.1"])
@pytest.mark.parametrize("model", ["pi05", "pi0"])
def test_every_field_of_the_version_in_order(version, model):
    cfg = droid_like(version, model)
    assert list(cfg) == ["type"] + list(config_schema(version, model))
    assert cfg["type"] == model
    assert ("pretrained_revision" in cfg) == (version != "0.5.1")  # new in LeRobot 0.6.0 PreTrainedConfig
    json.dumps(cfg)  # serialisable as is


def test_values():
    cfg = droid_like(n_action_steps=8)
    assert cfg["chunk_size"] == 15 and cfg["n_action_steps"] == 8
    assert cfg["tokenizer_max_length"] == 200 and cfg["dtype"] == "bfloat16"
    assert cfg["max_state_dim"] == cfg["max_action_dim"] == 32
    assert list(cfg["input_features"]) == ["observation.images.top_head", "observation.images.wrist_left",
                                           "observation.state", "observation.images.empty_camera_0"]
    assert cfg["input_features"]["observation.state"] == {"type": "STATE", "shape": [8]}
    assert cfg["input_features"]["observation.images.top_head"] == {"type": "VISUAL", "shape": [3, 224, 224]}
    assert cfg["output_features"] == {"action": {"type": "ACTION", "shape": [8]}}
    assert cfg["normalization_mapping"] == {"VISUAL": "IDENTITY", "STATE": "QUANTILES", "ACTION": "QUANTILES"}
    assert cfg["empty_cameras"] == 1 and cfg["paligemma_variant"] == "gemma_2b"
    pi0 = droid_like(model="pi0", max_token_len=48, horizon=10)
    assert pi0["normalization_mapping"]["STATE"] == "MEAN_STD" and pi0["tokenizer_max_length"] == 48
    assert droid_like()["n_action_steps"] == 15  # defaults to the horizon


def test_extra_fields_validated_against_the_version():
    assert droid_like(extra={"use_relative_actions": True})["use_relative_actions"] is True
    with pytest.raises(PibridgeError, match="not valid for LeRobot 0.5.1"):
        droid_like("0.5.1", extra={"pretrained_revision": "abc"})
    with pytest.raises(PibridgeError, match="not valid"):
        droid_like(extra={"use_visual_memory": True})  # HEAD-only MEM field


@pytest.mark.parametrize("kw,match", [
    (dict(n_action_steps=16), "n_action_steps"),
    (dict(runtime_dtype="float16"), "runtime dtype"),
    (dict(state_dim=33), "state dim"),
    (dict(camera_names=["a.b"]), "camera names"),
    (dict(camera_names=["a", "a"]), "camera names"),
    (dict(camera_names=["empty_camera_0"]), "camera names"),
    (dict(paligemma_variant="dummy"), "cannot be expressed"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(PibridgeError, match=match):
        droid_like(**kw)


def test_tiny_variants_only_on_request():
    cfg = droid_like(paligemma_variant="dummy", action_expert_variant="dummy", allow_unknown_variants=True)
    assert cfg["paligemma_variant"] == "dummy"


def test_unknown_version():
    with pytest.raises(PibridgeError, match="0.4.4"):
        droid_like("0.4.4")


def test_targets_and_transformers_pins():
    assert lerobot_versions() == ("0.5.1", "0.6.0", "0.6.1")
    t = lerobot_target("0.5.1", "pi05")
    assert (t.transformers_default, t.transformers_requirement) == ("5.3.0", "==5.3.0")
    assert (t.normalizer_step, t.unnormalizer_step) == (3, 0)
    assert lerobot_target("0.6.1", "pi0").normalizer_step == 6
    for v in lerobot_versions():  # every supported runtime still nests SigLIP under vision_model.
        assert vision_prefix(lerobot_target(v, "pi05").transformers_default) == "vision_model."
        schema = json.loads((CONFIG_DIR / "lerobot" / f"{v}.json").read_text())
        assert schema["transformers_requirement"].replace(" ", "") in {"==5.3.0", "<5.6.0,>=5.4.0"}
        assert schema["lerobot_version"] == v


def test_schema_defaults_match_the_documented_ones():
    pi05, pi0 = config_schema("0.6.1", "pi05"), config_schema("0.6.1", "pi0")
    assert pi05["tokenizer_max_length"] == 200 and pi0["tokenizer_max_length"] == 48
    assert pi05["normalization_mapping"]["STATE"] == "QUANTILES" and pi0["normalization_mapping"]["STATE"] == "MEAN_STD"
    assert pi05["image_resolution"] == [224, 224] and pi05["optimizer_betas"] == [0.9, 0.95]
    assert pi05["relative_exclude_joints"] == ["gripper"] and pi05["rtc_config"] is None
    assert list(pi05)[:3] == ["n_obs_steps", "input_features", "output_features"]  # base-class fields first
    assert set(pi05) == set(pi0)


def test_extractor_follows_dataclass_rules():
    spec = importlib.util.spec_from_file_location("extract_schema", Path(__file__).parent.parent / "tools" / "extract_lerobot_schema.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    base_src = "class Base:\n    a: int = 1\n    b: dict = field(default_factory=dict)\n    c: str | None = None\n"
    src = ("from x import y\nSIZE = 7\n"
           "class Sub(Base):\n    d: tuple = (SIZE, SIZE)\n    a: int = 2\n"
           "    m: dict = field(default_factory=lambda: {'S': NormalizationMode.QUANTILES})\n    d: tuple = (1,)\n")
    fields = mod.class_fields(src, "Sub", mod.class_fields(base_src, "Base"))
    # redefined fields keep their first position and take the last default; tuples become lists
    assert fields == [["a", 2], ["b", {}], ["c", None], ["d", [1]], ["m", {"S": "QUANTILES"}]]


# --- processors -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["0.5.1", "0.6.0", "0.6.1"])
@pytest.mark.parametrize("model", ["pi05", "pi0"])
def test_processor_jsons(version, model):
    from pibridge.convert.lerobot_normstats import normalizer_filenames
    from pibridge.convert.lerobot_processors import build_processor_jsons

    cfg = droid_like(version, model)
    pre, post = build_processor_jsons(version, cfg)
    names = [s["registry_name"] for s in pre["steps"]]
    rel = "delta_actions_processor" if version == "0.5.1" else "relative_actions_processor"
    if model == "pi05":
        assert names == ["rename_observations_processor", "to_batch_processor", rel, "normalizer_processor",
                         "pi05_prepare_state_tokenizer_processor_step", "tokenizer_processor", "device_processor"]
    else:
        assert names == ["rename_observations_processor", "to_batch_processor", "pi0_new_line_processor",
                         "tokenizer_processor", "device_processor", rel, "normalizer_processor"]
    target = lerobot_target(version, model)
    files = [s.get("state_file") for s in pre["steps"] + post["steps"] if s.get("state_file")]
    assert tuple(files) == normalizer_filenames(target.normalizer_step, target.unnormalizer_step)
    norm = pre["steps"][target.normalizer_step]["config"]
    assert norm["eps"] == 1e-8 and norm["norm_map"] == cfg["normalization_mapping"]
    assert list(norm["features"]) == list(cfg["input_features"]) + ["action"]
    assert [s["registry_name"] for s in post["steps"]] == ["unnormalizer_processor", "absolute_actions_processor",
                                                          "device_processor"]
    assert post["steps"][0]["config"]["features"] == cfg["output_features"]
    tok = pre["steps"][names.index("tokenizer_processor")]["config"]
    assert tok["max_length"] == cfg["tokenizer_max_length"] and tok["tokenizer_name"] == "google/paligemma-3b-pt-224"
    json.dumps([pre, post])
