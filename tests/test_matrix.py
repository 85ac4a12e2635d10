"""The supported-release range (configs/transformers_support.json) and the matrix tool's pure parts."""

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from _matrix_helpers import GATE, RELEASES, matrix
from pibridge.configs import load_transformers_support
from pibridge.errors import PibridgeError
from pibridge.fixes import shims
from pibridge.fixes.table import load_fixes


@pytest.mark.parametrize("version", ["4.52.4", "4.51.3", "5.26.0", "5.26.0.dev0", "6.0.0", "not-a-version"])
def test_unsupported_release_names_the_range(version):
    with pytest.raises(PibridgeError) as err:
        shims.check_supported(version)
    text = err.value.render()
    assert f"transformers {version}" in text
    assert "4.53 through 5.25.x" in text and ">=4.53,<5.26" in text
    assert "pip install" in text


@pytest.mark.parametrize("version", ["4.53.0", "4.53.3", "4.57.6", "5.3.0", "5.5.4", "5.24.0", "5.25.0", "5.25.1"])
def test_supported_releases_pass(version):
    assert shims.check_supported(version) == version


def test_override_lets_the_canary_run_a_newer_release(monkeypatch):
    monkeypatch.setenv(shims.ALLOW_UNSUPPORTED_ENV, "1")
    assert shims.check_supported("5.30.0") == "5.30.0"


def test_installed_release_is_supported():
    assert shims.is_supported(shims.transformers_version())


def test_support_config_is_consistent():
    raw = load_transformers_support()
    spec = SpecifierSet(raw["supported"]["specifier"])
    assert Version(raw["supported"]["min"] + ".0") in spec
    assert Version(raw["supported"]["newest_on_registry"]) in spec
    assert all(Version(v) in spec for v in RELEASES)
    assert set(GATE) <= set(RELEASES)
    assert any(v.startswith("4.") for v in GATE) and {"5.3.0", max(RELEASES, key=Version)} <= set(GATE)
    assert any(v.startswith("5.5.") for v in GATE)


def test_every_fix_applies_somewhere_in_the_supported_range():
    spec = SpecifierSet(shims.supported_range()["specifier"])
    for fix in load_fixes():
        fspec = SpecifierSet("" if fix.transformers == "*" else fix.transformers)
        assert any(Version(v) in spec and Version(v) in fspec for v in RELEASES), fix.id


def _m(cos, max_abs=0.0, rel=0.0):
    from pibridge.parity.compare import Metrics

    return Metrics(cos, max_abs, 0.0, rel, (0,), 0.0, 0.0, 1)


def test_strict_thresholds_float32():
    ok = {"img/tokens": _m(1.0, rel=2e-6), "llm/kv00/k": _m(0.999999), "llm/block03": _m(0.9), "actions": _m(1.0)}
    assert matrix.threshold_failures(ok, "float32") == []  # deep stages are tolerances.json's business
    assert matrix.threshold_failures({**ok, "img/tokens": _m(1.0, rel=0.875)}, "float32") == ["img/tokens"]
    assert matrix.threshold_failures({**ok, "actions": _m(0.9999)}, "float32") == ["actions"]


def test_strict_thresholds_bf16_catch_scale_and_rope_defects():
    ok = {"img/tokens": _m(0.99988, rel=0.016), "llm/kv00/k": _m(0.99987), "llm/block03": _m(0.98),
          "actions": _m(0.9986)}
    assert matrix.threshold_failures(ok, "bfloat16") == []
    scaled = {**ok, "img/tokens": _m(1.0, rel=0.875)}  # image features 1/sqrt(width) too small: cosine 1
    assert matrix.threshold_failures(scaled, "bfloat16") == ["img/tokens"]
    assert matrix.threshold_failures({**ok, "llm/kv00/k": _m(0.99964)}, "bfloat16") == ["llm/kv00/k"]


def test_tolerance_failures_allow_float_rounding_of_a_unit_cosine():
    from pibridge.parity.compare import Rule

    rules = [Rule("prefix/mask", "*", 0.0, 1.0)]
    assert matrix.tolerance_failures({"prefix/mask": _m(1 - 1e-16)}, rules, "bf16") == []
    assert matrix.tolerance_failures({"prefix/mask": _m(1.0, 1.0)}, rules, "bf16") == ["prefix/mask"]


def test_rows_fold_variants_and_markdown_renders():
    base = {"transformers": "5.5.4", "lerobot": "0.6.1", "dtype": "bfloat16", "fixes": True, "exact": False,
            "applied": {"rope-inv-freq-fp32": 4}, "worst_stage": "llm/block03", "worst_cosine": 0.998,
            "worst_max_abs": 1.5, "actions_cosine": 0.9997, "actions_max_abs": 0.1, "first_failing": None,
            "pass": True, "seconds": 1.0, "pass_strict": True, "first_failing_strict": None}
    rows = matrix.rows_from([dict(base, variant="tiny-pi05"), dict(base, variant="tiny-pi0", **{"pass": False})])
    assert len(rows) == 1 and rows[0]["pass"] is False and rows[0]["fixes_applied"] == ["rope-inv-freq-fp32"]
    md = matrix.markdown(rows, {"date": "d", "rule": "r", "wall_s": 1, "venvs": {}, "variants": ["tiny-pi05", "tiny-pi0"]})
    assert "| 5.5.4 | 0.6.1 (0.6) | bfloat16 | on | rope-inv-freq-fp32 |" in md and md.rstrip().endswith("FAIL | pass |")


def test_load_policy_refuses_an_unsupported_release(monkeypatch, tmp_path):
    from pibridge.configs import load_variant
    from pibridge.parity.stacks.torch import model

    monkeypatch.setattr(shims, "transformers_version", lambda: "4.52.4")
    with pytest.raises(PibridgeError, match="4.53 through 5.25.x"):
        model.load_policy(tmp_path, load_variant("tiny-pi05"), "float32")


def test_merge_keeps_the_other_releases_rows_and_says_when_each_was_made():
    old = {"meta": {"date": "d1", "releases": ["5.5.4", "5.24.0"], "venvs": {"5.5.4": 1.0, "5.24.0": 2.0}},
           "results": [{"transformers": "5.5.4", "tag": "a"}, {"transformers": "5.24.0", "tag": "old"}]}
    new = [{"transformers": "5.24.0", "tag": "new"}, {"transformers": "5.25.0", "tag": "b"}]
    merged, meta = matrix.merge_results(old, new, {"date": "d2", "releases": ["5.24.0", "5.25.0"],
                                                   "venvs": {"5.25.0": 3.0}}, ["5.5.4", "5.24.0", "5.25.0"])
    assert [r["tag"] for r in merged] == ["a", "new", "b"]
    assert meta["releases"] == ["5.5.4", "5.24.0", "5.25.0"]
    assert meta["merged"] == {"5.5.4": "d1", "5.24.0": "d2", "5.25.0": "d2"}
    assert meta["venvs"] == {"5.5.4": 1.0, "5.24.0": 2.0, "5.25.0": 3.0}
    md = matrix.markdown([], {**meta, "rule": "r", "wall_s": 1, "variants": []})
    assert "rows made: 5.5.4 d1, 5.24.0 d2, 5.25.0 d2" in md
