"""The real LeRobot (0.6.1 and 0.5.1, venvs from `make lerobot-env`) runs pibridge-converted tiny pi05 / pi0.

Each LeRobot run is a subprocess (`python -m pibridge.cli parity capture --stack lerobot`, Python 3.12 venv), which
applies the tiny-variant patch to these tiny OUTs itself (pibridge/parity/stacks/lerobot/tiny.py: configuration values
only, its docstring lists the diff). The JAX
stack runs here, in the project venv, on OpenPI's host preprocessing of the same observation (224x224 cameras, so
both stacks see identical pixels; batch 1; pi05_droid / pi0_droid profiles: right wrist slot empty = last, so no
stage differs by design). Skips when a venv is absent, fails instead when CI=true.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "lerobot"))
import harness as h  # noqa: E402

pytestmark = pytest.mark.timeout(900)

F32_ACTIONS_MIN_COS = 0.99999
F32_STAGE_MIN_COS = 0.9999


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("lerobot")


_jax: dict = {}


def jax_side(work: Path, model: str, precision: str) -> Path:
    key = (model, precision)
    if key not in _jax:
        out = h.make_tiny_out(work, model, "0.6.1", "float32")
        obs, _ = h.observation(work, model)
        trace = work / f"jax-{model}-{precision}.safetensors"
        h.jax_trace(h.make_ckpt(work, model), out, obs, precision, trace, npz=work / f"mi-{model}-{precision}.safetensors")
        _jax[key] = trace
    return _jax[key]


def run_lerobot(work: Path, model: str, lerobot: str, runtime: str, fixes: bool = True, model_inputs=None):
    venv = h.venv_python(f"lr-{lerobot}")  # skip / fail before any work
    del venv
    out = h.make_tiny_out(work, model, lerobot, runtime)
    _, obs_path = h.observation(work, model)
    trace = work / f"lr-{model}-{lerobot}-{runtime}-{'fix' if fixes else 'nofix'}{'-mi' if model_inputs else ''}.safetensors"
    summary = h.lerobot_capture(f"lr-{lerobot}", out, obs_path, trace, fixes=fixes, model_inputs=model_inputs)
    return out, trace, summary


def file_keys(out: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "np") as f:
        return len(list(f.keys()))


@pytest.mark.parametrize("lerobot", ["0.6.1", "0.5.1"])
@pytest.mark.parametrize("model", ["pi05", "pi0"])
def test_float32_real_lerobot_matches_jax(work, model, lerobot):
    out, trace, summary = run_lerobot(work, model, lerobot, "float32")
    assert summary["load_keys"] == file_keys(out)  # capture exits 2 on any missing/unexpected/unequal tensor
    assert summary["versions"]["lerobot"] == lerobot
    table, meta = h.stage_table(jax_side(work, model, "float32"), trace)
    assert meta["not_comparable"] == {}
    assert len(table) == 75, sorted(table)  # every stage of the contract: inputs, SigLIP, LLM, 10 steps x expert
    bad = {k: v for k, v in table.items() if isinstance(v, str) or v[0] < F32_STAGE_MIN_COS}
    assert not bad, bad
    assert table["input/tokens"][1] == 0.0 and table["input/image"][1] == 0.0  # OUT's tokenizer: same ids
    cos, max_abs = table["actions"]
    print(f"{model} lerobot {lerobot} float32: actions cosine {cos:.10f} max-abs {max_abs:.2e}")
    assert cos >= F32_ACTIONS_MIN_COS and max_abs < 1e-3


@pytest.mark.parametrize("model", ["pi05", "pi0"])
def test_preprocessor_from_out_tokens_bit_exact(work, model):
    """LeRobot's processors loaded from OUT (HF Gemma tokenizer built from OUT/tokenizer) vs OpenPI's host
    preprocessing with sentencepiece: identical token ids and mask, identical normalized state."""
    from pibridge.parity.trace import read_trace

    _, trace, _ = run_lerobot(work, model, "0.6.1", "float32")
    a, b = read_trace(jax_side(work, model, "float32")), read_trace(trace)
    for name in ("input/tokens", "input/token_mask", "input/image", "input/image_mask"):
        np.testing.assert_array_equal(a.stages[name].value, b.stages[name].value, err_msg=name)
    assert a.stages["input/token_mask"].value.sum() > 5  # a real prompt, not all padding
    # normalization eps differ by design (OpenPI 1e-6, LeRobot 1e-8: reference/lerobot.md 1.3): ~1e-5 relative
    np.testing.assert_allclose(a.stages["input/state"].value, b.stages["input/state"].value, rtol=1e-4, atol=1e-4)


def test_model_inputs_mode(work):
    """OpenPI's ModelInputs fed straight to predict_action_chunk (processors bypassed) give the same actions; the
    capture reports its phases when asked (what `parity run` relays to a terminal)."""
    jax_side(work, "pi05", "float32")
    out = h.make_tiny_out(work, "pi05", "0.6.1", "float32")
    _, obs_path = h.observation(work, "pi05")
    trace = work / "lr-pi05-0.6.1-float32-fix-mi.safetensors"
    summary = h.lerobot_capture("lr-0.6.1", out, obs_path, trace, model_inputs=work / "mi-pi05-float32.safetensors",
                                progress=True)
    table, meta = h.stage_table(jax_side(work, "pi05", "float32"), trace)
    assert meta["inputs"] == "model_inputs"
    assert table["actions"][0] >= F32_ACTIONS_MIN_COS
    shown = summary["progress"]
    assert shown[:3] == ["lerobot: load weights (LeRobot from_pretrained)", "lerobot: preprocess (OUT's processors)",
                         "lerobot: vision tower and prefix (LLM)"], shown
    assert "lerobot: denoise step 2/10" in shown, shown


@pytest.mark.parametrize("lerobot", ["0.6.1", "0.5.1"])
@pytest.mark.parametrize("model", ["pi05", "pi0"])
def test_bf16_runtime_fixes(work, model, lerobot):
    """bf16 real LeRobot judged by the shipped bf16 allowance (configs/allowance.json): REF = JAX float32, BASE =
    JAX bf16 (OpenPI's own bf16), CAND = LeRobot bf16 on the same OpenPI-preprocessed inputs. With the runtime
    fixes it passes; without them the RoPE keys diverge (bf16 inv_freq) and it fails there."""
    from pibridge.parity.allowance import compare_allowance
    from pibridge.parity.trace import read_trace

    ref, base = (read_trace(jax_side(work, model, p)) for p in ("float32", "bf16"))
    inputs = work / f"mi-{model}-float32.safetensors"
    res = {}
    for fixes in (True, False):
        _, trace, _ = run_lerobot(work, model, lerobot, "bfloat16", fixes=fixes, model_inputs=inputs)
        cand = read_trace(trace)
        judged = compare_allowance(ref, base, cand)
        first = judged.first_diverging
        res[fixes] = (judged.passed, first.name if first else None, cand.meta["fixes"])
        table, _ = h.stage_table(jax_side(work, model, "bf16"), trace)
        kv = min(v[0] for k, v in table.items() if k.startswith("llm/kv") and k.endswith("/k"))
        print(f"{model} lerobot {lerobot} bf16 fixes={fixes}: allowance {'PASS' if judged.passed else 'FAIL'} "
              f"(first failing stage {res[fixes][1]}); vs JAX bf16: min llm/kv*/k cosine {kv:.6f}, actions cosine "
              f"{table['actions'][0]:.7f}; applied {cand.meta['fixes']}")
    assert res[True][2].get("rope-inv-freq-fp32") == 4 and res[False][2] == {}
    assert res[True][:2] == (True, None), res[True]
    assert res[False][0] is False and res[False][1].startswith("llm/kv00/k"), res[False]


def test_incomplete_load_exits_2_naming_keys(work):
    """LeRobot only prints a warning and keeps random weights; pibridge's check turns it into exit 2."""
    import shutil

    from safetensors.numpy import load_file, save_file

    src = h.make_tiny_out(work, "pi05", "0.6.1", "float32")
    bad = work / "out-missing-key"
    if not bad.exists():
        shutil.copytree(src, bad)
        t = load_file(str(bad / "model.safetensors"))
        t.pop("model.action_out_proj.bias")
        save_file(t, str(bad / "model.safetensors"), metadata={"format": "pt"})
    _, obs_path = h.observation(work, "pi05")
    cmd = [str(h.venv_python("lr-0.6.1")), "-m", "pibridge.cli", "parity", "capture", "--stack", "lerobot",
           "--lerobot", str(bad), "--obs", str(obs_path), "--out", str(work / "never.safetensors")]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=h.ROOT, timeout=600)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "model.action_out_proj.bias" in p.stderr and "1 missing" in p.stderr
    assert not (work / "never.safetensors").exists()


def test_not_comparable_by_design():
    from pibridge.parity.stacks.lerobot.batches import not_comparable

    slots = ["base_0_rgb", "left_wrist_0_rgb"]
    assert not_comparable(np.ones((2, 2), bool), slots, ["right_wrist_0_rgb"]) == {}
    moved = not_comparable(np.ones((1, 2), bool), ["base_0_rgb", "right_wrist_0_rgb"], ["left_wrist_0_rgb"])
    assert "absent cameras" in moved["actions"]
    per_sample = not_comparable(np.array([[1, 1], [1, 0]], bool), slots, ["right_wrist_0_rgb"])
    assert "per-sample camera mask" in per_sample["llm/*"]


def _factory_load(out: Path, env_extra: dict | None = None) -> dict:
    import json
    import os

    py = h.venv_python("lr-0.6.1")
    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env_extra or {}))
    p = subprocess.run([str(py), str(Path(h.__file__).with_name("factory_check.py")), str(out), "--tiny"],
                       capture_output=True, text=True, cwd=h.ROOT, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_plugin_fixes_reach_lerobot_policy_factory(work):
    """lerobot-eval's path: register_third_party_plugins() imports lerobot_policy_pibridge, then
    get_policy_class(cfg.type).from_pretrained(pretrained_name_or_path=..., config=cfg) gets the fixes."""
    import shutil

    out = h.make_tiny_out(work, "pi05", "0.6.1", "bfloat16")
    r = _factory_load(out)
    assert r["plugin"] and r["fixes"].get("rope-inv-freq-fp32") == 4 and r["inv_freq_dtypes"] == ["torch.float32"]
    plain = work / "not-pibridge"
    if not plain.exists():
        shutil.copytree(out, plain)
        (plain / "pibridge.json").unlink()
    r = _factory_load(plain)  # a directory pibridge did not write loads exactly as LeRobot loads it
    assert r["plugin"] and r["fixes"] is None and r["inv_freq_dtypes"] == ["torch.bfloat16"]


BLOG_CAMERAS = "base_0_rgb=top_head,left_wrist_0_rgb=hand_left,right_wrist_0_rgb=hand_right"


def test_blog_setup_lerobot_051_bf16_aloha(work):
    """The blog's setup (shared/reference/blog-pi05-openpi-to-lerobot.txt): pi05, pi05_aloha profile, LeRobot 0.5.1 +
    transformers 5.3.0, bf16, three non-224 cameras top_head / hand_left / hand_right via --camera-map.
    OpenPI's host preprocessing (PIL resize, aloha state adaptation) feeds both models (LeRobot resizes with torch
    and does not adapt aloha joints: by design, so the model inputs are shared via --model-inputs).
    Judged by the bf16 allowance (JAX float32 reference, JAX bf16 baseline): without pibridge's fixes the RoPE keys
    diverge (bf16 inv_freq) and it fails there; with the fixes it passes."""
    h.venv_python("lr-0.5.1")
    ck = h.make_ckpt(work, "pi05", "pi05_aloha", asset="trossen")
    out = h.make_tiny_out(work, "pi05", "0.5.1", "bfloat16", profile="pi05_aloha", camera_map=BLOG_CAMERAS, ckpt=ck)
    obs, obs_path = h.observation(work, "pi05", state_dim=14, empty=(), name="blog", profile="pi05_aloha",
                                  sizes={"base_0_rgb": (480, 640), "left_wrist_0_rgb": (240, 320),
                                         "right_wrist_0_rgb": (240, 320)})
    from pibridge.parity.allowance import compare_allowance
    from pibridge.parity.trace import read_trace

    jax, npz = work / "jax-blog-bf16.safetensors", work / "mi-blog.safetensors"
    h.jax_trace(ck, out, obs, "bf16", jax, npz=npz, asset="trossen")
    h.jax_trace(ck, out, obs, "float32", work / "jax-blog-f32.safetensors", asset="trossen")
    ref, base = read_trace(work / "jax-blog-f32.safetensors"), read_trace(jax)
    res = {}
    for fixes in (True, False):
        trace = work / f"lr-blog-{fixes}.safetensors"
        s = h.lerobot_capture("lr-0.5.1", out, obs_path, trace, fixes=fixes, model_inputs=npz)
        table, meta = h.stage_table(jax, trace)
        assert meta["not_comparable"] == {} and s["versions"]["transformers"] == "5.3.0"
        judged = compare_allowance(ref, base, read_trace(trace))
        first = judged.first_diverging.name if judged.first_diverging else None
        kv = min(v[0] for k, v in table.items() if k.startswith("llm/kv") and k.endswith("/k"))
        res[fixes] = (judged.passed, first, meta["fixes"])
        print(f"blog 0.5.1/5.3.0 bf16 fixes={fixes}: allowance {'PASS' if judged.passed else 'FAIL'} (first failing "
              f"{first}); vs JAX bf16: min llm/kv*/k cosine {kv:.6f}, actions cosine {table['actions'][0]:.7f} "
              f"max-abs {table['actions'][1]:.3e}, applied {meta['fixes']}")
    assert res[True][2].get("rope-inv-freq-fp32") == 4
    assert res[True][:2] == (True, None), res[True]
    assert res[False][0] is False and res[False][1].startswith("llm/kv00/k"), res[False]


def test_lerobot_050_on_transformers_55_cannot_import_policies():
    """LeRobot 0.5.0 allows transformers >= 5.3 (< 6), so pip may give it 5.4/5.5, the releases whose embedding
    scale LeRobot 0.5's pi05 would apply twice. It never gets that far: `import lerobot.policies` fails
    (groot/groot_n1.py declares a dataclass over transformers >= 5.4's dataclass PretrainedConfig). Only runs
    where `tools/lerobot_env.sh lr-0.5.0` was built (not part of `make lerobot-env`)."""
    py = h.ROOT / ".venvs" / "lr-0.5.0" / "bin" / "python"
    if not py.exists():
        pytest.skip("optional venv .venvs/lr-0.5.0 not built (tools/lerobot_env.sh lr-0.5.0)")
    code = ("import importlib.metadata as m; print(m.version('lerobot'), m.version('transformers'));"
            "import lerobot.policies")
    p = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=300)
    assert p.stdout.startswith("0.5.0 5.5"), p.stdout
    assert p.returncode != 0 and "non-default argument 'backbone_cfg' follows default argument" in p.stderr


def test_plugin_resolves_moved_out_tokenizer(work):
    """`pibridge convert` stores OUT/tokenizer's absolute path; LeRobot <= 0.6.1 resolves no relative one. After
    OUT moves, LeRobot alone fails (it takes the dead path for a hub repo id); with the plugin it uses OUT/tokenizer."""
    import shutil

    from pibridge.convert.convert import ConvertRequest, convert

    py = h.venv_python("lr-0.6.1")
    first, moved = work / "before-move", work / "after-move"
    if not moved.exists():
        convert(ConvertRequest(ckpt=h.make_ckpt(work, "pi05"), out=first, profile="pi05_droid",
                               camera_map="base_0_rgb=top,left_wrist_0_rgb=wrist", tokenizer=h.TOKENIZER,
                               allow_tiny=True))
        shutil.move(first, moved)
    script = str(Path(h.__file__).with_name("processor_check.py"))
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    plain = subprocess.run([str(py), script, str(moved)], capture_output=True, text=True, env=env, timeout=600)
    assert plain.returncode != 0 and str(first / "tokenizer") in plain.stderr
    fixed = subprocess.run([str(py), script, str(moved), "--plugin"], capture_output=True, text=True, env=env,
                           timeout=600)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert fixed.stdout.split()[-1] == str((moved / "tokenizer").resolve())
