"""Measure JAX-stack vs torch-stack differences that configs/tolerances.json is set from.

    .venv/bin/python tools/measure_tolerances.py --out /tmp/measure.json [--seeds 0 1 2] [--work DIR]

For tiny-pi05, tiny-pi0 (several seeds) and the test-only width-96 pi05 (seed 0), on weights with sharp
attention and outlier channels, batch 2, 3 cameras (one masked), a 200-token prompt (T = 968 positions),
10 Euler steps: per stage pattern the worst cosine and max-abs of float32 (fixes on), bf16 with fixes and bf16
without fixes; the RoPE late-position error ratio (llm/kv*/k rows in the last 25% of each sample's valid
prefix positions, without / with the inv_freq fix); and, on the width-96 model, bf16 figures with and
without each runtime fix (the <= 5.3 defects emulated on the installed transformers).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import _parity_cases as pc  # noqa: E402

from pibridge.configs import load_variant  # noqa: E402
from pibridge.parity.compare import Rule, compare  # noqa: E402

PATTERNS = ["input/image", "input/image_mask", "input/tokens", "input/token_mask", "input/state", "img/embed",
            "img/block*", "img/out", "img/tokens", "prefix/embeds", "prefix/mask", "llm/kv00/k", "llm/kv*/k", "llm/kv*/v",
            "llm/block*", "suffix/time", "expert/*", "velocity/*", "actions"]
ANY = [Rule("*", "*", 1e30, -1.0)]
STEPS, HORIZON = 10, 10


def group_stats(a, b) -> dict:
    """{pattern: {cos, max_abs}} worst over the stages matching each pattern."""
    c = compare(a, b, ANY)
    out = {}
    for r in c.results:
        pat = next(p for p in PATTERNS if fnmatch.fnmatchcase(r.name, p))
        g = out.setdefault(pat, {"cos": 1.0, "max_abs": 0.0, "worst_stage": r.name})
        if r.metrics is None:
            continue
        if r.metrics.cosine < g["cos"]:
            g["cos"], g["worst_stage"] = r.metrics.cosine, r.name
        g["max_abs"] = max(g["max_abs"], r.metrics.max_abs)
    return out


def late_k_error(a, b, frac: float = 0.25) -> dict:
    """RMS and max-abs of k (after RoPE) over rows in the last `frac` of each sample's valid prefix positions:
    per layer ("llm/kv00/k": the layer whose inputs agree, so RoPE is isolated) and over all layers ("all")."""
    mask = a.stages["prefix/mask"].value.astype(bool)  # (B, T)
    out, tot = {}, [0.0, 0.0, 0]
    for name in a.order:
        if not fnmatch.fnmatchcase(name, "llm/kv*/k"):
            continue
        x, y = a.stages[name].value, b.stages[name].value  # (B, T, K, H)
        sq, mx, n = 0.0, 0.0, 0
        for i in range(mask.shape[0]):
            rows = np.flatnonzero(mask[i])
            late = rows[int(len(rows) * (1 - frac)):]
            d = (x[i, late] - y[i, late]).astype(np.float64)
            sq, mx, n = sq + float((d ** 2).sum()), max(mx, float(np.abs(d).max())), n + d.size
        out[name] = {"rms": (sq / n) ** 0.5, "max_abs": mx}
        tot = [tot[0] + sq, max(tot[1], mx), tot[2] + n]
    out["all"] = {"rms": (tot[0] / tot[2]) ** 0.5, "max_abs": tot[1]}
    return out


def _ratios(fixed: dict, nofix: dict) -> dict:
    return {k: {"nofix_rms": nofix[k]["rms"], "fixed_rms": fixed[k]["rms"], "rms_ratio": nofix[k]["rms"] / fixed[k]["rms"],
                "nofix_max": nofix[k]["max_abs"], "fixed_max": fixed[k]["max_abs"],
                "max_ratio": nofix[k]["max_abs"] / fixed[k]["max_abs"]} for k in fixed}


def measure_case(root: Path, variant, seed: int) -> dict:
    case = pc.make_case(root, variant, seed=seed)
    inputs, noise = pc.long_inputs(variant, seed=seed), pc.noise_for(2, HORIZON, seed)
    res = {}
    jf = pc.jax_trace(case, inputs, noise, "float32", STEPS)
    res["float32"] = group_stats(jf, pc.torch_trace(pc.load_torch(case, "float32"), inputs, noise, "float32", STEPS))
    jb = pc.jax_trace(case, inputs, noise, "bf16", STEPS)
    fixed = pc.torch_trace(pc.load_torch(case, "bfloat16"), inputs, noise, "bf16", STEPS)
    unfixed = pc.torch_trace(pc.load_torch(case, "bfloat16", fixes=False), inputs, noise, "bf16", STEPS)
    res["bf16_fixed"], res["bf16_nofix"] = group_stats(jb, fixed), group_stats(jb, unfixed)
    lf, lu = late_k_error(jb, fixed), late_k_error(jb, unfixed)
    res["rope_late_k"] = _ratios(lf, lu)
    return res, case, (inputs, noise, jb)


def fix_figures(case, inputs, noise, jb) -> dict:
    """bf16, width 96: each <= 5.3 / LeRobot 0.5 defect emulated, without and with its runtime fix."""
    from pibridge.fixes import runtime as rf

    def run(prepare, fix, semantics="0.6"):
        pol = pc.load_torch(case, "bfloat16")
        prepare(pol)
        if fix:
            fix(pol)
        return group_stats(jb, pc.torch_trace(pol, inputs, noise, "bf16", STEPS, semantics))

    return {
        "image-features-undivided": {"without": run(pc.defect_image_features_divided, None),
                                     "with": run(pc.defect_image_features_divided, rf.bypass_image_feature_division)},
        "text-embedding-scaled": {"without": run(pc.emulate_unscaled_text_embedding, None),
                                  "with": run(pc.emulate_unscaled_text_embedding, rf.scale_text_embeddings)},
        "double-scaling-lerobot-0.5": {"without": run(lambda p: None, None, "0.5"),
                                       "with": run(lambda p: None, rf.undo_double_scaling, "0.5")},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="pibridge-measure-"))
    results = {}
    for vname in ("tiny-pi05", "tiny-pi0"):
        for seed in args.seeds:
            results[f"{vname}/seed{seed}"] = measure_case(work / f"{vname}-{seed}", load_variant(vname), seed)[0]
            print(vname, seed, json.dumps(results[f"{vname}/seed{seed}"]["rope_late_k"]), flush=True)
    r, case, (inputs, noise, jb) = measure_case(work / "w96", pc.w96_variant(), 0)
    results["w96-pi05/seed0"] = r
    results["w96-pi05/fixes_bf16"] = fix_figures(case, inputs, noise, jb)
    args.out.write_text(json.dumps(results, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
