"""Policy profiles: loading, upstream citations, overrides, missing-value errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from pibridge.convert.profile import (
    PROFILE_DIR, CameraSlot, Profile, load_profile, parse_camera_map, parse_delta_mask, profile_from_dict,
    profile_names,
)
from pibridge.errors import PibridgeError
from pibridge.vocab import OPENPI_SLOTS

REQUIRED = ["pi0_base", "pi05_base", "pi0_droid", "pi05_droid", "pi0_libero", "pi05_libero", "pi0_aloha", "pi05_aloha"]
OPENPI_SRC = Path(os.environ.get("PIBRIDGE_OPENPI_SRC", "/work/openpi-src"))
OPENPI_COMMIT = "15a9616a00943ada6c20a0f158e3adb39df2ccac"
# Fields every profile must cite when they have a value.
CITED = ["model", "action_horizon", "max_token_len", "discrete_state_input", "state_dim", "action_dim", "cameras",
         "delta_action_mask", "norm", "asset_id", "default_prompt", "adapt_to_pi", "robot"]


def test_required_profiles_exist_and_load():
    names = profile_names()
    assert set(REQUIRED) <= set(names)
    for name in names:
        p = load_profile(name)
        assert p.name == name and isinstance(p, Profile)
        assert p.cameras is None or tuple(c.slot for c in p.cameras) == OPENPI_SLOTS


def test_unknown_profile_lists_known_names():
    with pytest.raises(PibridgeError) as err:
        load_profile("pi05_nope")
    assert "pi05_droid" in str(err.value) and "--profile" in str(err.value)


@pytest.mark.parametrize("name, horizon, tokens, discrete, norm, state, action", [
    ("pi0_base", 50, 48, False, "zscore", None, None),
    ("pi05_base", 50, 200, True, "quantile", None, None),
    ("pi0_droid", 10, 48, False, "zscore", 8, 8),
    ("pi05_droid", 15, 200, True, "quantile", 8, 8),
    ("pi0_libero", 50, 48, False, "zscore", 8, 7),
    ("pi05_libero", 10, 200, False, "quantile", 8, 7),
    ("pi0_aloha", 50, 48, False, "zscore", 14, 14),
    ("pi05_aloha", 50, 200, True, "quantile", 14, 14),
])
def test_profile_values(name, horizon, tokens, discrete, norm, state, action):
    p = load_profile(name)
    assert (p.action_horizon, p.max_token_len, p.discrete_state_input, p.norm, p.state_dim, p.action_dim) == (
        horizon, tokens, discrete, norm, state, action)


def test_cameras_masks_and_deltas():
    droid = load_profile("pi05_droid")
    assert [(c.source, c.empty) for c in droid.cameras] == [
        ("observation/exterior_image_1_left", False), ("observation/wrist_image_left", False), (None, True)]
    assert load_profile("pi05_libero").cameras[2].empty  # masked for pi0/pi05, not FAST
    assert load_profile("pi0_aloha").delta_action_mask == (True,) * 6 + (False,) + (True,) * 6 + (False,)
    assert load_profile("pi0_libero").delta_action_mask == (True,) * 6 + (False,)
    assert load_profile("pi05_libero").delta_action_mask == ()
    assert load_profile("pi0_aloha_sim").delta_action_mask == ()
    assert [c.empty for c in load_profile("pi0_aloha_sim").cameras] == [False, True, True]
    assert load_profile("pi0_aloha_towel").default_prompt == "fold the towel"
    assert load_profile("pi05_libero").asset_id == "physical-intelligence/libero"
    base = load_profile("pi05_base")
    assert (base.cameras, base.delta_action_mask, base.asset_id, base.adapt_to_pi) == (None, None, None, None)


def _cited_text(ref: str) -> str:
    path, _, lines = ref.rpartition(":")
    first, _, last = lines.partition("-")
    text = (OPENPI_SRC / path).read_text().splitlines()
    lo, hi = int(first), int(last or first)
    assert 1 <= lo <= hi <= len(text), f"{ref}: lines out of range"
    return "\n".join(text[lo - 1:hi])


needs_openpi = pytest.mark.skipif(not (OPENPI_SRC / "src/openpi").is_dir(),
                                  reason=f"no OpenPI checkout at {OPENPI_SRC} (set PIBRIDGE_OPENPI_SRC)")


@needs_openpi
def test_openpi_checkout_is_the_cited_commit():
    try:
        head = subprocess.run(["git", "-C", str(OPENPI_SRC), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("OpenPI checkout has no git metadata")
    assert head == OPENPI_COMMIT


@needs_openpi
@pytest.mark.parametrize("name", profile_names())
def test_every_value_is_cited_and_the_citation_holds(name):
    raw = json.loads((PROFILE_DIR / f"{name}.json").read_text())
    sources = raw["sources"]
    assert sources["openpi_commit"] == OPENPI_COMMIT
    for field in CITED:
        if raw[field] is not None:
            assert field in sources, f"{name}.{field} = {raw[field]!r} has no source"
    for field, src in sources.items():
        if field == "openpi_commit":
            continue
        assert field in raw, f"{name}: source for unknown field {field}"
        texts = [_cited_text(r["at"]) for r in src["refs"]]
        for r, text in zip(src["refs"], texts):
            assert r["text"] in text, f"{name}.{field}: {r['at']} does not contain {r['text']!r}"
        value = raw[field]
        if isinstance(value, int) and not isinstance(value, bool) and "why" not in src:
            assert any(str(value) in r["text"] for r in src["refs"]), f"{name}.{field}={value} not in its citation"
        if isinstance(value, str) and field not in ("model", "norm") and "why" not in src:
            assert any(value in r["text"] for r in src["refs"]), f"{name}.{field}={value!r} not in its citation"
        if field == "cameras":
            for cam in value:
                if cam["source"] != "empty":
                    assert any(cam["source"] in r["text"] for r in src["refs"]), f"{name}: {cam} not cited"


def test_require_names_the_flag():
    base = load_profile("pi0_base")
    with pytest.raises(PibridgeError) as err:
        base.require("state_dim")
    assert "--state-dim" in str(err.value) and "pi0_base" in str(err.value)
    with pytest.raises(PibridgeError, match="--camera-map"):
        base.require("cameras")
    with pytest.raises(PibridgeError, match="--my-flag"):
        base.require("asset_id", "--my-flag")
    assert load_profile("pi0_droid").require("state_dim") == 8


def test_with_overrides_returns_new_profile_and_records_changes():
    p = load_profile("pi05_droid")
    q = p.with_overrides(action_horizon=16, state_dim=None, asset_id="droid")
    assert (p.action_horizon, q.action_horizon) == (15, 16)
    assert q.state_dim == 8 and q.overrides == ("action_horizon",)  # None = flag not given; same value not recorded
    assert q.with_overrides(max_token_len=180).overrides == ("action_horizon", "max_token_len")
    with pytest.raises(PibridgeError, match="unknown profile field"):
        p.with_overrides(horizon=3)
    with pytest.raises(PibridgeError, match="discrete_state_input needs a pi05"):
        load_profile("pi0_droid").with_overrides(discrete_state_input=True)
    with pytest.raises(PibridgeError, match="positive integer"):
        p.with_overrides(action_dim=0)


def test_camera_map_overrides():
    assert parse_camera_map("base_0_rgb=top, right_wrist_0_rgb=empty") == {"base_0_rgb": "top",
                                                                            "right_wrist_0_rgb": None}
    with pytest.raises(PibridgeError, match="SLOT=CAMERA"):
        parse_camera_map("base_0_rgb")
    droid = load_profile("pi05_droid").with_overrides(cameras="base_0_rgb=exterior")
    assert droid.cameras[0] == CameraSlot("base_0_rgb", "exterior", False)
    assert droid.cameras[1].source == "observation/wrist_image_left" and droid.cameras[2].empty
    base = load_profile("pi05_base")
    with pytest.raises(PibridgeError, match="leaves out left_wrist_0_rgb, right_wrist_0_rgb"):
        base.with_overrides(cameras="base_0_rgb=top")
    with pytest.raises(PibridgeError, match="unknown image slot"):
        base.with_overrides(cameras={"top": "cam"})
    full = base.with_overrides(cameras="base_0_rgb=top,left_wrist_0_rgb=wrist,right_wrist_0_rgb=empty")
    assert [c.empty for c in full.cameras] == [False, False, True] and full.overrides == ("cameras",)
    with pytest.raises(PibridgeError, match="every camera slot is empty"):
        base.with_overrides(cameras={s: None for s in OPENPI_SLOTS})


def test_delta_mask_notation():
    assert parse_delta_mask("6,-1,6,-1") == (True,) * 6 + (False,) + (True,) * 6 + (False,)
    assert parse_delta_mask("none") == ()
    assert parse_delta_mask([1, 0]) == (True, False)
    with pytest.raises(PibridgeError, match="bad delta-action mask"):
        parse_delta_mask("6,x")
    for dim in (6, 8):  # longer or shorter than the action dim (OpenPI would read a short one as False-padded)
        with pytest.raises(PibridgeError, match=f"delta_action_mask has 7 entries but action_dim is {dim}"):
            load_profile("pi0_libero").with_overrides(action_dim=dim)


def test_json_round_trip_for_provenance():
    for name in profile_names():
        p = load_profile(name)
        assert profile_from_dict(json.loads(p.to_json())) == p
    q = load_profile("pi05_base").with_overrides(state_dim=8, delta_action_mask="none")
    back = profile_from_dict(json.loads(q.to_json()))
    assert back == q and back.overrides == ("state_dim", "delta_action_mask") and back.delta_action_mask == ()


def test_check_model():
    load_profile("pi05_droid").check_model(pi05=True)
    with pytest.raises(PibridgeError, match="pi0 model but profile 'pi05_droid'"):
        load_profile("pi05_droid").check_model(pi05=False)
