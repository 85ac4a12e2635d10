"""Validate the JAX stack's UNMERGED LoRA forward against OpenPI's own Pi0 with LoRA, built from its source.

Runs in the scratch venv that runs OpenPI's model code (as tools/validate_jax_stack.py, whose model / run /
metric helpers it reuses):

    PYTHONPATH=/work/openpi-src/src:$PWD /work/openpi-venv/bin/python tools/validate_lora.py [--json OUT] [--md OUT]

(last run: bench/results/validate_lora.md)

Each case writes a tiny LoRA checkpoint with `pibridge synth --lora` (training layout: adapted llm base leaves
bfloat16, factors and the rest float32) and loads it into OpenPI's Pi0 whose Gemma configs are the tiny
"dummy" sizes with `lora_configs` = the case's LoRAConfig(rank, alpha, rslora) for the adapted experts
(openpi gemma.py:47-53; the shipped "dummy" variant has none, so get_config is wrapped here). OpenPI's
tree must equal the checkpoint's leaf for leaf. float32: both sides float32 params, matmul precision
"highest"; bf16: every param bfloat16 (policy_config.py:57) and Pi0Config(dtype="bfloat16"). Prints max-abs of
actions, prefix embeddings and the KV cache; exits 1 unless every float32 and bf16 max-abs is 0 (bit-exact) and
dropping the factors moves the float32 actions by more than 0.05 (the LoRA is really exercised).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import validate_jax_stack as vj  # noqa: E402

# (name, variant, experts, rank, alpha, rslora): OpenPI's variants' ranks (scaling 1) and non-unit scalings
CASES = (
    ("pi05-both", "tiny-pi05", (0, 1), None, None, False),
    ("pi05-paligemma", "tiny-pi05", (0,), None, None, False),
    ("pi05-expert", "tiny-pi05", (1,), None, None, False),
    ("pi05-r4a8", "tiny-pi05", (0, 1), 4, 8.0, False),
    ("pi05-rslora", "tiny-pi05", (0, 1), 4, 8.0, True),
    ("pi0-both", "tiny-pi0", (0, 1), None, None, False),
    ("pi0-expert", "tiny-pi0", (1,), None, None, False),
    ("pi0-r4a8", "tiny-pi0", (0, 1), 4, 8.0, False),
)


def _patch_gemma(variant, settings) -> None:
    """gemma.get_config for the tiny sizes with the case's LoRA configs (expert 0 = paligemma_variant "dummy",
    expert 1 = action_expert_variant, told apart by the names given to Pi0Config below)."""
    import dataclasses

    import openpi.models.gemma as og
    import openpi.models.lora as olora

    original = getattr(og, "_pibridge_original_get_config", og.get_config)
    og._pibridge_original_get_config = original

    def get_config(name):
        if name not in ("pibridge_lora_0", "pibridge_lora_1"):
            return original(name)
        e = int(name[-1])
        size = variant.paligemma if e == 0 else variant.action_expert
        cfg = og.Config(width=size.width, depth=size.depth, mlp_dim=size.mlp_dim, num_heads=size.num_heads,
                        num_kv_heads=size.num_kv_heads, head_dim=size.head_dim)
        loras = {kind: olora.LoRAConfig(rank=s.rank, alpha=s.alpha, rslora=s.rslora)
                 for (ex, kind), s in settings.items() if ex == e}
        return dataclasses.replace(cfg, lora_configs=loras)

    og.get_config = get_config


def _openpi_model(variant, params, horizon, token_len, precision, settings):
    import jax.numpy as jnp
    from openpi.models import pi0_config

    vj._force_siglip(variant.siglip.variant)
    _patch_gemma(variant, settings)
    cfg = pi0_config.Pi0Config(pi05=variant.pi05, paligemma_variant="pibridge_lora_0",
                               action_expert_variant="pibridge_lora_1", action_horizon=horizon,
                               max_token_len=token_len, dtype="float32" if precision == "float32" else "bfloat16")
    dtype = jnp.float32 if precision == "float32" else jnp.bfloat16
    return cfg.load(jax.tree.map(lambda a: jnp.asarray(a, dtype), params), remove_extra_params=False)


def run_case(case, args, workdir: Path) -> list[dict]:
    from flax import nnx

    from pibridge.configs import load_variant
    from pibridge.convert.reader import open_checkpoint
    from pibridge.convert.synth import LoraRequest, write_synthetic_checkpoint
    from pibridge.parity.stacks.jax import run_policy
    from pibridge.parity.stacks.jax.params import flatten, nest
    from pibridge.parity.stacks.jax.testing import synthetic_inputs, synthetic_noise
    from pibridge.parity.stages import StageRecorder, llm_kv

    name, vname, experts, rank, alpha, rslora = case
    variant = load_variant(vname)
    req = LoraRequest(experts, {e: rank for e in experts} if rank else None,
                      {e: alpha for e in experts} if alpha else None, {e: rslora for e in experts})
    ckpt = workdir / name
    write_synthetic_checkpoint(ckpt, variant=vname, layout="training", lora=req, sharp_attention=True, force=True)
    settings = req.settings()
    ck = open_checkpoint(ckpt)
    params = ck.read_tree()
    token_len = 200 if variant.pi05 else 48
    x = synthetic_inputs(variant, [37, 12], token_len, masked=[(1, 2)], seed=0)
    noise = synthetic_noise(2, args.horizon, variant.action_dim, seed=0)
    rows, ref = [], {}
    for precision in ("float32", "bf16"):
        model = _openpi_model(variant, params, args.horizon, token_len, precision, settings)
        got = {p: tuple(a.shape) for p, a in flatten(nnx.state(model).to_pure_dict()).items()}
        want = {p: tuple(i.shape) for p, i in ck.leaves.items()}
        if got != want:
            raise SystemExit(f"{name}: OpenPI's LoRA tree != the synth tree: {sorted(set(got) ^ set(want))[:4]}")
        ctx = jax.default_matmul_precision("highest") if precision == "float32" else vj._null()
        with ctx:
            o_act, o_prefix, o_kv, _, _ = vj._openpi_run(model, vj._observation(x), noise, args.steps)
        del model
        rec = StageRecorder()
        ours = run_policy(ck, variant, x, noise, precision=precision, num_steps=args.steps, record=rec)
        valid = rec["prefix/mask"].value.astype(bool)
        kv = max((vj._metrics(rec[llm_kv(i, w)].value, o_kv[j][i], valid[:, :, None, None])
                  for i in range(variant.paligemma.depth) for j, w in enumerate("kv")), key=lambda m: m["max_abs"])
        ref[precision] = o_act
        row = {"case": name, "variant": vname, "experts": list(experts), "precision": precision,
               "settings": {f"{e}/{k}": s.to_dict() for (e, k), s in settings.items()},
               "actions": vj._metrics(ours, o_act), "prefix_embeds": vj._metrics(rec["prefix/embeds"].value, o_prefix,
                                                                                 valid[:, :, None]), "kv_cache": kv}
        if precision == "float32":  # control: the same tree without its factors must move the actions
            base = nest({p: a for p, a in flatten(params).items() if "lora" not in "/".join(p)})
            row["lora_effect_actions"] = vj._metrics(run_policy(base, variant, x, noise, num_steps=args.steps), ours)
            print(f"{name:15s} LoRA effect (base-only vs LoRA actions) max-abs "
                  f"{row['lora_effect_actions']['max_abs']:.3e}", flush=True)
        if precision == "bf16":
            row["bf16_roundoff_openpi_vs_f32"] = vj._metrics(o_act, ref["float32"])
        rows.append(row)
        print(f"{name:15s} {precision:8s} actions max-abs {row['actions']['max_abs']:.3e} "
              f"(|ref| {row['actions']['ref_max_abs']:.3f}); prefix {row['prefix_embeds']['max_abs']:.2e}; "
              f"kv {kv['max_abs']:.2e}" + (f"; OpenPI bf16 vs f32 {row['bf16_roundoff_openpi_vs_f32']['max_abs']:.3e}"
                                          if precision == "bf16" else ""), flush=True)
    return rows


def markdown(rows: list[dict], args, ok: bool) -> str:
    import flax

    import openpi

    from pibridge.convert.lora import EXPERTS

    def setting(r):
        return ", ".join(f"{EXPERTS[int(k[0])]} r{v['rank']} a{v['alpha']:g}{' rsLoRA' if v['rslora'] else ''}"
                         for k, v in r["settings"].items() if k.endswith("/attn"))

    lines = ["# tools/validate_lora.py: the JAX stack's unmerged LoRA vs OpenPI's own LoRA Pi0", "",
             f"jax {jax.__version__} / flax {flax.__version__}, CPU; OpenPI from {Path(openpi.__path__[0]).parents[1]}"
             f" (commit as pinned: pibridge.parity.goldens.OPENPI_COMMIT); batch 2 (a masked camera, prompts of 37 "
             f"and 12 tokens), horizon {args.horizon}, {args.steps} Euler steps. float32: both sides float32 params, "
             "matmul precision highest; bf16: every param bfloat16 and Pi0Config(dtype='bfloat16'). max-abs over "
             "actions / prefix embeddings / the KV cache (valid rows, worst layer).", "",
             "| case | adapted (attn: rank, alpha, rsLoRA) | precision | actions max-abs | prefix max-abs | KV max-abs "
             "| LoRA effect (base-only vs LoRA actions) | OpenPI bf16 vs its f32 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        eff = r.get("lora_effect_actions", {}).get("max_abs")
        rnd = r.get("bf16_roundoff_openpi_vs_f32", {}).get("max_abs")
        lines.append(f"| {r['case']} | {setting(r)} | {r['precision']} | {r['actions']['max_abs']:.1e} | "
                     f"{r['prefix_embeds']['max_abs']:.1e} | {r['kv_cache']['max_abs']:.1e} | "
                     f"{'-' if eff is None else f'{eff:.3f}'} | {'-' if rnd is None else f'{rnd:.3f}'} |")
    lines += ["", "pi05-rslora's numbers equal pi05-r4a8's by construction: synth draws lora_b with std / scaling "
              "(convert/synth_weights.py _lora_std) so that scaling x A @ B is the same size whatever alpha is, and "
              "the two attention scalings (8 / sqrt(4) = 4, 8 / 4 = 2) differ by a power of two, so scaling x lora_b "
              "is the same float32 numbers. OpenPI is told rslora=True independently (LoRAConfig), so a stack that "
              "ignored rsLoRA would be off by 2x in every attention delta, not 0.", ""]
    lines += ["PASS: bit-exact (max-abs 0) in every case and precision; dropping the factors moves the float32 "
              "actions by more than 0.05 in every case" if ok else "FAIL: some max-abs is not 0"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=",".join(c[0] for c in CASES))
    ap.add_argument("--horizon", type=int, default=10)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--md", type=Path, default=None, help="write the per-case table here")
    args = ap.parse_args(argv)
    wanted = args.cases.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="pibridge-lora-") as tmp:
        for case in CASES:
            if case[0] in wanted:
                rows += run_case(case, args, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    ok = all(r[k]["max_abs"] == 0.0 for r in rows for k in ("actions", "prefix_embeds", "kv_cache"))
    ok = ok and all(r["lora_effect_actions"]["max_abs"] > 0.05 for r in rows if "lora_effect_actions" in r)
    if args.md:
        args.md.write_text(markdown(rows, args, ok))
    print("PASS (bit-exact)" if ok else "FAIL: some max-abs is not 0")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
