"""The fixes wing's registries against the table (configs/fixes.json): every runtime record has its function,
every guarded record its probe, both ways; version facts come from data; and adding a fix is one record + one
function + one probe, picked up by apply_runtime_fixes and `pibridge check` with no other edit."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import pibridge
from pibridge.errors import PibridgeError
from pibridge.fixes import table
from pibridge.fixes.table import GUARDED_KINDS, RUNTIME_KINDS, embedding_semantics, flat_siglip_keys, load_fixes

pytestmark = pytest.mark.torch


def test_every_runtime_record_has_its_function_and_back():
    from pibridge.fixes.runtime import RUNTIME_FIXES

    records = {f.id: f for f in load_fixes() if f.kind in RUNTIME_KINDS}
    assert set(records) == set(RUNTIME_FIXES)
    for fix_id, fn in RUNTIME_FIXES.items():
        assert fn.__name__ == records[fix_id].function  # the name `pibridge check` / `pibridge fixes` print


def test_every_guarded_record_has_a_probe_and_back():
    from pibridge.fixes.guard import PROBES

    assert {f.id for f in load_fixes() if f.kind in GUARDED_KINDS} == set(PROBES)


def test_record_kinds_and_semantics_are_known():
    sem = table.load_table().embedding_semantics
    for f in load_fixes():
        assert f.kind in RUNTIME_KINDS + GUARDED_KINDS, f.id
        assert f.semantics is None or f.semantics in sem, f.id
    assert [f.semantics for f in load_fixes() if f.id == "double-scaling-lerobot-0.5"] == ["0.5"]  # kept from JSON


def test_version_facts_come_from_the_table():
    assert [embedding_semantics(v) for v in ("0.5.0", "0.5.1", "0.6.0", "0.6.1")] == ["0.5", "0.5", "0.6", "0.6"]
    assert not flat_siglip_keys("5.5.4") and flat_siglip_keys("5.6.0") and flat_siglip_keys("5.6.0.dev0")
    assert table.transformers_api("image_features_return_output", "5.0.0")
    assert not table.transformers_api("image_features_return_output", "4.57.6")


def test_no_version_literal_in_code():
    """Thresholds live in configs/*.json: no Version("...") / SpecifierSet("...") literal under pibridge/."""
    found = []
    for path in Path(pibridge.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in (
                    "Version", "SpecifierSet") and node.args and isinstance(node.args[0], ast.Constant):
                found.append(f"{path.name}:{node.lineno}")
    assert not found, found


@pytest.fixture
def throwaway(tmp_path, monkeypatch):
    """A temp fix table = the shipped one + record `test-throwaway` (runtime, any version, bf16), with fresh
    registries so the registrations vanish after the test."""
    from pibridge.fixes import guard, runtime

    raw = json.loads(table.FIXES_JSON.read_text())
    raw["fixes"].append({"id": "test-throwaway", "kind": "runtime", "defect": "a planted defect", "evidence": "test",
                         "applies": {"transformers": "*", "lerobot": "*", "runtime_dtype": ["bfloat16"]},
                         "function": "mark_policy", "check": "policy carries _throwaway"})
    path = tmp_path / "fixes.json"
    path.write_text(json.dumps(raw))
    monkeypatch.setattr(table, "FIXES_JSON", path)
    monkeypatch.setattr(runtime, "RUNTIME_FIXES", dict(runtime.RUNTIME_FIXES))
    monkeypatch.setattr(guard, "PROBES", dict(guard.PROBES))
    table.load_table.cache_clear()
    yield runtime, guard
    table.load_table.cache_clear()


def _tiny_out(tmp_path: Path) -> Path:
    """The two things `pibridge check` reads: pibridge.json's target and model.safetensors' vision keys."""
    import numpy as np
    from safetensors.numpy import save_file

    out = tmp_path / "out"
    out.mkdir()
    (out / "pibridge.json").write_text(json.dumps({"target": {"lerobot_version": "0.6.1", "runtime_dtype": "bfloat16",
                                                              "transformers_version": "5.5.4"}}))
    save_file({"model.paligemma_with_expert.paligemma.model.vision_tower.vision_model.x": np.zeros(1, np.float32)},
              str(out / "model.safetensors"))
    return out


def test_a_new_fix_is_one_record_one_function_one_probe(throwaway, tmp_path):
    import torch

    runtime, guard = throwaway
    out, policy = _tiny_out(tmp_path), torch.nn.Linear(2, 2)
    args = dict(runtime_dtype="bfloat16", lerobot_version="0.6.1", transformers_version="5.5.4")
    with pytest.raises(PibridgeError, match="test-throwaway.*no registered function"):
        runtime.apply_runtime_fixes(policy, **args)
    probe = guard.Probe("5.5.4", text_embedding_scaled=True, image_features_divided=False, siglip_flat_keys=False,
                        inv_freq_fp32_after_bf16=False)
    with pytest.raises(PibridgeError, match="test-throwaway.*no probe"):
        guard.check_runtime(out, probe=probe, lerobot="0.6.1")

    @runtime.runtime_fix("test-throwaway")
    def mark_policy(p) -> int:
        changed = int(not getattr(p, "_throwaway", False))
        p._throwaway = True
        return changed

    @guard.probe("test-throwaway")
    def _(rt, fix):
        return [guard.Finding("warning", "throwaway", "planted", "", f"apply {fix.function}", fix.id)]

    assert runtime.apply_runtime_fixes(policy, **args) == {"rope-inv-freq-fp32": 0, "test-throwaway": 1}
    assert policy._throwaway and runtime.apply_runtime_fixes(policy, **args)["test-throwaway"] == 0
    findings = guard.check_runtime(out, probe=probe, lerobot="0.6.1")
    warned = {f.fix_id or f.topic for f in findings if f.level == "warning"}
    assert warned == {"rope-inv-freq-fp32", "test-throwaway"}  # no "fix-table": the table and the probes agree
    assert "mark_policy" in " ".join(f.fix for f in findings)
    assert "test-throwaway" not in {f.id for f in table.matching_fixes(runtime_dtype="float32")}
