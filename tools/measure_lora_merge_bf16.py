"""How much merging changes bf16 inference: the JAX stack in OpenPI's bf16 policy on the MERGED tree (what a
converted bf16 policy holds: base + LoRA in float32, then one cast) against the same stack on the UNMERGED tree
(OpenPI's bf16 forward: bf16 base and bf16 factors, LoRA added to the activations), both judged by the float32
unmerged reference. Isolates the merge's rounding from every torch / LeRobot difference.

    PYTHONPATH=. .venv/bin/python tools/measure_lora_merge_bf16.py [--variant tiny-pi05] [--rank 4 --alpha 8]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def main(argv=None) -> int:
    from pibridge.configs import load_variant
    from pibridge.convert.detect import detect
    from pibridge.convert.lora import resolve_settings
    from pibridge.convert.plan import convert_tree, inverse_convert
    from pibridge.convert.reader import open_checkpoint
    from pibridge.convert.synth import LoraRequest, write_synthetic_checkpoint
    from pibridge.parity.stacks.jax import get_policy, prepare_params, run_policy
    from pibridge.parity.stacks.jax.params import flatten, nest
    from pibridge.parity.stacks.jax.testing import synthetic_inputs, synthetic_noise
    from pibridge.parity.stages import StageRecorder

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", default="tiny-pi05")
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=8.0)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args(argv)
    variant = load_variant(args.variant)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        ck = write_synthetic_checkpoint(Path(tmp) / "ck", variant=args.variant, layout="training", sharp_attention=True,
                                        lora=LoraRequest(rank={0: args.rank, 1: args.rank},
                                                         alpha={0: args.alpha, 1: args.alpha})).out
        flat = flatten(open_checkpoint(ck).read_tree())
    det = detect({p: a.shape for p, a in flat.items()})
    settings = resolve_settings(det.lora, {0: args.alpha, 1: args.alpha})
    _, state = convert_tree(flat, lora=settings)
    merged, _ = inverse_convert(state, variant)  # the merged base tree, float32
    x = synthetic_inputs(variant, [37, 12], 48, masked=[(1, 1)], seed=0)
    noise = synthetic_noise(2, 10, variant.action_dim, seed=0)
    runs, lora_tree, merged_tree = {}, nest(flat), nest(merged)
    for name, tree, prec in (("ref f32 unmerged", lora_tree, "float32"), ("bf16 unmerged", lora_tree, "bf16"),
                             ("bf16 merged", merged_tree, "bf16"), ("f32 merged", merged_tree, "float32")):
        rec = StageRecorder()
        params = prepare_params(tree, variant, get_policy(prec), lora=settings if tree is not merged_tree else None)
        run_policy(params, variant, x, noise, precision=prec, num_steps=args.steps, record=rec)
        runs[name] = {s.name: s.value for s in rec}
    ref = runs["ref f32 unmerged"]
    print(f"{args.variant}, rank {args.rank} alpha {args.alpha}: rel-L2 against the float32 unmerged reference")
    print(f"{'stage':22s} {'bf16 unmerged':>14s} {'bf16 merged':>12s} {'merged-unmerged bf16':>21s} {'f32 merged':>11s}")
    for stage in ("llm/kv00/k", "llm/block00", "llm/block03", "expert/step00/block03", "actions"):
        r = [rel_l2(runs[n][stage], ref[stage]) for n in ("bf16 unmerged", "bf16 merged")]
        d = rel_l2(runs["bf16 merged"][stage], runs["bf16 unmerged"][stage])
        print(f"{stage:22s} {r[0]:14.3e} {r[1]:12.3e} {d:21.3e} {rel_l2(runs['f32 merged'][stage], ref[stage]):11.3e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
