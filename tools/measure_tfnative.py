"""Measure where transformers' native PI0 / PI05 differ from OpenPI (the JAX stack), one difference at a time
(bench/results/transformers_native.md).

    # 1. project venv: tiny case (goldens' synth spec), OUT for the release, obs, JAX stack trace + its inputs
    PYTHONPATH=. .venv/bin/python tools/measure_tfnative.py prepare DIR --model pi05 --transformers 5.25.0
    # 2. the release's venv: the native model with each variation, every trace compared with the JAX one
    PYTHONPATH=. .venvs/tf-5.25.0/bin/python tools/measure_tfnative.py measure DIR --json DIR/result.json

Variations (each alone on top of "native"): attention eager instead of sdpa; OpenPI's float32 Euler times
(openpi pi0.py:228, :271-278: t accumulated in float32) instead of transformers' `1.0 + step * dt` (Python float,
modeling_pi05.py L687-704); cameras dropped as transformers' processor does instead of masked; the state
normalized by transformers' processor (processing_pi05.py L217-230 / processing_pi0.py L194-202) instead of
OpenPI's (transforms.py Normalize: /(std+1e-6), /(q99-q01+1e-6)); the prompt transformers' processor builds
(processing_pi05.py L200-215, processing_pi0.py L185-192) instead of OpenPI's (tokenizer.py:22-33), incl. the
pi05 discrete_state_input=False format. The tokenizer is the project's test SentencePiece model.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOKENIZER = ROOT / "tests" / "data" / "test_spm.model"
STEPS = 10


def prepare(d: Path, model: str, transformers: str) -> None:
    from pibridge.convert.convert import ConvertRequest, convert
    from pibridge.parity.capture import capture, obs_command
    from pibridge.parity.request import CaptureRequest
    from pibridge.parity.goldens import spec_for, write_checkpoint

    d.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):
        write_checkpoint(spec_for(f"tiny-{model}"), d / "ck")
        convert(ConvertRequest(ckpt=d / "ck", out=d / "out", profile=f"{model}_droid", tokenizer=TOKENIZER,
                               allow_tiny=True, camera_map="base_0_rgb=top,left_wrist_0_rgb=wrist",
                               transformers_version=transformers, force=True))
        obs_command(d / "obs.safetensors", profile=str(d / "out"), masked={1: ["left_wrist_0_rgb"]})
    capture(CaptureRequest(stack="jax", obs=d / "obs.safetensors", out=d / "jax.safetensors", ckpt=d / "ck",
                           profile=str(d / "out"), tokenizer=TOKENIZER, steps=STEPS,
                           save_inputs=d / "inputs.safetensors"))
    (d / "case.json").write_text(json.dumps({"model": model, "transformers": transformers}))


# --- variations -----------------------------------------------------------------------------------------------

def openpi_times(num_steps: int) -> list[np.float32]:
    """OpenPI's while_loop times: t = 1, then t = float32(t + float32(dt)) (pi0.py:228, :271-278)."""
    dt, t, out = np.float32(-1.0 / num_steps), np.float32(1.0), []
    while t >= np.float32(1.0 / num_steps / 2):
        out.append(t)
        t = np.float32(t + dt)
    return out


def use_openpi_times(model) -> None:
    import torch

    times, calls = openpi_times(STEPS), []

    def pre(module, args, kwargs):
        kwargs["timestep"] = torch.full_like(kwargs["timestep"], float(times[len(calls)]))
        calls.append(1)
        return args, kwargs
    model.register_forward_pre_hook(pre, with_kwargs=True)


def openpi_state(d: Path, inputs, obs, profile: str):
    """(OpenPI-normalized state, transformers-processor-normalized state), native dims, from the ckpt's stats."""
    import torch

    stats = json.loads(next((d / "ck" / "assets").rglob("norm_stats.json")).read_text())["norm_stats"]["state"]
    x = np.asarray(obs.state, np.float32)
    n = x.shape[1]
    s = {k: np.asarray(v, np.float32)[:n] for k, v in stats.items() if v is not None}
    if profile == "quantile":  # transforms.py Normalize._normalize_quantile
        ours = (x - s["q01"]) / (s["q99"] - s["q01"] + 1e-6) * 2.0 - 1.0
        proc = types.SimpleNamespace(state_q01=s["q01"].tolist(), state_q99=s["q99"].tolist())
        from transformers.models.pi05.processing_pi05 import PI05Processor as P
    else:  # transforms.py Normalize._normalize
        ours = (x - s["mean"]) / (s["std"] + 1e-6)
        proc = types.SimpleNamespace(state_mean=s["mean"].tolist(), state_std=s["std"].tolist())
        from transformers.models.pi0.processing_pi0 import PI0Processor as P
    theirs = P.normalize(proc, torch.from_numpy(x), "state").numpy()  # the processor's own method
    assert np.allclose(ours, inputs.state[:, :n], atol=1e-6), "inputs file state is not OpenPI's normalization"
    return ours, theirs


def bins(state: np.ndarray) -> np.ndarray:
    return np.digitize(state, bins=np.linspace(-1, 1, 256 + 1)[:-1]) - 1  # openpi tokenizer.py:26


def tokens_for(texts: list[str], token_len: int, *, pi0_split: bool):
    """Token ids + mask (right-padded), OpenPI style: SentencePiece with BOS; pi0 style tokenizes "\\n" apart."""
    from pibridge.tokenizer import load_tokenizer

    tok = load_tokenizer(TOKENIZER)
    rows = []
    for t in texts:
        rows.append(tok.encode(t, add_bos=True) + (tok.encode("\n") if pi0_split else []))
    ids = np.zeros((len(rows), token_len), np.int32)
    mask = np.zeros((len(rows), token_len), bool)
    for i, r in enumerate(rows):
        r = r[:token_len]
        ids[i, :len(r)], mask[i, :len(r)] = r, True
    return ids, mask


def prompt_variants(obs, inputs, model: str, state_bins: np.ndarray) -> dict:
    """name -> (description, ModelInputs) for the prompt formats to compare."""
    out = {}
    L = inputs.tokens.shape[1]
    clean = [p.strip().replace("_", " ").replace("\n", " ") for p in obs.prompts]
    if model == "pi0":  # PI0Processor: f"{bos}{sample}\n" (no cleaning, "\n" in the same encode call)
        ids, mask = tokens_for([p + "\n" for p in obs.prompts], L, pi0_split=False)
        out["prompt: processor format"] = ids, mask
    else:
        st = [" ".join(map(str, b)) for b in state_bins]
        openpi_nostate, m1 = tokens_for(clean, L, pi0_split=True)  # discrete_state_input=False (pi0 format)
        proc_nostate, m2 = tokens_for([f"Task: {c};\nAction: " for c in clean], L, pi0_split=False)
        out["discrete_state_input=False: OpenPI prompt"] = openpi_nostate, m1
        out["discrete_state_input=False: processor prompt (state=None)"] = proc_nostate, m2
        out["discrete_state_input=False: processor prompt (with state)"] = tokens_for(
            [f"Task: {c}, State: {s};\nAction: " for c, s in zip(clean, st)], L, pi0_split=False)
    return {k: replace(inputs, tokens=v[0], token_mask=v[1]) for k, v in out.items()}


def pi05_prompts(obs, state_bins) -> list[str]:
    """OpenPI's pi05 prompt with the state (tokenizer.py:23-28)."""
    clean = [p.strip().replace("_", " ").replace("\n", " ") for p in obs.prompts]
    return [f"Task: {c}, State: {' '.join(map(str, b))};\nAction: " for c, b in zip(clean, state_bins)]


def bin_flip(d: Path, prov, inputs, obs, state, base) -> dict:
    """What one state bin moved by one (a value crossing an edge by the epsilon difference) does to pi05."""
    L = inputs.tokens.shape[1]
    b = bins(state)
    ids, _ = tokens_for(pi05_prompts(obs, b), L, pi0_split=False)
    assert (ids == inputs.tokens).all(), "re-tokenized OpenPI prompt differs from the inputs file"
    edges = np.linspace(-1, 1, 257)[:-1]
    i, j = np.unravel_index(np.abs(state[..., None] - edges).min(-1).argmin(), state.shape)  # nearest an edge
    flipped = b.copy()
    flipped[i, j] += 1 if state[i, j] >= edges[b[i, j]] + 1 / 256 else -1
    ids, mask = tokens_for(pi05_prompts(obs, flipped), L, pi0_split=False)
    x = replace(inputs, tokens=ids, token_mask=mask)
    return {f"one state bin moved by one (sample {i}, dim {j}) vs native": summary(base, run(d, prov, x, obs))}


def run(d: Path, prov, inputs, obs, *, attn=None, cameras="mask", times=False):
    from pibridge.parity.stages import StageRecorder
    from pibridge.parity.trace import Trace
    from pibridge.parity.stacks.transformers.model import load_native, run_native

    model, _ = load_native(d / "out", prov, steps=STEPS, attn=attn)
    if times:
        use_openpi_times(model)
    rec = StageRecorder()
    run_native(model, prov, inputs, obs.noise, steps=STEPS, cameras=cameras, recorder=rec)
    return Trace({s.name: s for s in rec}, {"stack": "transformers", "precision": "float32"})


def summary(a, b) -> dict:
    """Per stage family: worst cosine, worst max-abs; plus the first stage and a few named ones."""
    from pibridge.parity.compare import stage_metrics

    rows = {}
    for name in a.order:
        if name in b.stages and not name.startswith("input/"):
            m = stage_metrics(a.stages[name], b.stages[name])
            if not isinstance(m, str):
                rows[name] = (m.cosine, m.max_abs)
    fam = {}
    for name, (c, mx) in rows.items():
        f = name.split("/")[0] if not name.startswith("expert") else "expert"
        f = {"llm": "llm/kv*/k" if name.endswith("/k") else ("llm/kv*/v" if name.endswith("/v") else "llm/block*"),
             "velocity": "velocity/step*", "expert": "expert/step*/block*"}.get(f, name if f in ("prefix", "suffix", "actions") else f + "/*")
        w = fam.setdefault(f, [1.0, 0.0])
        w[0], w[1] = min(w[0], c), max(w[1], mx)
    return {"families": fam, "stages": {k: rows[k] for k in ("img/out", "prefix/embeds", "llm/kv00/k", "llm/kv03/k",
                                                               "suffix/time", "velocity/step00", "velocity/step09",
                                                               "actions") if k in rows}}


def measure(d: Path) -> dict:
    import transformers

    from pibridge.provenance import load_provenance
    from pibridge.parity.request import load_model_inputs
    from pibridge.parity.observation import load_observation
    from pibridge.parity.trace import read_trace

    prov, obs = load_provenance(d / "out"), load_observation(d / "obs.safetensors")
    inputs, jax = load_model_inputs(d / "inputs.safetensors"), read_trace(d / "jax.safetensors")
    model = prov["model"]
    res = {"model": model, "transformers": transformers.__version__, "steps": STEPS, "variations": {}}
    base = run(d, prov, inputs, obs)
    V = res["variations"]
    V["native (sdpa, masked cameras, transformers' Euler times)"] = summary(jax, base)
    V["attention eager"] = summary(jax, run(d, prov, inputs, obs, attn="eager"))
    V["OpenPI float32 Euler times"] = summary(jax, run(d, prov, inputs, obs, times=True))
    V["OpenPI Euler times + eager"] = summary(jax, run(d, prov, inputs, obs, attn="eager", times=True))
    V["cameras dropped (processor layout)"] = summary(jax, run(d, prov, inputs, obs, cameras="drop"))
    V["cameras dropped vs masked (both native)"] = summary(base, run(d, prov, inputs, obs, cameras="drop"))
    prof = prov["profile"].get("norm", "quantile" if model == "pi05" else "zscore")
    ours, theirs = openpi_state(d, inputs, obs, prof)
    n = ours.shape[1]
    res["state_normalization"] = {"norm": prof, "max_abs": float(np.abs(ours - theirs).max()),
                                  "bins_differing": int((bins(ours) != bins(theirs)).sum()), "values": int(ours.size)}
    if model == "pi05":
        edges = np.linspace(-1, 1, 257)[:-1]
        res["state_normalization"]["min_distance_to_bin_edge"] = float(np.abs(ours[..., None] - edges).min())
        V.update(bin_flip(d, prov, inputs, obs, ours, base))
    else:
        x = replace(inputs, state=np.pad(theirs, ((0, 0), (0, inputs.state.shape[1] - n))).astype(np.float32))
        V["state normalized by the processor (std+1e-8)"] = summary(jax, run(d, prov, x, obs))
    variants = prompt_variants(obs, inputs, model, bins(ours))
    ref_name = next((k for k in variants if "OpenPI prompt" in k), None)  # pi05 discrete_state_input=False
    ref = run(d, prov, variants.pop(ref_name), obs) if ref_name else base
    ref_x = inputs if ref_name is None else None
    for name, x in variants.items():
        ids = (ref_x or inputs).tokens if ref_name is None else None
        differ = "" if ids is None else f", tokens differ in {int((x.tokens != ids).any(axis=1).sum())}/{len(ids)} samples"
        V[f"{name} vs {'native on OpenPI tokens' if ref_name is None else ref_name}{differ}"] = summary(
            ref, run(d, prov, x, obs))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("prepare", "measure"))
    ap.add_argument("dir", type=Path)
    ap.add_argument("--model", choices=("pi0", "pi05"), default="pi05")
    ap.add_argument("--transformers", default="5.25.0", help="prepare: the release OUT is converted for")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.what == "prepare":
        prepare(a.dir, a.model, a.transformers)
        return
    res = measure(a.dir)
    text = json.dumps(res, indent=1)
    if a.json:
        a.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
