"""`make matrix`: the torch stack on each transformers release of configs/transformers_support.json "matrix",
against the goldens (JAX-stack reference traces), float32 and bf16, fixes on and off, per LeRobot semantics.

Three roles, one file:
- cases (project venv): per variant a directory with OUT/model.safetensors and the references. Golden cases
  (default when tests/golden has the variant): the golden's own synthetic checkpoint (fingerprint checked)
  converted by `pibridge convert`; references = the golden traces (5 Euler steps). Otherwise (and for the
  test-size variant of the fix tests) JAX cases: hash-based synthetic params converted in memory, inputs.npz
  (B=2, 3 cameras, one masked; prompts 37 / 12 tokens) and JAX-stack traces made here (10 steps).
  Cached under --refs (.venvs/matrix-refs).
- worker (`--worker`, run by .venvs/tf-<ver>/bin/python; torch + the venv's transformers, no jax): loads
  OUT with the torch stack, applies the fixes a job asks for, captures, compares stage by stage (numpy).
- orchestrator (default): builds / reuses the venvs (tools/tfvenv.py), the cases, runs one worker per
  release, writes matrix.json + matrix.md (bench/results/ or --out) and exits 1 if a fixes-on row fails.

A row is (release, LeRobot version / semantics, dtype, fixes[, exact]) over both variants. Pass rule: see
THRESHOLDS below ("result" = tolerances.json, "strict" = the defect detector).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from pibridge.configs import load_transformers_support  # noqa: E402  (pure: json only)

SUPPORT = load_transformers_support()
VARIANTS = ("tiny-pi05", "tiny-pi0")
# Pass rule: configs/tolerances.json (per stage and precision) when it exists and loads; these THRESHOLDS
# otherwise. THRESHOLDS are also always evaluated as the "strict" verdict, a defect detector on the stages where
# the version-dependent defects enter (SigLIP / image tokens / prefix: the sqrt(width) scales; the first
# layer's k/v: RoPE), since tolerances for synthetic weights with outlier channels must be loose deep in bf16.
# float32: every early stage cosine >= 0.99999 and relative L2 <= 1e-4; actions cosine >= 0.99999.
# bfloat16: OpenPI runs SigLIP in bf16 while LeRobot keeps it fp32, so early stages differ by design
# (golden tiny-pi05 with fixes: img/tokens cosine 0.99988, rel L2 0.016; llm/kv00/k 0.99987, without the RoPE fix
# 0.99964): early cosine >= 0.9995 and rel L2 <= 0.05 (a sqrt(width) scale defect gives >= 0.8),
# llm/kv00/k cosine >= 0.9998; actions cosine >= 0.99.
THRESHOLDS = {"float32": {"early_min_cosine": 0.99999, "early_max_rel_l2": 1e-4, "k0_min_cosine": 0.99999,
                          "actions_min_cosine": 0.99999},
              "bfloat16": {"early_min_cosine": 0.9995, "early_max_rel_l2": 0.05, "k0_min_cosine": 0.9998,
                           "actions_min_cosine": 0.99}}
EARLY = ("img/", "prefix/embeds", "llm/kv00/")
COS_EPS = 1e-12  # float64 cosine of identical arrays can come out 1 - 1e-16
PRECISION = {"float32": "float32", "bfloat16": "bf16"}  # runtime dtype -> JAX stack precision
CASE_STAMP = "case.json"
GOLDEN_DIR = ROOT / "tests" / "golden" / "foreign-host"  # the set the matrix and the canary compare against
CAMERA_MAP = "base_0_rgb=top,left_wrist_0_rgb=wrist"  # the goldens' droid cameras (as tests/_parity_cases.py)


# --- cases (project venv) ----------------------------------------------------------------------------------

def variant_to_dict(variant) -> dict:
    return dataclasses.asdict(variant)


def variant_from_dict(d: dict):
    from pibridge.configs import GemmaSize, SiglipSize, Variant

    return Variant(**{**d, "paligemma": GemmaSize(**d["paligemma"]), "action_expert": GemmaSize(**d["action_expert"]),
                      "siglip": SiglipSize(**d["siglip"])})


def case_inputs(variant):
    """B=2: prompts of 37 and 12 tokens (pi05 max 200, pi0 48 as OpenPI), sample 1's third camera masked."""
    from pibridge.parity.stacks.jax.testing import synthetic_inputs, synthetic_noise

    inputs = synthetic_inputs(variant, [37, 12], 200 if variant.pi05 else 48, masked=[(1, 2)])
    return inputs, synthetic_noise(2, 10, variant.action_dim)


def synthetic_flat_params(variant, seed: int = 0, sharp: float = 1.8) -> dict:
    """OpenPI-layout flat {path: float32 array} for any Variant (the JAX stack's hash formula, by path)."""
    from pibridge.convert.tree import openpi_tree_shapes
    from pibridge.parity.stacks.jax.testing import _leaf

    return {p: _leaf(p, s, seed, sharp) for p, s in openpi_tree_shapes(variant).items()}


def make_case(variant, dest: Path, *, seed: int = 0, sharp: float = 1.8) -> Path:
    """dest/out/model.safetensors + inputs.npz + ref-{float32,bf16}.safetensors + case.json (cached)."""
    if (dest / CASE_STAMP).is_file():
        return dest
    from safetensors.numpy import save_file

    from pibridge.convert.detect import Detection
    from pibridge.convert.plan import convert_tree
    from pibridge.parity.stacks.jax import run_policy
    from pibridge.parity.stacks.jax.params import nest
    from pibridge.parity.stages import StageRecorder
    from pibridge.parity.trace import write_trace

    dest.mkdir(parents=True, exist_ok=True)
    flat = synthetic_flat_params(variant, seed, sharp)
    det = Detection("pi05" if variant.pi05 else "pi0", variant, ())
    _, state = convert_tree(flat, transformers_version="5.5.4", detection=det)  # <= 5.5 SigLIP layout
    (dest / "out").mkdir(exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(dest / "out/model.safetensors"))
    inputs, noise = case_inputs(variant)
    np.savez(dest / "inputs.npz", noise=noise, **{f.name: getattr(inputs, f.name) for f in dataclasses.fields(inputs)})
    seconds = {}
    for precision in ("float32", "bf16"):
        rec, t0 = StageRecorder(), time.perf_counter()
        run_policy(nest(flat), variant, inputs, noise, precision=precision, record=rec)
        seconds[precision] = round(time.perf_counter() - t0, 2)
        write_trace(dest / f"ref-{precision}.safetensors", rec, {"stack": "jax", "precision": precision})
    (dest / CASE_STAMP).write_text(json.dumps({"variant": variant_to_dict(variant), "seed": seed, "sharp": sharp,
                                               "jax_seconds": seconds}, indent=1))
    return dest


def make_golden_case(name: str, dest: Path, golden_dir: Path = GOLDEN_DIR) -> Path:
    """dest/out converted from the golden's own synthetic checkpoint (pibridge/parity/goldens.py); the
    references are the golden traces themselves (checkpoint fingerprint checked)."""
    stamp = dest / CASE_STAMP
    if stamp.is_file() and json.loads(stamp.read_text()).get("golden") == str(golden_dir):
        return dest
    shutil.rmtree(dest, ignore_errors=True)  # none yet, or made from another golden set: rebuild
    import io

    from rich.console import Console

    from pibridge.configs import load_variant
    from pibridge.convert.convert import ConvertRequest, convert
    from pibridge.parity import goldens
    from pibridge.parity.trace import read_trace

    spec = goldens.spec_for(name)
    dest.mkdir(parents=True, exist_ok=True)
    synth = goldens.write_checkpoint(spec, dest / "ck")
    want = read_trace(golden_dir / spec.trace_name("float32")).meta["checkpoint_fingerprint"]
    if synth.fingerprint != want:
        raise RuntimeError(f"golden checkpoint fingerprint {synth.fingerprint} != {want}: goldens are stale")
    convert(ConvertRequest(dest / "ck", dest / "out", spec.profile, camera_map=CAMERA_MAP, allow_tiny=True),
            console=Console(file=io.StringIO()))
    (dest / CASE_STAMP).write_text(json.dumps({"variant": variant_to_dict(load_variant(name)), "golden": str(golden_dir),
                                               "num_steps": goldens.NUM_STEPS, "fingerprint": want}, indent=1))
    return dest


def ensure_cases(refs: Path, variants=VARIANTS, golden: bool | None = None) -> dict[str, Path]:
    """Golden cases when tests/golden holds the variant's traces (default), else JAX-stack cases."""
    from pibridge.configs import load_variant

    out = {}
    for name in variants:
        use_golden = (GOLDEN_DIR / f"{name}-float32.safetensors").is_file() if golden is None else golden
        out[name] = make_golden_case(name, refs / f"golden-{name}") if use_golden else \
            make_case(load_variant(name), refs / name)
    return out


# --- worker (release venv) ---------------------------------------------------------------------------------

def load_case(case: Path):
    """-> (variant, inputs, noise, {precision: reference Trace}, num_steps)."""
    from pibridge.parity.inputs import ModelInputs
    from pibridge.parity.trace import read_trace

    meta = json.loads((case / CASE_STAMP).read_text())
    if meta.get("golden"):
        from pibridge.parity import goldens

        name = meta["variant"]["name"]
        inputs, noise, _ = goldens.load_inputs(Path(meta["golden"]) / goldens.spec_for(name).inputs_name)
        refs = {p: read_trace(Path(meta["golden"]) / f"{name}-{p}.safetensors") for p in ("float32", "bf16")}
        return variant_from_dict(meta["variant"]), inputs, noise, refs, meta["num_steps"]
    z = np.load(case / "inputs.npz")
    inputs = ModelInputs(z["images"], z["image_mask"], z["state"], z["tokens"], z["token_mask"])
    refs = {p: read_trace(case / f"ref-{p}.safetensors") for p in ("float32", "bf16")}
    return variant_from_dict(meta["variant"]), inputs, z["noise"], refs, 10


def capture(case: Path, lerobot: str, dtype: str, fixes: bool, exact: bool = False, loaded=None, skip=()):
    """Torch-stack trace of one job: (Trace, {fix id: places changed}). skip: fix ids left out."""
    from pibridge.fixes.runtime import apply_runtime_fixes
    from pibridge.fixes.table import embedding_semantics
    from pibridge.parity.stages import StageRecorder
    from pibridge.parity.stacks.torch.forward import sample_actions
    from pibridge.parity.stacks.torch.model import load_policy
    from pibridge.parity.trace import Trace

    variant, inputs, noise, _, num_steps = loaded or load_case(case)
    policy = load_policy(case / "out", variant, dtype)
    applied = apply_runtime_fixes(policy, runtime_dtype=dtype, lerobot_version=lerobot, skip=tuple(skip)) \
        if fixes else {}
    if exact:
        from pibridge.fixes.runtime import exact_fp32_attention

        applied["exact-fp32-attention"] = exact_fp32_attention(policy)
    rec = StageRecorder()
    sample_actions(policy, inputs, noise, num_steps=num_steps, recorder=rec, semantics=embedding_semantics(lerobot))
    return Trace({s.name: s for s in rec}, {"stack": "torch", "precision": PRECISION[dtype]}), applied


def stage_detail(ref, trace, inputs) -> dict:
    """{stage: [cosine, max_abs, rel_l2]} plus the max-abs over the valid text rows of prefix/embeds."""
    from pibridge.parity.compare import stage_metrics

    out = {}
    for name in ref.order:
        if name in trace.stages:
            m = stage_metrics(ref.stages[name], trace.stages[name])
            out[name] = None if isinstance(m, str) else [m.cosine, m.max_abs, m.rel_l2]
    n_txt = inputs.tokens.shape[1]
    a, b = ref.stages["prefix/embeds"].value[:, -n_txt:], trace.stages["prefix/embeds"].value[:, -n_txt:]
    out["prefix/embeds[text]"] = [None, float(np.abs(a - b)[inputs.token_mask].max()), None]
    return out


def layout_job(case: Path, loaded) -> dict:
    """Load OUT (<= 5.5 SigLIP keys) without and with the key adaptation: {adapt: error or None}."""
    from pibridge.errors import PibridgeError
    from pibridge.parity.stacks.common import mmap_safetensors
    from pibridge.parity.stacks.torch.model import policy_from_tensors

    res = {}
    for adapt in (False, True):
        try:
            policy_from_tensors(mmap_safetensors(case / "out/model.safetensors").tensors, loaded[0], "float32",
                                adapt_vision_keys=adapt)
            res[str(adapt)] = None
        except PibridgeError as err:
            res[str(adapt)] = err.found
    return {"layout": res}


def judge(ref, trace, dtype: str) -> dict:
    """Per-variant summary: worst stage by cosine, actions metrics, pass (tolerances.json or THRESHOLDS)."""
    from pibridge.parity.compare import Rule, compare

    allm = compare(ref, trace, [Rule("*", "*", float("inf"), -1.0)], precision=PRECISION[dtype])
    metrics = {r.name: r.metrics for r in allm.results if r.metrics is not None}
    bad = [r.name for r in allm.results if r.failed or r.metrics is None]
    worst = min(metrics, key=lambda n: metrics[n].cosine)
    act = metrics["actions"]
    strict = threshold_failures(metrics, dtype)
    first_strict = (bad + strict + [None])[0]
    rules = _tolerance_rules()
    if rules is not None:
        first, rule = (bad + tolerance_failures(metrics, rules, PRECISION[dtype]) + [None])[0], "tolerances.json"
    else:
        first, rule = first_strict, "thresholds"
    ok = first is None
    return {"worst_stage": worst, "worst_cosine": metrics[worst].cosine, "worst_max_abs": metrics[worst].max_abs,
            "actions_cosine": act.cosine, "actions_max_abs": act.max_abs, "first_failing": first,
            "pass": bool(ok), "rule": rule, "not_compared": bad,
            "pass_strict": first_strict is None, "first_failing_strict": first_strict}


def _tolerance_rules():
    """configs/tolerances.json rules, or None when absent / not loadable (then THRESHOLDS decide)."""
    from pibridge.configs import CONFIG_DIR
    from pibridge.errors import PibridgeError
    from pibridge.parity.compare import load_rules

    if not (CONFIG_DIR / "tolerances.json").is_file():
        return None
    try:
        return load_rules()
    except PibridgeError:
        return None


def threshold_failures(metrics: dict, dtype: str) -> list[str]:
    """Stage names (execution order) that break THRESHOLDS[dtype]."""
    th, out = THRESHOLDS[dtype], []
    for name, m in metrics.items():
        if name == "llm/kv00/k":
            bad = m.cosine < th["k0_min_cosine"] or m.rel_l2 > th["early_max_rel_l2"]
        elif name.startswith(EARLY):
            bad = m.cosine < th["early_min_cosine"] or m.rel_l2 > th["early_max_rel_l2"]
        elif name == "actions":
            bad = m.cosine < th["actions_min_cosine"]
        else:
            bad = False
        out += [name] if bad else []
    return out


def tolerance_failures(metrics: dict, rules, precision: str) -> list[str]:
    """Stages breaking configs/tolerances.json (compare's rule, with COS_EPS on the cosine)."""
    from pibridge.parity.compare import match_rule

    out = []
    for name, m in metrics.items():
        rule = match_rule(rules, name, precision)
        if rule is not None and not (m.max_abs <= rule.max_abs and m.cosine >= rule.min_cosine - COS_EPS):
            out.append(name)
    return out


def worker(jobs: list[dict]) -> list[dict]:
    """Run jobs {variant, case, lerobot, dtype, fixes, exact[, skip, detail, kind]} on the installed release."""
    from pibridge.fixes import shims

    shims.check_supported()
    cache, out = {}, []
    for job in jobs:
        case = Path(job["case"])
        loaded = cache.setdefault(case, load_case(case))
        t0 = time.perf_counter()
        if job.get("kind") == "layout":
            out.append({**job, "transformers": shims.transformers_version(), **layout_job(case, loaded)})
            continue
        trace, applied = capture(case, job["lerobot"], job["dtype"], job["fixes"], job.get("exact", False), loaded,
                                 job.get("skip", ()))
        ref = loaded[3][PRECISION[job["dtype"]]]
        res = judge(ref, trace, job["dtype"])
        if job.get("detail"):
            res["stages"] = stage_detail(ref, trace, loaded[1])
        out.append({**job, "transformers": shims.transformers_version(), "applied": applied,
                    "seconds": round(time.perf_counter() - t0, 2), **res})
    return out


def fix_variant(pi05: bool = True):
    """Test-size variant whose sizes show the bf16 scale effects that width 64 / head_dim 16 hide: Gemma width
    72 (sqrt 8.485 -> bf16 8.5), head_dim 18 (18**-0.5 inexact), expert width 40; SigLIP mu/14-like; vocab 1024."""
    from pibridge.configs import GemmaSize, SiglipSize, Variant

    llm = GemmaSize("test-w72", 72, 2, 144, 4, 1, 18)
    expert = GemmaSize("test-w40", 40, 2, 80, 4, 1, 18)
    vit = SiglipSize("test-mu", 32, 1, 64, 2, 14, 224)
    return Variant(f"test-w72-{'pi05' if pi05 else 'pi0'}", pi05, True, llm, expert, vit, 1024, 32)


# --- orchestrator --------------------------------------------------------------------------------------------

def jobs_for(lerobots: list[str], cases: dict[str, Path], exact: bool = True) -> list[dict]:
    jobs = []
    for lerobot in lerobots:
        for dtype in ("float32", "bfloat16"):
            modes = [(False, False), (True, False)] + ([(True, True)] if exact and dtype == "bfloat16" else [])
            for fixes, ex in modes:
                jobs += [{"variant": v, "case": str(c), "lerobot": lerobot, "dtype": dtype, "fixes": fixes, "exact": ex}
                         for v, c in cases.items()]
    return jobs


def run_release(version: str, jobs: list[dict], timeout: float = 1800) -> list[dict]:
    from tfvenv import venv_python

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(jobs, f)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([str(venv_python(version)), str(Path(__file__)), "--worker", f.name],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    os.unlink(f.name)
    if proc.returncode != 0:
        raise RuntimeError(f"transformers {version} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rows_from(results: list[dict]) -> list[dict]:
    """One row per (release, LeRobot, dtype, fixes, exact): both variants folded in."""
    from pibridge.fixes.table import embedding_semantics

    rows: dict[tuple, dict] = {}
    for r in results:
        key = (r["transformers"], r["lerobot"], r["dtype"], r["fixes"], r["exact"])
        row = rows.setdefault(key, {"transformers": r["transformers"], "lerobot": r["lerobot"],
                                    "semantics": embedding_semantics(r["lerobot"]),
                                    "dtype": r["dtype"], "fixes": r["fixes"], "exact_fp32": r["exact"],
                                    "fixes_applied": [], "variants": {}, "pass": True, "pass_strict": True})
        row["fixes_applied"] = sorted(set(row["fixes_applied"]) | {k for k, n in r["applied"].items() if n})
        row["variants"][r["variant"]] = {k: r[k] for k in ("worst_stage", "worst_cosine", "worst_max_abs",
                                                           "actions_cosine", "actions_max_abs", "first_failing",
                                                           "pass", "first_failing_strict", "pass_strict",
                                                           "seconds")}
        row["pass"] = row["pass"] and r["pass"]
        row["pass_strict"] = row["pass_strict"] and r["pass_strict"]
    return list(rows.values())


def merge_results(old: dict, results: list[dict], meta: dict, order: list[str]) -> tuple[list[dict], dict]:
    """Old results of the releases not run now + the new ones, in the support config's order; meta["merged"]
    names when each release's rows were made."""
    new = set(meta["releases"])
    kept = [r for r in old["results"] if r["transformers"] not in new]
    when = {**old["meta"].get("merged", {v: old["meta"]["date"] for v in old["meta"]["releases"]}),
            **{v: meta["date"] for v in new}}
    rank = {v: i for i, v in enumerate(order)}
    merged = sorted(kept + results, key=lambda r: rank.get(r["transformers"], len(rank)))  # stable within a release
    releases = sorted({r["transformers"] for r in merged}, key=lambda v: rank.get(v, len(rank)))
    return merged, {**meta, "releases": releases, "venvs": {**old["meta"].get("venvs", {}), **meta["venvs"]},
                    "merged": {v: when[v] for v in releases if v in when}}


def markdown(rows: list[dict], meta: dict) -> str:
    merged = meta.get("merged")
    runs = "; rows made: " + ", ".join(f"{v} {d}" for v, d in merged.items()) if merged else ""
    lines = [f"# transformers version matrix ({meta['date']})", "",
             f"pass rule: {meta['rule']}; wall time {meta['wall_s']} s (this run){runs}; venvs: {meta['venvs']}", "",
             "| transformers | LeRobot (semantics) | dtype | fixes | fixes applied | worst stage (cosine) | "
             + " | ".join(f"{v} actions cos / max-abs" for v in meta["variants"]) + " | result | strict (first failing) |",
             "|" + "---|" * (8 + len(meta["variants"]))]
    for r in rows:
        worst_v = min(r["variants"], key=lambda v: r["variants"][v]["worst_cosine"])
        w = r["variants"][worst_v]
        mode = ("on+exact" if r["exact_fp32"] else "on") if r["fixes"] else "off"
        acts = " | ".join(f"{r['variants'][v]['actions_cosine']:.7f} / {r['variants'][v]['actions_max_abs']:.2e}"
                          if v in r["variants"] else "-" for v in meta["variants"])
        lines.append(f"| {r['transformers']} | {r['lerobot']} ({r['semantics']}) | {r['dtype']} | {mode} | "
                     f"{', '.join(r['fixes_applied']) or '-'} | {w['worst_stage']} ({worst_v}) {w['worst_cosine']:.7f} | "
                     f"{acts} | {'PASS' if r['pass'] else 'FAIL'} | {_strict(r)} |")
    return "\n".join(lines) + "\n"


def _strict(row: dict) -> str:
    if row["pass_strict"]:
        return "pass"
    firsts = sorted({v["first_failing_strict"] for v in row["variants"].values() if v["first_failing_strict"]})
    return "FAIL (" + ", ".join(firsts) + ")"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--releases", nargs="*", help="transformers versions (default: the matrix of the support config)")
    ap.add_argument("--refs", type=Path, default=ROOT / ".venvs/matrix-refs", help="case / reference-trace cache")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results", help="where matrix.json / matrix.md go")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--no-golden", action="store_true", help="JAX-stack cases instead of tests/golden")
    ap.add_argument("--no-exact", action="store_true", help="skip the bf16 fixes+exact_fp32 rows")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other releases' rows of the existing OUT/matrix.json (with --releases: add one row)")
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(Path(args.worker).read_text()))))
        return 0
    from tfvenv import ensure_venv

    t0 = time.perf_counter()
    plan = {m["transformers"]: m["lerobot"] for m in SUPPORT["matrix"]}
    releases = args.releases or list(plan)
    venvs = {v: ensure_venv(v)["seconds"] for v in releases}
    cases = ensure_cases(args.refs, args.variants, False if args.no_golden else None)
    results = []
    for v in releases:
        t1 = time.perf_counter()
        results += run_release(v, jobs_for(plan.get(v, ["0.6.1"]), cases, not args.no_exact))
        print(f"transformers {v}: {time.perf_counter() - t1:.0f} s", file=sys.stderr)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "wall_s": round(time.perf_counter() - t0, 1),
            "rule": ("configs/tolerances.json" if _tolerance_rules() is not None else "explicit thresholds")
            + f"; strict = {THRESHOLDS}", "venvs": venvs, "variants": args.variants, "releases": releases}
    if args.merge and (args.out / "matrix.json").is_file():
        results, meta = merge_results(json.loads((args.out / "matrix.json").read_text()), results, meta, list(plan))
    rows = rows_from(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "matrix.json").write_text(json.dumps({"meta": meta, "rows": rows, "results": results}, indent=1))
    (args.out / "matrix.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))
    failed = [r for r in rows if r["fixes"] and not r["pass"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
