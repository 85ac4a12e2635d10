"""OpenPI's host-side preprocessing in numpy, against values computed by hand from upstream's formulas."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from pibridge.convert.profile import load_profile
from pibridge.errors import PibridgeError
from pibridge.parity.openpi_preprocess import (
    NormStats, aloha_actions_from_pi, aloha_state_to_pi, clean_prompt, discretize_state, image_to_float,
    image_to_uint8, load_norm_stats, normalize, pad_tokens, postprocess_actions, preprocess,
    preprocess_detailed, prompt_text,
    resize_with_pad, tokenize_prompt, unnormalize,
)
from pibridge.tokenizer import load_tokenizer

SPM = Path(__file__).parent / "data" / "test_spm.model"
NEWLINE_ID = 4  # the user-defined "\n" piece of the test model


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(SPM)


# ------------------------------------------------------------------------------------------ images
def _pattern_2x4() -> np.ndarray:
    img = np.zeros((2, 4, 3), np.uint8)
    img[..., 0] = [[0, 112, 224, 56], [112, 0, 56, 224]]  # R: horizontal and vertical structure
    img[..., 1] = 7  # G: constant
    img[1, :, 2] = 112  # B: vertical step only
    return img


def test_resize_with_pad_2x4_by_hand():
    # ratio = max(4/224, 2/224) -> 224 x 112 content, pasted at row int((224-112)/2) = 56 (image_tools.py:48-56).
    # PIL BILINEAR upscaling by 56: output column x samples input at c = (x+0.5)/56 with triangle weights
    # 1-|c-(i+0.5)|; x <= 27 sees only pixel 0, x >= 196 only pixel 3.
    out = resize_with_pad(_pattern_2x4())
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert not out[:56].any() and not out[168:].any()  # black padding rows, top and bottom
    assert (out[56:168, :, 1] == 7).all()  # a constant stays constant
    r = out[..., 0].astype(int)
    assert r[56, 0] == 0 and r[56, 27] == 0 and r[56, 223] == 56 and r[56, 196] == 56
    assert r[56, 42] == 29  # c = 42.5/56: 0.741*0 + 0.259*112 = 29
    assert r[56, 111] == 167  # c = 111.5/56: 0.509*112 + 0.491*224 = 112c - 56 = 167
    assert r[167, 0] == 112 and r[167, 223] == 224  # last content row sees only input row 1
    assert r[56 + 55, 0] == 55 and out[56 + 55, 0, 2] == 55  # rows: c = 55.5/56 -> 0.491 * 112 = 55


def test_resize_with_pad_truncates_like_openpi():
    # 1 x 3: content 74 rows (int(74.67)) at row int(150/2) = 75 -> black rows 0..74 and 149..223.
    out = resize_with_pad(np.full((1, 3, 3), 200, np.uint8))
    rows = np.flatnonzero(out[..., 0].any(axis=1))
    assert (rows[0], rows[-1]) == (75, 148)
    # 8 x 9: width 9 / (9/224) = 223.99999999999997 -> int 223: column 223 stays black.
    out = resize_with_pad(np.full((8, 9, 3), 255, np.uint8))
    cols = np.flatnonzero(out[..., 0].any(axis=0))
    assert (cols[0], cols[-1]) == (0, 222)
    rows = np.flatnonzero(out[..., 0].any(axis=1))
    assert (rows[0], rows[-1]) == (12, 12 + 199 - 1)  # int(8 * 224 / 9) = 199 rows at int(25 / 2) = 12


def test_resize_with_pad_noop_and_batch():
    img = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    assert resize_with_pad(img) is img
    batch = np.stack([_pattern_2x4(), _pattern_2x4()[::-1]])
    out = resize_with_pad(batch)
    assert out.shape == (2, 224, 224, 3)
    np.testing.assert_array_equal(out[0], resize_with_pad(_pattern_2x4()))
    np.testing.assert_array_equal(out[1], resize_with_pad(_pattern_2x4()[::-1]))


def test_image_conversions():
    f = image_to_float(np.array([0, 1, 128, 255], np.uint8))
    assert f.dtype == np.float32
    assert f[0] == -1.0 and f[3] == 1.0
    assert f[1] == np.float32(np.float32(1 / np.float32(255)) * 2) - 1  # op by op in float32
    assert f[2] == np.float32(0.003921628)  # 128/255*2-1 = 1/255 in float32 steps
    u = image_to_uint8(np.array([0.0, 0.5, 0.999, 1.0], np.float32))
    np.testing.assert_array_equal(u, [0, 127, 254, 255])  # 255*x truncated, as the robot policies do
    with pytest.raises(PibridgeError, match="image dtype"):
        image_to_uint8(np.zeros(3, np.int32))


# ------------------------------------------------------------------------------------ normalization
STATS = NormStats(mean=np.array([1.0, 2.0]), std=np.array([2.0, 0.5]), q01=np.array([-1.0, 0.0]),
                  q99=np.array([1.0, 4.0]))


def test_zscore_normalize_and_inverse():
    x = np.array([3.0, 2.0])
    np.testing.assert_array_equal(normalize(x, STATS, "zscore"), [2.0 / (2.0 + 1e-6), 0.0])
    y = unnormalize(np.array([1.0, -2.0, 0.5, 0.25]), STATS, "zscore")  # 2 native + 2 padded dims
    np.testing.assert_array_equal(y, [1.0 * (2.0 + 1e-6) + 1.0, -2.0 * (0.5 + 1e-6) + 2.0,
                                      0.5 * (1 + 1e-6), 0.25 * (1 + 1e-6)])  # padded: mean 0, std 1, + eps
    np.testing.assert_allclose(unnormalize(normalize(x, STATS, "zscore"), STATS, "zscore"), x, rtol=0, atol=1e-14)
    np.testing.assert_array_equal(normalize(np.array([5.0]), STATS, "zscore"), [4.0 / (2.0 + 1e-6)])  # sliced


def test_quantile_normalize_and_inverse():
    x = np.array([0.0, 4.0])
    np.testing.assert_array_equal(normalize(x, STATS, "quantile"),
                                  [1.0 / (2.0 + 1e-6) * 2.0 - 1.0, 4.0 / (4.0 + 1e-6) * 2.0 - 1.0])
    assert normalize(np.array([3.0, 8.0]), STATS, "quantile")[0] == pytest.approx(3.0, abs=1e-5)  # not clipped
    y = unnormalize(np.array([-1.0, 1.0, 0.7, -3.0]), STATS, "quantile")
    np.testing.assert_array_equal(y, [-1.0, 2.0 / 2.0 * (4.0 + 1e-6), 0.7, -3.0])  # padded dims pass through
    np.testing.assert_allclose(unnormalize(normalize(x, STATS, "quantile"), STATS, "quantile"), x, atol=1e-14)


def test_load_norm_stats(tmp_path):
    d = tmp_path / "assets" / "physical-intelligence" / "libero"
    d.mkdir(parents=True)
    (d / "norm_stats.json").write_text(json.dumps({"norm_stats": {
        "state": {"mean": [0.5], "std": [2.0], "q01": None, "q99": None},
        "actions": {"mean": [0.1, 0.2], "std": [1.0, 1.0], "q01": [-1, -1], "q99": [1, 1]}}}))
    st = load_norm_stats(d)
    assert st["state"].q01 is None and st["actions"].q99.dtype == np.float64
    with pytest.raises(PibridgeError, match="not found"):
        load_norm_stats(tmp_path / "nope")


# ------------------------------------------------------------------------------------------ prompt
def test_discretize_edges():
    x = np.array([-1.5, -1.0, -0.9921875, -1e-9, 0.0, 0.0078125, 0.99, 0.9921875, 1.0, 7.0])
    np.testing.assert_array_equal(discretize_state(x), [-1, 0, 1, 127, 128, 129, 254, 255, 255, 255])


def test_prompt_strings_both_modes():
    assert clean_prompt("  pick_up the\nbowl \n") == "pick up the bowl"
    assert prompt_text("  pick_up the\nbowl ", None) == "pick up the bowl"
    state = np.array([-1.0, 0.0, 0.9921875, 1.0, -1.5])
    assert prompt_text("pick_up", state) == "Task: pick up, State: 0 128 255 255 -1;\nAction: "


def test_tokens_pi0_format(tok):
    tokens, mask, truncated = tokenize_prompt("pick_up the bowl", None, tok, 48)
    ids = tok.encode("pick up the bowl", add_bos=True) + tok.encode("\n")
    n = len(ids)
    assert ids[0] == 2 and ids[-1] == NEWLINE_ID and tok.encode("\n") == [NEWLINE_ID]
    assert tokens.tolist() == ids + [0] * (48 - n) and mask.tolist() == [True] * n + [False] * (48 - n)
    assert not truncated


def test_tokens_pi05_format(tok):
    state = np.array([0.0, -1.0])
    tokens, mask, _ = tokenize_prompt("fold the towel", state, tok, 200)
    n = int(mask.sum())
    assert tokens[0] == 2 and (tokens[n:] == 0).all() and mask[:n].all()
    assert tok.decode(tokens[1:n].tolist()) == "Task: fold the towel, State: 128 0;\nAction: "
    assert (tokens[:n] == NEWLINE_ID).sum() == 1  # the prompt's single "\n", no extra one appended


def test_token_truncation_and_exact_fit(caplog):
    with caplog.at_level(logging.WARNING):
        tokens, mask, truncated = pad_tokens([2, 5, 6, 7, 8, 9], 4)
    assert tokens.tolist() == [2, 5, 6, 7] and mask.all() and truncated
    assert "exceeds max length" in caplog.text
    caplog.clear()
    tokens, mask, truncated = pad_tokens([2, 5, 6, 7], 4)
    assert mask.all() and not truncated and not caplog.text


# ------------------------------------------------------------------------------------- observations
def _obs(**kw):
    rng = np.random.default_rng(1)
    obs = {"state": np.linspace(-2, 2, 8), "prompt": "pick_up the bowl",
           "images": {"base_0_rgb": _pattern_2x4(),
                      "left_wrist_0_rgb": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)}}
    obs.update(kw)
    return obs


DROID_STATS = {"state": NormStats(mean=np.full(8, 0.5), std=np.full(8, 2.0), q01=np.full(8, -2.0),
                                  q99=np.full(8, 2.0)),
               "actions": NormStats(mean=np.zeros(8), std=np.ones(8), q01=np.full(8, -1.0), q99=np.ones(8))}


def test_preprocess_pi05_droid(tok):
    d = preprocess_detailed(_obs(), load_profile("pi05_droid"), DROID_STATS, tok)
    m = d.inputs
    assert m.images.shape == (1, 3, 224, 224, 3) and m.images.dtype == np.float32
    np.testing.assert_array_equal(m.images[0, 0], image_to_float(resize_with_pad(_pattern_2x4())))
    assert (m.images[0, 2] == -1.0).all() and m.image_mask.tolist() == [[True, True, False]]
    expect = ((np.linspace(-2, 2, 8) + 2.0) / (4.0 + 1e-6) * 2.0 - 1.0).astype(np.float32)  # in f64, one rounding
    np.testing.assert_array_equal(m.state[0, :8], expect)
    assert m.state.shape == (1, 32) and m.state.dtype == np.float32 and not m.state[0, 8:].any()
    bins = " ".join(str(b) for b in discretize_state((np.linspace(-2, 2, 8) + 2.0) / (4.0 + 1e-6) * 2.0 - 1.0))
    assert d.prompt_texts == (f"Task: pick up the bowl, State: {bins};\nAction: ",) and d.truncated == (False,)
    np.testing.assert_array_equal(d.images_uint8[0, 0], resize_with_pad(_pattern_2x4()))
    assert bins == "0 36 73 109 146 182 219 255"
    assert m.tokens.dtype == np.int32 and m.tokens.shape == (1, 200) and m.token_mask.dtype == bool


def test_preprocess_pi05_libero_has_no_state_in_prompt(tok):
    d = preprocess_detailed(_obs(), load_profile("pi05_libero"), DROID_STATS, tok)
    m = d.inputs
    assert d.prompt_texts == ("pick up the bowl",)
    n = int(m.token_mask.sum())
    assert m.tokens[0, n - 1] == NEWLINE_ID and m.tokens.shape == (1, 200)


def test_preprocess_pi0_droid_zscore_and_batch(tok):
    state = np.stack([np.zeros(8), np.ones(8)])
    imgs = np.stack([_pattern_2x4(), _pattern_2x4()])
    obs = _obs(state=state, prompt=["a_b", "c"], images={"base_0_rgb": imgs, "left_wrist_0_rgb": imgs},
               image_mask={"left_wrist_0_rgb": [True, False]})
    d = preprocess_detailed(obs, load_profile("pi0_droid"), DROID_STATS, tok)
    m = d.inputs
    assert m.tokens.shape == (2, 48) and d.prompt_texts == ("a b", "c")
    np.testing.assert_array_equal(m.state[:, 0], np.float32([-0.5 / (2 + 1e-6), 0.5 / (2 + 1e-6)]))
    assert m.image_mask.tolist() == [[True, True, False], [True, False, False]]  # per-sample mask kept


def test_preprocess_token_ids_and_default_prompt(tok):
    d = preprocess_detailed(_obs(token_ids=[2, 9, 9]), load_profile("pi0_droid"), None, None)
    assert d.inputs.tokens[0, :4].tolist() == [2, 9, 9, 0] and d.inputs.token_mask[0].sum() == 3
    assert d.prompt_texts == ()
    padded = {"tokens": np.array([[2, 9, 9, 0, 0], [2, 5, 0, 0, 0]]), "token_mask": np.arange(5) < [[3], [2]]}
    m = preprocess(_obs(state=np.zeros((2, 8)), images={}, image_mask={"base_0_rgb": False,
                                                                       "left_wrist_0_rgb": False}, **padded),
                   load_profile("pi0_droid"), None, None)
    assert m.tokens.shape == (2, 48) and m.tokens[:, :3].tolist() == [[2, 9, 9], [2, 5, 0]]
    assert m.token_mask.sum(axis=1).tolist() == [3, 2] and not m.image_mask.any()
    towel = load_profile("pi0_aloha_towel")
    obs = {"state": np.zeros(14), "images": {"base_0_rgb": _pattern_2x4(), "left_wrist_0_rgb": _pattern_2x4(),
                                             "right_wrist_0_rgb": _pattern_2x4()}}
    assert preprocess_detailed(obs, towel, None, tok).prompt_texts == ("fold the towel",)
    with pytest.raises(PibridgeError, match="no prompt"):
        preprocess(obs, load_profile("pi0_aloha"), None, tok)


def test_preprocess_errors(tok):
    droid = load_profile("pi05_droid")
    with pytest.raises(PibridgeError, match="right_wrist_0_rgb is empty in the profile"):
        preprocess(_obs(images={**_obs()["images"], "right_wrist_0_rgb": _pattern_2x4()}), droid, DROID_STATS, tok)
    with pytest.raises(PibridgeError, match="no image for slot left_wrist_0_rgb"):
        preprocess(_obs(images={"base_0_rgb": _pattern_2x4()}), droid, DROID_STATS, tok)
    m = preprocess(_obs(images={"base_0_rgb": _pattern_2x4()}, image_mask={"left_wrist_0_rgb": False}),
                   droid, DROID_STATS, tok)  # a missing camera declared by a False mask: black, masked
    assert m.image_mask.tolist() == [[True, False, False]] and (m.images[0, 1] == -1).all()
    with pytest.raises(PibridgeError, match="state has shape"):
        preprocess(_obs(state=np.zeros(7)), droid, DROID_STATS, tok)
    with pytest.raises(PibridgeError, match="--camera-map"):
        preprocess(_obs(), load_profile("pi05_base").with_overrides(state_dim=8, adapt_to_pi=False), DROID_STATS, tok)
    with pytest.raises(PibridgeError, match="no q01/q99"):
        preprocess(_obs(), droid, {"state": NormStats(mean=np.zeros(8), std=np.ones(8))}, tok)
    with pytest.raises(PibridgeError, match="HWC"):
        preprocess(_obs(images={**_obs()["images"], "base_0_rgb": np.zeros((3, 8, 8), np.uint8)}), droid, None, tok)
    with pytest.raises(PibridgeError, match="no tokenizer"):
        preprocess(_obs(), droid, None, None)


# ------------------------------------------------------------------------------------- aloha + outputs
def test_aloha_adaptation_by_hand():
    # Gripper linear position x with horn^2 + x^2 - arm^2 = 0 has angle 0 (aloha_policy.py:127-129), so it
    # maps to (0 - 0.5476) / (1.6296 - 0.5476); joints 1, 2, 8, 9 flip sign (aloha_policy.py:106).
    x = np.sqrt(0.036**2 - 0.022**2)
    state = np.arange(14, dtype=np.float64) / 10
    state[[6, 13]] = (x - 0.01844) / (0.05800 - 0.01844)
    pi = aloha_state_to_pi(state.copy())
    np.testing.assert_allclose(pi[[6, 13]], -0.5476 / (1.6296 - 0.5476), atol=1e-6)
    np.testing.assert_array_equal(pi[[0, 1, 2, 8, 9]], [0.0, -0.1, -0.2, -0.8, -0.9])
    act = aloha_actions_from_pi(np.zeros((1, 14)))
    np.testing.assert_allclose(act[0, [6, 13]], (0.5476 + 0.6213) / (1.4910 + 0.6213))


def test_postprocess_delta_actions_and_slicing():
    prof = load_profile("pi0_libero")  # z-score, delta mask 6 x True + 1 x False, 7 action dims
    stats = {"state": NormStats(mean=np.full(8, 1.0), std=np.full(8, 1.0)),
             "actions": NormStats(mean=np.full(7, 0.5), std=np.full(7, 2.0))}
    actions = np.ones((2, 3, 32), np.float32)
    state = np.zeros((2, 32), np.float32)
    out = postprocess_actions(actions, state, prof, stats)
    assert out.shape == (2, 3, 7)
    a = 1.0 * (2.0 + 1e-6) + 0.5  # unnormalized action; the state unnormalizes to 0 * (1 + 1e-6) + 1 = 1
    np.testing.assert_array_equal(out[0, 0], [a + 1.0] * 6 + [a])  # joints + state, gripper absolute
    with pytest.raises(PibridgeError, match="--delta-action-mask"):
        postprocess_actions(actions, state, load_profile("pi05_base").with_overrides(action_dim=7), None)


# ------------------------------------------------------------------------------------------ tokenizer
def test_tokenizer_settings_and_errors(tmp_path, tok):
    assert tok.vocab_size == 640 and tok.encode("\n") == [NEWLINE_ID]
    assert tok.encode("pick up", add_bos=True)[0] == 2 and len(tok.encode("128")) == 3  # BOS; split digits
    assert all(3 not in tok.encode(t) for t in ["Ω 😀 zebra"])  # byte fallback: never <unk>
    with pytest.raises(PibridgeError, match="not found"):
        load_tokenizer(tmp_path / "none.model")
    (tmp_path / "bad.model").write_bytes(b"garbage")
    with pytest.raises(PibridgeError, match="not a SentencePiece model"):
        load_tokenizer(tmp_path / "bad.model")
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(sentence_iterator=iter(["a b c d e f g", "pick up the cup"] * 5),
                                   model_prefix=str(tmp_path / "default_ids"), vocab_size=20, minloglevel=2)
    with pytest.raises(PibridgeError, match="pad/eos/bos ids"):  # sentencepiece defaults: no pad, eos 2, bos 1
        load_tokenizer(tmp_path / "default_ids.model")


def test_test_tokenizer_is_reproducible():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_test_tokenizer",
                                                  Path(__file__).parents[1] / "tools" / "make_test_tokenizer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.train() == SPM.read_bytes(), "tests/data/test_spm.model differs from tools/make_test_tokenizer.py"


def test_observation_file_object_converts(tok):
    from pibridge.parity.observation import Observation
    from pibridge.parity.openpi_preprocess import observation_dict

    imgs = np.stack([_pattern_2x4()] * 2)
    obs = Observation(images={"base_0_rgb": imgs, "left_wrist_0_rgb": imgs},
                      image_mask=np.array([[1, 1], [1, 0]], bool), state=np.zeros((2, 8), np.float32), prompts=("a", "b"), noise=np.zeros((2, 10, 32), np.float32),
                      seed=0)
    d = preprocess_detailed(observation_dict(obs), load_profile("pi0_droid"), DROID_STATS, tok)
    assert d.prompt_texts == ("a", "b") and d.inputs.image_mask.tolist() == [[True, True, False], [True, False, False]]
