"""Helpers for the real-LeRobot tests (run in the project venv; LeRobot itself runs in .venvs/lr-* subprocesses).

make_tiny_out: synth a tiny OpenPI checkpoint + `pibridge convert` for a LeRobot release (with the test tokenizer).
jax_trace: OpenPI host preprocessing + the JAX stack on an observation (in this process: the project venv).
lerobot_capture: `python -m pibridge.cli parity capture --stack lerobot` in a LeRobot venv (tiny OUTs patched by the
capture itself).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "tests" / "data" / "test_spm.model"


def venv_python(name: str) -> Path:
    """The interpreter of .venvs/<name>; skip when absent locally, fail when CI is set (CI must build them)."""
    py = ROOT / ".venvs" / name / "bin" / "python"
    if not py.exists():
        msg = f"LeRobot venv .venvs/{name} not built (run `make lerobot-env`)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + " -- CI=true requires it")
        pytest.skip(msg)
    return py


def make_ckpt(root: Path, model: str, profile: str | None = None, asset: str = "droid") -> Path:
    from pibridge.convert.synth import write_synthetic_checkpoint

    profile = profile or f"{model}_droid"
    ck = root / f"ck-{model}-{profile}"
    if not ck.exists():
        write_synthetic_checkpoint(ck, variant=f"tiny-{model}", profile=profile, asset_id=asset)
    return ck


def make_tiny_out(root: Path, model: str, lerobot: str, runtime: str, *, profile: str | None = None,
                  camera_map: str = "base_0_rgb=top,left_wrist_0_rgb=wrist", ckpt: Path | None = None) -> Path:
    from pibridge.convert.convert import ConvertRequest, convert

    out = root / f"out-{model}-{lerobot}-{runtime}-{profile or 'droid'}"
    if not out.exists():
        convert(ConvertRequest(ckpt=ckpt or make_ckpt(root, model, profile), out=out, profile=profile or f"{model}_droid",
                               camera_map=camera_map, lerobot_version=lerobot, runtime_dtype=runtime,
                               tokenizer=TOKENIZER, allow_tiny=True))
    return out


def observation(root: Path, model: str, *, horizon: int | None = None, state_dim: int = 8, sizes=None, seed: int = 3,
                name: str = "obs", empty: tuple[str, ...] = ("right_wrist_0_rgb",), profile: str | None = None):
    from pibridge.convert.profile import load_profile
    from pibridge.parity.observation import save_observation, synthetic_observation

    horizon = horizon or load_profile(profile or f"{model}_droid").action_horizon
    sizes = sizes or {s: (224, 224) for s in ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb") if s not in empty}
    obs = synthetic_observation(batch=1, horizon=horizon, state_dim=state_dim, seed=seed, image_sizes=sizes,
                                prompts=["pick up the red block and put it in the bin"])
    path = root / f"{name}-{model}.safetensors"
    save_observation(path, obs)
    return obs, path


def jax_trace(ckpt: Path, out: Path, obs, precision: str, trace: Path, *, npz: Path | None = None,
              asset: str = "droid"):
    """OpenPI preprocessing + the JAX stack; writes the trace (and, to `npz`, the ModelInputs as the
    --save-inputs file that `parity capture --shared-inputs` reads)."""
    from pibridge.configs import load_variant
    from pibridge.provenance import load_provenance
    from pibridge.convert.profile import profile_from_dict
    from pibridge.convert.reader import open_checkpoint
    from pibridge.parity.stacks.jax import run_policy
    from pibridge.parity.openpi_preprocess import observation_dict, preprocess
    from pibridge.parity.stages import StageRecorder
    from pibridge.tokenizer import load_tokenizer
    from pibridge.parity.trace import write_trace

    prov = load_provenance(out)
    ck = open_checkpoint(ckpt)
    profile = profile_from_dict(prov["profile"])
    inputs = preprocess(observation_dict(obs), profile, ck.norm_stats(asset), load_tokenizer(TOKENIZER))
    rec = StageRecorder()
    run_policy(ck.read_tree(), load_variant(prov["variant"]), inputs, obs.noise, precision=precision, record=rec)
    write_trace(trace, rec, {"stack": "jax", "precision": precision,
                             "observation": {"fingerprint": obs.fingerprint(), "batch": obs.batch}})
    if npz is not None:
        from pibridge.parity.request import save_model_inputs

        save_model_inputs(npz, inputs)
    return inputs


def lerobot_capture(venv: str, out: Path, obs_path: Path, trace: Path, *, fixes: bool = True,
                    model_inputs: Path | None = None, progress: bool = False) -> dict:
    """`pibridge parity capture --stack lerobot` in the venv (at OUT's runtime precision); a summary read from the
    trace it wrote; with progress=True also its relayed progress lines under "progress"."""
    runtime = json.loads((Path(out) / "pibridge.json").read_text())["target"]["runtime_dtype"]
    cmd = [str(venv_python(venv)), "-m", "pibridge.cli", "parity", "capture", "--stack", "lerobot", "--lerobot",
           str(out), "--obs", str(obs_path), "--out", str(trace), "--precision", runtime]
    if not fixes:
        cmd.append("--no-fixes")
    if model_inputs is not None:
        cmd += ["--shared-inputs", str(model_inputs)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
    if progress:
        from pibridge.parity.progress import ENV

        env[ENV] = "1"
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if p.returncode != 0:
        raise AssertionError(f"lerobot capture failed (rc {p.returncode}):\n{p.stderr[-4000:]}\n{p.stdout[-2000:]}")
    from pibridge.parity.trace import read_trace

    meta = read_trace(trace).meta
    summary = {"trace": str(trace), "fixes": meta["fixes"], "versions": meta["versions"],
               "load_keys": meta["load"]["keys"], "not_comparable": sorted(set(meta["not_comparable"]))}
    if progress:
        from pibridge.parity.progress import PREFIX

        summary["progress"] = [x[len(PREFIX):].rsplit(" (", 1)[0] for x in p.stderr.splitlines() if x.startswith(PREFIX)]
    return summary


def stage_table(jax_path: Path, lr_path: Path):
    """{stage: (cosine, max_abs)} over every stage both traces hold (validity masks of the JAX side)."""
    from pibridge.parity.compare import stage_metrics
    from pibridge.parity.trace import read_trace

    a, b = read_trace(jax_path), read_trace(lr_path)
    table = {}
    for name in a.order:
        if name in b.stages:
            m = stage_metrics(a.stages[name], b.stages[name])
            table[name] = m if isinstance(m, str) else (m.cosine, m.max_abs)
    return table, b.meta
