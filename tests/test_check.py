"""`pibridge check` (runtime guard) and `pibridge fixes` (fix-table listing)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from pibridge.errors import PibridgeError
from pibridge.fixes import guard
from pibridge.fixes.table import applicable_fixes, matching_fixes

pytestmark = pytest.mark.torch

# What transformers <= 5.3 does (reference/transformers.md): unscaled embed_tokens, divided image features,
# SigLIP keys under vision_model., inv_freq rounded by a bf16 cast.
OLD = guard.Probe("5.3.0", text_embedding_scaled=False, image_features_divided=True, siglip_flat_keys=False,
                  inv_freq_fp32_after_bf16=False)
NEW_55 = guard.Probe("5.5.4", text_embedding_scaled=True, image_features_divided=False, siglip_flat_keys=False,
                     inv_freq_fp32_after_bf16=False)


@pytest.fixture(scope="module")
def probe():
    return guard.probe_runtime()


@pytest.fixture(scope="module")
def outs(tmp_path_factory):
    """Tiny pi05 OUTs: bf16 runtime for transformers 5.5.4 (nested SigLIP keys) and for the installed release."""
    from pibridge.convert.convert import ConvertRequest, convert
    from pibridge.convert.synth import write_synthetic_checkpoint
    from pibridge.fixes.shims import transformers_version

    root = tmp_path_factory.mktemp("check")
    write_synthetic_checkpoint(root / "ck", variant="tiny-pi05", profile="pi05_droid", asset_id="droid")
    made = {}
    for name, tv in (("t55", "5.5.4"), ("installed", transformers_version())):
        req = ConvertRequest(root / "ck", root / name, "pi05_droid", camera_map="base_0_rgb=top,left_wrist_0_rgb=w",
                             allow_tiny=True, runtime_dtype="bfloat16", transformers_version=tv)
        convert(req, console=_quiet())
        made[name] = root / name
    return made


def _quiet():
    import io

    from rich.console import Console

    return Console(file=io.StringIO())


def _levels(findings, level):
    return {f.fix_id or f.topic for f in findings if f.level == level}


def test_probe_measures_the_installed_release(probe):
    from packaging.version import Version

    v = Version(probe.transformers)
    assert probe.text_embedding_scaled == (v >= Version("5.4"))  # GemmaTextScaledWordEmbedding since 5.4
    assert probe.image_features_divided == (v < Version("5.4"))  # division removed in 5.4 (PR #44432)
    assert probe.siglip_flat_keys == (v >= Version("5.6"))  # SiglipVisionTransformer merged in 5.6
    assert probe.inv_freq_fp32_after_bf16 is False  # every release: .to(bfloat16) rounds the buffer


def test_installed_runtime_on_matching_out_needs_only_the_rope_fix(outs, probe):
    findings = guard.check_runtime(outs["installed"], probe=probe)
    assert _levels(findings, "error") == set()
    assert _levels(findings, "warning") == {"rope-inv-freq-fp32"}
    assert guard.exit_code(findings, strict=False) == 0 and guard.exit_code(findings, strict=True) == 1


def test_key_layout_mismatch_is_an_error(outs):
    flat = replace(NEW_55, transformers="5.6.0", siglip_flat_keys=True)
    findings = guard.check_runtime(outs["t55"], probe=flat)
    err = [f for f in findings if f.level == "error"]
    assert [f.fix_id for f in err] == ["siglip-flat-keys"]
    assert "--transformers-version 5.6.0" in err[0].fix
    assert guard.exit_code(findings, strict=False) == 1
    assert _levels(guard.check_runtime(outs["t55"], probe=NEW_55), "error") == set()


def test_old_transformers_with_lerobot_06_needs_both_scaling_fixes(outs):
    findings = guard.check_runtime(outs["t55"], probe=OLD)
    assert _levels(findings, "warning") >= {"image-features-undivided", "text-embedding-scaled", "rope-inv-freq-fp32"}
    assert "fix-table" not in _levels(findings, "warning")  # the probes and configs/fixes.json agree
    fixes = " ".join(f.fix for f in findings)
    assert "bypass_image_feature_division" in fixes and "scale_text_embeddings" in fixes


def test_lerobot_05_on_new_transformers_is_double_scaling(outs):
    findings = guard.check_runtime(outs["t55"], probe=NEW_55, lerobot="0.5.1")
    warned = _levels(findings, "warning")
    assert "double-scaling-lerobot-0.5" in warned and "versions" in warned  # also: LeRobot differs from target
    assert "fix-table" not in warned
    ok = guard.check_runtime(outs["t55"], probe=OLD, lerobot="0.5.1")
    assert "double-scaling-lerobot-0.5" not in _levels(ok, "warning")


def test_probe_disagreeing_with_the_fix_table_is_reported(outs):
    odd = replace(NEW_55, image_features_divided=True)  # a release the table does not know about
    findings = guard.check_runtime(outs["t55"], probe=odd)
    assert "fix-table" in _levels(findings, "warning")


def test_check_needs_a_converted_out(tmp_path):
    with pytest.raises(PibridgeError, match="pibridge.json"):
        guard.check_runtime(tmp_path, probe=NEW_55)


def test_command_check_prints_and_returns_exit_code(outs, probe, capsys, monkeypatch):
    monkeypatch.setattr(guard, "probe_runtime", lambda: probe)
    assert guard.command_check(outs["installed"], strict=True, as_json=True) == 1
    rows = json.loads(capsys.readouterr().out)
    assert any(r["fix_id"] == "rope-inv-freq-fp32" and r["level"] == "warning" for r in rows)
    assert guard.command_check(outs["installed"]) == 0
    assert "restore_rope_inv_freq" in capsys.readouterr().out


def test_matching_fixes_filters():
    assert [f.id for f in matching_fixes()] == [f.id for f in matching_fixes(None, None, None)]
    old = {f.id for f in matching_fixes("5.3.0", "0.6.1", "float32")}
    assert {"image-features-undivided", "text-embedding-scaled"} <= old
    assert "rope-inv-freq-fp32" not in old and "double-scaling-lerobot-0.5" not in old
    assert {f.id for f in matching_fixes("5.5.4", "0.5.1", "float32")} == {"double-scaling-lerobot-0.5"}
    assert "siglip-flat-keys" in {f.id for f in matching_fixes(transformers="5.6.0")}
    assert "siglip-flat-keys" not in {f.id for f in matching_fixes(transformers="5.5.4")}
    for args in (("5.3.0", "0.6.1", "bfloat16"), ("5.24.0", "0.5.1", "float32")):
        assert matching_fixes(*args) == applicable_fixes(*args)
    with pytest.raises(PibridgeError):
        matching_fixes(runtime_dtype="float16")
    with pytest.raises(PibridgeError):
        matching_fixes(transformers="five")


def test_command_fixes_prints_rows(capsys):
    rows = guard.command_fixes("5.3.0", "0.6.1", "bfloat16")
    out = capsys.readouterr().out
    assert {f.id for f in rows} >= {"rope-inv-freq-fp32", "image-features-undivided"}
    assert "rope-inv-freq-fp32" in out and "bypass_image_feature_division" in out
    assert "double-scaling-lerobot-0.5" not in out
    guard.command_fixes(lerobot="0.5.1", as_json=True)
    assert "double-scaling-lerobot-0.5" in {r["id"] for r in json.loads(capsys.readouterr().out)}
