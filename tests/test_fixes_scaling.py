"""Scale fixes per affected release, on test-w72-pi05 (Gemma width 72: sqrt 8.485 is not exact in bf16 (8.5),
unlike width 64's 8, so a fix that multiplies by the unrounded factor would show):
- image-features-undivided (<= 5.3 with LeRobot 0.6 code): get_image_features divides by sqrt(72).
- text-embedding-scaled (<= 5.3 with LeRobot 0.6 code): embed_tokens returns unscaled rows.
- double-scaling-lerobot-0.5 (>= 5.4 with LeRobot 0.5.0 code): image x sqrt(72), text x 72.
Each: the row fails without the fix, passes with it; text rows are bit-exact vs JAX where the scale is
the bf16-rounded factor (OpenPI gemma.py:150)."""

import pytest

from _matrix_helpers import RELEASES_GE_54, RELEASES_LE_53, releases, results, stage

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("version", releases(RELEASES_LE_53))
def test_image_features_undivided(version):
    res = results(version)
    without, with_ = res["image/without"], res["lr06/with"]
    assert "image-features-undivided" in with_["applied"]
    rel_without = stage(without, "img/tokens")[2]
    assert abs(rel_without - (1 - 72 ** -0.5)) < 0.01, rel_without  # tokens 1/sqrt(72) of JAX's
    assert stage(with_, "img/tokens")[2] < 0.02 and stage(with_, "img/tokens")[0] > 0.9999
    assert not without["pass_strict"] and without["first_failing_strict"] == "img/tokens"
    assert with_["pass_strict"], with_["first_failing_strict"]


@pytest.mark.parametrize("version", releases(RELEASES_LE_53))
def test_text_embedding_scaled(version):
    res = results(version)
    without, with_ = res["text/without"], res["lr06/with"]
    assert "text-embedding-scaled" in with_["applied"]
    assert stage(without, "prefix/embeds[text]")[1] > 0.5  # unscaled rows (x1 instead of x8.5)
    assert stage(with_, "prefix/embeds[text]")[1] == 0.0  # bf16 table x bf16 8.5, as JAX
    assert not without["pass_strict"] and with_["pass_strict"]


@pytest.mark.parametrize("version", releases(RELEASES_GE_54))
def test_double_scaling_lerobot_05(version):
    res = results(version)
    without, with_ = res["double/without"], res["double/with"]
    assert "double-scaling-lerobot-0.5" in with_["applied"]
    assert stage(without, "img/tokens")[2] > 5  # x sqrt(72) too large
    assert stage(without, "prefix/embeds[text]")[1] > 1  # x 72 too large
    assert stage(with_, "img/tokens")[2] < 0.02
    # LeRobot 0.5 multiplies by math.sqrt(72) (Python float), OpenPI by bf16(sqrt(72)) = 8.5: a residual
    # 1-ulp difference on some text elements that width 64 (sqrt 8, exact) would hide.
    assert 0 < stage(with_, "prefix/embeds[text]")[1] < 0.05
    assert not without["pass_strict"] and with_["pass_strict"], with_["first_failing_strict"]


@pytest.mark.parametrize("version", releases(RELEASES_GE_54))
def test_lerobot_06_text_scale_is_native_and_exact(version):
    """>= 5.4: GemmaTextScaledWordEmbedding's bf16 embed_scale (8.5) = JAX's factor: text rows bit-exact."""
    assert stage(results(version)["rope/with"], "prefix/embeds[text]")[1] == 0.0
