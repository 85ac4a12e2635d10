"""Validate pibridge's JAX stack against OpenPI's own Pi0.sample_actions on the same params, inputs and noise.

Runs OUTSIDE the project venv, in a scratch venv that runs OpenPI's model code from its source tree
(/work/shared/tools/openpi-reference-env):

    PYTHONPATH=/work/openpi-src/src:/work/main /work/openpi-venv/bin/python tools/validate_jax_stack.py

For each variant (default tiny-pi05 and tiny-pi0; SigLIP forced to the variant's size, e.g. "mu/14", since
OpenPI hard-codes So400m/14 at pi0.py:84) and each precision:
  float32: Pi0Config(dtype="float32"), float32 params, jax_default_matmul_precision="highest" for both stacks;
  bf16: Pi0Config(dtype="bfloat16") with every param cast to bfloat16 (OpenPI inference,
        policy_config.py:57) and default matmul precision, against run_policy(precision="bf16").
It prints max-abs and cosine of the actions (and of the prefix embeddings and KV cache on valid rows), the
bf16 round-off scale (OpenPI bf16 vs OpenPI float32), timings, and exits 1 if a float32 max-abs > --tol.
Params: a deterministic formula (pibridge.parity.stacks.jax.testing) or --ckpt PATH (e.g. from `pibridge synth`)
read with pibridge's reader (pibridge.convert.reader.open_checkpoint(PATH).read_tree()) when that module
exists, else with orbax here. A bf16 run passes when its actions are within --bf16-frac of the bf16 round-off
scale (max-abs of OpenPI bf16 vs OpenPI float32).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

SLOTS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


def _force_siglip(variant_str: str) -> None:
    """OpenPI's Pi0 hard-codes SigLIP So400m/14 (pi0.py:81-89): replace its factory to build `variant_str`."""
    import openpi.models.siglip as osiglip

    original = getattr(osiglip, "_pibridge_original_module", osiglip.Module)
    osiglip._pibridge_original_module = original

    def module(num_classes=None, *, variant=None, **kw):
        return original(num_classes, variant=variant_str, **kw)

    osiglip.Module = module


def _openpi_model(variant, params: dict, horizon: int, token_len: int, precision: str):
    from openpi.models import pi0_config

    _force_siglip(f"{variant.siglip.variant}")
    cfg = pi0_config.Pi0Config(pi05=variant.pi05, paligemma_variant=variant.paligemma.variant,
                               action_expert_variant=variant.action_expert.variant, action_horizon=horizon,
                               max_token_len=token_len, dtype="float32" if precision == "float32" else "bfloat16")
    dtype = jnp.float32 if precision == "float32" else jnp.bfloat16
    return cfg.load(jax.tree.map(lambda a: jnp.asarray(a, dtype), params))


def _check_tree_matches(variant, model) -> None:
    """OpenPI's own tree for this variant must equal pibridge.convert.tree.openpi_tree_shapes."""
    from flax import nnx

    from pibridge.convert.tree import openpi_tree_shapes
    from pibridge.parity.stacks.jax.params import flatten

    got = {p: tuple(a.shape) for p, a in flatten(nnx.state(model).to_pure_dict()).items()}
    want = openpi_tree_shapes(variant)
    if got != want:
        raise SystemExit(f"OpenPI tree != openpi_tree_shapes({variant.name}): "
                         f"{sorted(set(got) ^ set(want))[:5]} / shapes differ")


def _observation(x):
    from openpi.models import model as omodel

    return omodel.Observation(
        images={s: jnp.asarray(x.images[:, i]) for i, s in enumerate(SLOTS)},
        image_masks={s: jnp.asarray(x.image_mask[:, i]) for i, s in enumerate(SLOTS)},
        state=jnp.asarray(x.state), tokenized_prompt=jnp.asarray(x.tokens),
        tokenized_prompt_mask=jnp.asarray(x.token_mask))


def _openpi_run(model, obs, noise: np.ndarray, num_steps: int):
    """Jitted like OpenPI's Policy (nnx_utils.module_jit: frozen state, num_steps a Python int).
    Returns (actions, prefix embeds, (k, v) cache stacked (L, B, T, K, H), seconds cold, seconds warm)."""
    from flax import nnx
    from openpi.models import pi0 as opi0

    graphdef, state = nnx.split(model)

    @jax.jit
    def sample(state, obs, noise):
        return nnx.merge(graphdef, state).sample_actions(jax.random.key(0), obs, noise=noise, num_steps=num_steps)

    @jax.jit
    def prefix(state, obs):
        m = nnx.merge(graphdef, state)
        tokens, mask, ar = m.embed_prefix(obs)
        positions = jnp.cumsum(mask, axis=1) - 1
        _, kv = m.PaliGemma.llm([tokens, None], mask=opi0.make_attn_mask(mask, ar), positions=positions)
        return tokens, kv

    t0 = time.perf_counter()
    actions = np.asarray(sample(state, obs, jnp.asarray(noise)))
    t1 = time.perf_counter()
    actions = np.asarray(sample(state, obs, jnp.asarray(noise)))
    t2 = time.perf_counter()
    tokens, kv = prefix(state, obs)
    return actions, np.asarray(tokens, np.float32), tuple(np.asarray(a, np.float32) for a in kv), t1 - t0, t2 - t1


def _metrics(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None = None) -> dict:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if valid is not None:
        keep = np.broadcast_to(valid, a.shape)
        a, b = a[keep], b[keep]
    a, b = a.ravel(), b.ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cos = 1.0 if na == nb == 0 else (0.0 if na == 0 or nb == 0 else float(a @ b / (na * nb)))
    return {"max_abs": float(np.max(np.abs(a - b))), "cosine": cos, "ref_max_abs": float(np.max(np.abs(b)))}


def _load_params(args, variant):
    if args.ckpt is None:
        from pibridge.parity.stacks.jax.testing import synthetic_params

        return synthetic_params(variant, seed=args.seed, sharp=args.sharp)
    reader = Path(__file__).resolve().parents[1] / "pibridge" / "convert" / "reader.py"
    if reader.is_file():
        from pibridge.convert.reader import open_checkpoint

        return open_checkpoint(args.ckpt).read_tree()
    return _orbax_tree(args.ckpt)


def _orbax_tree(ckpt: Path) -> dict:
    """Fallback while pibridge's reader does not exist: orbax restore of <ckpt>/params as host numpy arrays,
    with restore_params' conventions (root "params", trailing "value" stripped; model.py:313-331)."""
    import orbax.checkpoint as ocp

    path = (ckpt / "params" if (ckpt / "params").is_dir() else ckpt).resolve()
    ckptr = ocp.PyTreeCheckpointer()
    meta = ckptr.metadata(path).item_metadata
    args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(restore_type=np.ndarray), meta)
    tree = ckptr.restore(path, args=ocp.args.PyTreeRestore(item=meta, restore_args=args))["params"]
    from pibridge.parity.stacks.jax.params import flatten, nest

    flat = flatten(tree)
    if all(p[-1] == "value" for p in flat):
        flat = {p[:-1]: a for p, a in flat.items()}
    return nest(flat)


def validate_variant(args, name: str) -> tuple[list[dict], bool]:
    from pibridge.configs import load_variant
    from pibridge.parity.stacks.jax import run_policy
    from pibridge.parity.stacks.jax.testing import synthetic_inputs, synthetic_noise
    from pibridge.parity.stages import StageRecorder, llm_kv

    variant = load_variant(name)
    token_len = args.token_len or (200 if variant.pi05 else 48)  # pi0_config.py:39 defaults
    params = _load_params(args, variant)
    x = synthetic_inputs(variant, [min(37, token_len), min(12, token_len)], token_len, masked=[(1, 2)],
                         seed=args.seed)
    noise = synthetic_noise(2, args.horizon, variant.action_dim, seed=args.seed)
    rows, ok, ref = [], True, {}
    for precision in ("float32", "bf16"):
        model = _openpi_model(variant, params, args.horizon, token_len, precision)
        if precision == "float32":
            _check_tree_matches(variant, model)
        ctx = jax.default_matmul_precision("highest") if precision == "float32" else _null()
        with ctx:
            o_act, o_prefix, o_kv, o_cold, o_warm = _openpi_run(model, _observation(x), noise, args.steps)
        del model
        t0 = time.perf_counter()
        ours = run_policy(params, variant, x, noise, precision=precision, num_steps=args.steps)
        t1 = time.perf_counter()
        rec = StageRecorder()
        ours_rec = run_policy(params, variant, x, noise, precision=precision, num_steps=args.steps, record=rec)
        t2 = time.perf_counter()
        ref[precision] = o_act
        valid = rec["prefix/mask"].value.astype(bool)
        row = {"variant": name, "precision": precision, "actions": _metrics(ours, o_act),
               "prefix_embeds": _metrics(rec["prefix/embeds"].value, o_prefix, valid[:, :, None]),
               "kv_cache": max((_metrics(rec[llm_kv(i, w)].value, o_kv[j][i], valid[:, :, None, None])
                                for i in range(variant.paligemma.depth) for j, w in enumerate("kv")),
                               key=lambda m: m["max_abs"]),
               "recording_changes_actions": bool(not np.array_equal(ours, ours_rec)),
               "seconds": {"openpi_cold": o_cold, "openpi_warm": o_warm, "ours_cold": t1 - t0,
                           "ours_recorded": t2 - t1}}
        if precision == "bf16":
            row["bf16_roundoff_openpi_vs_f32"] = scale = _metrics(o_act, ref["float32"])
            ok = ok and row["actions"]["max_abs"] <= args.bf16_frac * scale["max_abs"]
        if precision == "float32" and row["actions"]["max_abs"] > args.tol:
            ok = False
        ok = ok and not row["recording_changes_actions"]
        rows.append(row)
    return rows, ok


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _print(row: dict) -> None:
    a, p, kv, s = row["actions"], row["prefix_embeds"], row["kv_cache"], row["seconds"]
    line = (f"{row['variant']:10s} {row['precision']:8s} actions max-abs {a['max_abs']:.3e} cos {a['cosine']:.9f} "
            f"(|ref| {a['ref_max_abs']:.3f}); prefix max-abs {p['max_abs']:.2e}; kv max-abs {kv['max_abs']:.2e}; "
            f"openpi {s['openpi_cold']:.1f}s cold / {s['openpi_warm']:.2f}s warm, ours {s['ours_cold']:.1f}s "
            f"/ {s['ours_recorded']:.1f}s recorded")
    if "bf16_roundoff_openpi_vs_f32" in row:
        r = row["bf16_roundoff_openpi_vs_f32"]
        line += (f"\n{'':19s} bf16 round-off scale (OpenPI bf16 vs OpenPI f32): max-abs {r['max_abs']:.3e} "
                 f"cos {r['cosine']:.6f}")
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="tiny-pi05,tiny-pi0")
    ap.add_argument("--ckpt", type=Path, default=None, help="synthetic checkpoint (needs --variants with one name)")
    ap.add_argument("--horizon", type=int, default=50)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--token-len", type=int, default=0, help="0: OpenPI's default (200 pi05, 48 pi0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sharp", type=float, default=1.8, help="gain of q/k projections (peaked attention)")
    ap.add_argument("--tol", type=float, default=1e-5, help="float32 max-abs limit on the actions")
    ap.add_argument("--bf16-frac", type=float, default=0.1,
                    help="bf16 actions max-abs limit as a fraction of OpenPI's own bf16-vs-f32 max-abs")
    ap.add_argument("--json", type=Path, default=None, help="write all numbers here")
    args = ap.parse_args(argv)
    import openpi  # noqa: F401  (fail early with a clear message when PYTHONPATH lacks OpenPI's src)

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; OpenPI from {Path(openpi.__path__[0]).parent}")
    all_rows, ok = [], True
    for name in args.variants.split(","):
        rows, v_ok = validate_variant(args, name.strip())
        for row in rows:
            _print(row)
        all_rows += rows
        ok = ok and v_ok
    if args.json:
        args.json.write_text(json.dumps(all_rows, indent=2))
    print("PASS" if ok else f"FAIL: float32 actions max-abs above {args.tol}, bf16 above {args.bf16_frac} x "
          "round-off scale, or recording changed actions")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
