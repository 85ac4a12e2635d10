"""Measure the per-stage errors the bf16 allowance (configs/allowance.json) is calibrated from.

    .venv/bin/python tools/measure_allowance.py --out /tmp/allowance.json [--seeds 0 1] [--steps 3]

Per case (tiny-pi05, tiny-pi0 over seeds, and the test-only width-96 pi05 seed 0; sharp attention + outlier
weights stored in --dtype (bfloat16 as real checkpoints, or float32), batch 2, 3 cameras one masked, T = 968): REF = JAX float32, BASE = JAX bf16, candidates = the torch stack
in bf16 with runtime fixes, without them, and (width 96) with each defect tests/test_tolerances.py injects.
Per stage: rel-L2 and angular error (sqrt(2 (1 - cos))) of BASE and of each candidate against REF.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import _parity_cases as pc  # noqa: E402

from pibridge.configs import load_variant  # noqa: E402
from pibridge.parity.allowance import stage_errors, with_text_k  # noqa: E402

DEFECTS = {"image-features-div-sqrt-width": (pc.defect_image_features_divided, None),
           "text-embeddings-scaled-twice": (pc.defect_text_scaled_twice, None),
           "two-swapped-q-heads": (pc.defect_swapped_heads, None),
           "dropped-norm-scale": (pc.defect_dropped_norm_scale, None),
           "cameras-in-wrong-order": (None, pc.defect_cameras_swapped)}


def errors(ref, base, cand) -> dict:
    ref, base, cand = (with_text_k(t) for t in (ref, base, cand))
    out = {}
    for name in ref.order:
        if name not in cand.stages:
            continue
        eb, ec = stage_errors(ref.stages[name], base.stages[name]), stage_errors(ref.stages[name], cand.stages[name])
        if isinstance(eb, str) or isinstance(ec, str):
            out[name] = {"note": eb if isinstance(eb, str) else ec}
            continue
        out[name] = {"base_rel": eb[0], "base_ang": eb[1], "cand_rel": ec[0], "cand_ang": ec[1]}
    return out


def measure(root: Path, variant, seed: int, steps: int, defects: bool, dtype: str) -> dict:
    case = pc.make_case(root, variant, seed=seed, dtype=dtype)
    inputs, noise = pc.long_inputs(variant, seed=seed), pc.noise_for(2, 10, seed)
    ref = pc.jax_trace(case, inputs, noise, "float32", steps)
    base = pc.jax_trace(case, inputs, noise, "bf16", steps)
    res = {}
    for label, fixes in (("fixed", True), ("nofix", False)):
        cand = pc.torch_trace(pc.load_torch(case, "bfloat16", fixes=fixes), inputs, noise, "bf16", steps)
        res[label] = errors(ref, base, cand)
    res["torch_f32"] = errors(ref, base, pc.torch_trace(pc.load_torch(case, "float32"), inputs, noise, "float32", steps))
    for name, (pol_defect, in_defect) in (DEFECTS.items() if defects else ()):
        pol = pc.load_torch(case, "bfloat16")
        if pol_defect:
            pol_defect(pol)
        x = in_defect(inputs) if in_defect else inputs
        res[name] = errors(ref, base, pc.torch_trace(pol, x, noise, "bf16", steps))
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--dtype", default="bfloat16", help="checkpoint storage dtype (real checkpoints: bfloat16)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="pibridge-allow-"))
    results = {}
    cases = [("w96-pi05", pc.w96_variant(), 0, True)]
    cases += [(v, load_variant(v), s, True) for v in ("tiny-pi05", "tiny-pi0") for s in args.seeds]
    for label, variant, seed, defects in cases:
        results[f"{label}/seed{seed}"] = measure(work / f"{label}-{seed}", variant, seed, args.steps,
                                                     defects, args.dtype)
        args.out.write_text(json.dumps(results, indent=1))
        print("done", label, seed, flush=True)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
