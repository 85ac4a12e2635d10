"""LeRobot's preprocessing (pibridge.parity.lerobot_preprocess) against hand-computed values: resize with pad on
non-square images, normalization formulas, the pi05 / pi0 prompt strings, token padding and truncation, and a
whole observation through a converted OUT."""

from __future__ import annotations

import numpy as np
import pytest
from _parity_helpers import TOKENIZER, make_policy

from pibridge.parity import lerobot_preprocess as lp
from pibridge.parity.observation import load_observation
from pibridge.tokenizer import load_tokenizer


def test_resize_exact_halving_is_2x2_means_and_pads_centred():
    # (1, 4, 8) -> target 4x4: ratio 2, resized 2x4; bilinear align_corners=False at scale 2 samples source
    # 2*i + 0.5, i.e. the mean of each 2x2 block; then 1 row of zeros on top and 1 at the bottom.
    img = np.arange(32, dtype=np.float32).reshape(1, 4, 8, 1).repeat(3, -1) / 40.0
    out = lp.resize_with_pad_lerobot(img, 4, 4)
    blocks = img[0, :, :, 0].reshape(2, 2, 4, 2).mean(axis=(1, 3))  # (4, 8) -> (2, 2, 4, 2) -> (2, 4)
    assert out.shape == (1, 4, 4, 3)
    np.testing.assert_allclose(out[0, 1:3, :, 0], blocks, rtol=0, atol=1e-7)
    assert (out[0, 0] == 0).all() and (out[0, 3] == 0).all()


def test_resize_uneven_padding_puts_the_floor_half_first_and_clamps():
    img = np.full((1, 2, 4, 3), 1.0, np.float32)
    img[0, 0, 0, 0] = 3.0  # out of [0, 1]: clamped after the resize
    out = lp.resize_with_pad_lerobot(img, 5, 4)  # ratio 1: same size, 3 pad rows: 1 on top, 2 below
    assert out.shape == (1, 5, 4, 3)
    assert (out[0, 0] == 0).all() and (out[0, 3:] == 0).all()
    np.testing.assert_array_equal(out[0, 1:3], np.minimum(img[0], 1.0))
    tall = lp.resize_with_pad_lerobot(np.ones((1, 8, 4, 3), np.float32), 4, 4)  # 8x4 -> 4x2, 1 column each side
    assert (tall[0, :, 0] == 0).all() and (tall[0, :, 3] == 0).all() and (tall[0, :, 1:3] == 1).all()


def test_preprocess_image_maps_to_minus_one_one_and_224_is_untouched():
    img = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    out = lp.preprocess_image(img, "lerobot")
    np.testing.assert_array_equal(out, img.astype(np.float32) / np.float32(255) * np.float32(2) - np.float32(1))
    wide = np.random.default_rng(1).integers(0, 256, (1, 240, 320, 3), dtype=np.uint8)
    a, b = lp.preprocess_image(wide, "lerobot"), lp.preprocess_image(wide, "openpi")
    assert a.shape == b.shape == (1, 224, 224, 3)
    assert (a[0, :20] == -1).all() and (a[0, -20:] == -1).all()  # 240x320 -> 168x224: 28 rows above and below
    assert 0 < np.abs(a - b).max() < 1.0  # same geometry, different interpolation


def _normalizer(mode):
    stats = {"observation.state": {"mean": np.array([1.0, -2.0], np.float32), "std": np.array([2.0, 0.5], np.float32),
                                   "q01": np.array([-1.0, 3.0], np.float32), "q99": np.array([3.0, 3.0], np.float32)}}
    return lp.Normalizer(stats, {"STATE": mode}, {"observation.state": "STATE"}, 1e-8)


def test_normalization_formulas():
    x = np.array([[2.0, -1.0]], np.float32)
    z = _normalizer("MEAN_STD")
    np.testing.assert_array_equal(z.normalize("observation.state", x),
                                  np.array([[1 / np.float32(2 + 1e-8), 1 / np.float32(0.5 + 1e-8)]], np.float32))
    np.testing.assert_array_equal(z.unnormalize("observation.state", np.array([[1.0, 2.0]], np.float32)), [[3.0, -1.0]])
    q = _normalizer("QUANTILES")
    # dim 0: 2 (2 - -1) / 4 - 1 = 0.5; dim 1: q99 == q01 -> d = 1e-8: 2 (-1 - 3) / 1e-8 - 1
    np.testing.assert_allclose(q.normalize("observation.state", x), [[0.5, -8e8 - 1]], rtol=1e-6)
    np.testing.assert_array_equal(q.unnormalize("observation.state", np.array([[0.5, 0.0]], np.float32))[0, 0], 2.0)
    np.testing.assert_array_equal(_normalizer("IDENTITY").normalize("observation.state", x), x)


def test_prompts():
    # lerobot.md 4.2 [verified on LeRobot]: the exact string Pi05PrepareStateTokenizerProcessorStep builds
    state = np.array([0, 0.5, -0.5, 1, -1, 0.999, -0.999, 2], np.float32)
    assert lp.pi05_prompt("pick_up the cube\n", state) == \
        "Task: pick up the cube, State: 128 192 64 255 0 255 0 255;\nAction: "
    assert lp.discretize_state(np.array([-1.5, -1.0, 0.0, 0.9921875, 5.0])).tolist() == [-1, 0, 128, 255, 255]
    assert lp.pi0_prompt("fold_the towel") == "fold_the towel\n"  # raw task, no cleaning
    assert lp.pi0_prompt("go\n") == "go\n"


def test_tokenize_bos_right_padding_and_truncation():
    tok = load_tokenizer(TOKENIZER)
    ids = tok.encode("pick up the cube", add_bos=True)
    assert ids[0] == 2
    tokens, mask = lp.tokenize(["pick up the cube", "go"], tok, 12)
    assert tokens.shape == (2, 12) and tokens.dtype == np.int32
    assert tokens[0, : len(ids)].tolist() == ids and (tokens[0, len(ids):] == 0).all()
    assert mask[0].tolist() == [True] * len(ids) + [False] * (12 - len(ids))
    short, smask = lp.tokenize(["pick up the cube"], tok, 3)
    assert short[0].tolist() == ids[:3] and smask.all()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return make_policy(tmp_path_factory.mktemp("lp"), "tiny-pi05")


def test_whole_observation_through_out(converted):
    ck, out, obs_path = converted
    files = lp.load_lerobot_files(out)
    obs = load_observation(obs_path)
    assert files.prompt_step == "pi05_state" and files.max_length == 200
    assert files.slot_cameras == {"base_0_rgb": "top", "left_wrist_0_rgb": "wrist", "right_wrist_0_rgb": None}
    pre = lp.preprocess(obs, files, load_tokenizer(TOKENIZER), "lerobot")
    x = pre.inputs
    assert x.images.shape == (2, 3, 224, 224, 3) and x.state.shape == (2, 32)
    assert x.image_mask.tolist() == [[True, True, False], [True, False, False]]
    assert (x.images[:, 2] == -1).all()
    st = files.pre.stats["observation.state"]
    want = np.float32(2) * (obs.state - st["q01"]) / (st["q99"] - st["q01"]) - np.float32(1)
    np.testing.assert_array_equal(x.state[:, :8], want)
    assert (x.state[:, 8:] == 0).all()
    assert pre.prompt_texts[0] == lp.pi05_prompt(obs.prompts[0], want[0])
    n_ids = len(load_tokenizer(TOKENIZER).encode(pre.prompt_texts[0], add_bos=True))
    assert x.tokens[0, 0] == 2 and x.token_mask[0].sum() == n_ids
    acts = np.zeros((2, obs.noise.shape[1], 32), np.float32)
    post = files.post.stats["action"]
    middle = (post["q99"] - post["q01"]) / 2 + post["q01"]  # action 0 maps to the middle of [q01, q99]
    np.testing.assert_allclose(lp.unnormalize_actions(acts, files), np.broadcast_to(middle, (2, acts.shape[1], 8)),
                               rtol=1e-6)
