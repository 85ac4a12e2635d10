"""OpenPI's own Pi0 against the goldens and against the JAX stack, on whatever jax / flax this venv has.

The question it answers (issue 12): when a jax release moves the JAX stack against the goldens (the canary's
Python 3.12 section), does OpenPI's own model move identically? Runs in a venv that runs OpenPI's model code
(/work/shared/tools/openpi-reference-env, or a Python 3.12 one with jax 0.12):

    PYTHONPATH=/work/openpi-src/src:$PWD VENV/bin/python tools/openpi_vs_goldens.py [--set NAME] \
        [--md OUT.md] [--json OUT.json]

Per golden case (tiny-pi05 / tiny-pi0 / tiny-pi05-lora, float32 / bf16; each in the first set holding it): the
checkpoint from the version-stable synth formula, the stored inputs and noise, then OpenPI's Pi0.sample_actions
jitted as OpenPI serves it (plus its prefix embeddings and KV cache; tools/validate_jax_stack.py's model
construction and run, with the LoRA configs of tools/validate_lora.py for a LoRA golden) and the JAX stack
(golden_stages, jitted). Three comparisons on actions, prefix/embeds and every llm/kv*/{k,v} (valid rows only,
as the goldens are judged; errors as pibridge/parity/golden_rules.py defines them):
  OpenPI vs stack   (this jax): 0 everywhere means the stack is OpenPI's computation here, bit for bit;
  OpenPI vs golden  how far OpenPI's own numbers moved from the golden (made on the golden's jax, validated then
                    against OpenPI bit for bit);
  stack vs golden   how far the stack moved (what tests/test_goldens.py and the canary judge).
Exits 1 unless OpenPI vs stack is 0 at every compared stage.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))


def _openpi_stages(variant, params, inputs, noise, precision: str, spec) -> dict[str, np.ndarray]:
    import jax

    import validate_jax_stack as vj
    from pibridge.parity.goldens import NUM_STEPS
    from pibridge.parity.stages import llm_kv

    if spec.lora:  # OpenPI's Pi0 with the spec's lora_configs, as tools/validate_lora.py builds it
        import validate_lora as vl

        model = vl._openpi_model(variant, params, noise.shape[1], inputs.token_len, precision,
                                 spec.lora_request().settings())
    else:
        model = vj._openpi_model(variant, params, noise.shape[1], inputs.token_len, precision)
    ctx = jax.default_matmul_precision("highest") if precision == "float32" else vj._null()
    with ctx:
        actions, prefix, kv, _, _ = vj._openpi_run(model, vj._observation(inputs), noise, NUM_STEPS)
    out = {"actions": np.asarray(actions, np.float32), "prefix/embeds": prefix}
    for i in range(variant.paligemma.depth):
        for j, w in enumerate("kv"):
            out[llm_kv(i, w)] = kv[j][i]
    return out


def _errors(value, ref, valid) -> dict:
    from pibridge.parity.golden_rules import stage_errors

    valid = np.broadcast_to(valid, ref.shape) if valid is not None else np.ones(ref.shape, bool)
    e = stage_errors(np.asarray(value, np.float32), np.asarray(ref, np.float32), valid)
    e["abs"] = float(np.max(np.abs(value[valid].astype(np.float64) - ref[valid]))) if valid.any() else 0.0
    e["bit_equal"] = bool(np.array_equal(np.asarray(value, np.float32)[valid], np.asarray(ref, np.float32)[valid]))
    return e


def run_case(set_dir: Path, sets: list[Path], spec, precision: str, work: Path) -> dict:
    from pibridge.configs import load_variant
    from pibridge.convert.reader import open_checkpoint
    from pibridge.parity import goldens as g
    from pibridge.parity.stacks.jax.capture import golden_stages
    from pibridge.parity.trace import read_trace

    ck = work / f"ck-{spec.name}"
    synth = g.write_checkpoint(spec, ck) if not ck.exists() else None
    golden = read_trace(set_dir / spec.trace_name(precision))
    if synth is not None and golden.meta["checkpoint_fingerprint"] != synth.fingerprint:
        raise SystemExit(f"{spec.variant}: the synth formula no longer gives the golden's checkpoint "
                         f"(fingerprint {synth.fingerprint} vs {golden.meta['checkpoint_fingerprint']}): "
                         "remake the goldens first")
    inputs, noise, _ = g.load_inputs(g.inputs_path(sets, spec))
    variant = load_variant(spec.variant)
    theirs = _openpi_stages(variant, open_checkpoint(ck).read_tree(), inputs, noise, precision, spec)
    _, stages = golden_stages(g.stack_params(spec, ck), variant, inputs, noise, precision, spec)
    ours = {s.name: s for s in stages}
    rows = {}
    for name, o_val in theirs.items():
        if name not in golden.stages:  # a LoRA golden keeps the suffix stages only: actions
            continue
        gs = golden.stages[name]
        valid = ours[name].valid if ours[name].valid is not None else gs.valid
        rows[name] = {"openpi_vs_stack": _errors(o_val, ours[name].value, valid),
                      "openpi_vs_golden": _errors(o_val, gs.value, valid),
                      "stack_vs_golden": _errors(ours[name].value, gs.value, valid)}
    return {"case": g.case_name(spec, precision), "set": set_dir.name, "golden_versions": golden.meta.get("versions"),
            "stages": rows}


def _worst(case: dict, key: str) -> tuple[str, dict]:
    return max(case["stages"].items(), key=lambda kv: (kv[1][key]["rel_l2"], kv[1][key]["abs"]))


def markdown(cases: list[dict], versions: dict, set_name: str, host: str) -> str:
    lines = ["# OpenPI's own Pi0 vs the goldens and the JAX stack, on this venv's jax", "",
             "`PYTHONPATH=$OPENPI_SRC/src:. VENV/bin/python tools/openpi_vs_goldens.py --md ... --json ...` "
             "(OpenPI's Pi0.sample_actions jitted as OpenPI serves it; the JAX stack jitted)", "",
             f"jax {versions['jax']} / jaxlib {versions['jaxlib']} / flax {versions['flax']}, Python "
             f"{versions['python']}; OpenPI from {versions['openpi']}; golden sets `{set_name}` (made on jax "
             f"{', '.join(dict.fromkeys(c['golden_versions'].get('jax') for c in cases))}); host: {host}",
             "", "Stages compared: actions, prefix/embeds, every llm/kv*/{k,v} (valid rows) where the golden holds "
             "them (a LoRA golden keeps the suffix stages: actions only). abs = max-abs; "
             "rel-L2 = ||a - r|| / ||r||.", "",
             "| case | OpenPI vs stack: stages bit-equal | max abs | OpenPI vs golden: actions abs (rel-L2) | "
             "worst stage abs (rel-L2) | stack vs golden: actions abs (rel-L2) | worst stage abs (rel-L2) |",
             "|---|---|---|---|---|---|---|"]
    for c in cases:
        st = c["stages"]
        eq = sum(r["openpi_vs_stack"]["bit_equal"] for r in st.values())
        mx = max(r["openpi_vs_stack"]["abs"] for r in st.values())
        cells = []
        for key in ("openpi_vs_golden", "stack_vs_golden"):
            a = st["actions"][key]
            w, wr = _worst(c, key)
            cells += [f"{a['abs']:.3e} ({a['rel_l2']:.2e})", f"{w} {wr[key]['abs']:.3e} ({wr[key]['rel_l2']:.2e})"]
        lines.append(f"| {c['case']} | {eq}/{len(st)} | {mx:.1e} | " + " | ".join(cells) + " |")
    identical = all(r["openpi_vs_golden"] == r["stack_vs_golden"] for c in cases for r in c["stages"].values())
    exact = all(r["openpi_vs_stack"]["bit_equal"] for c in cases for r in c["stages"].values())
    lines += ["", "OpenPI's movement against the golden equals the stack's at every compared stage: "
              + ("yes (identical errors)" if identical else "NO"),
              "", "Conclusion: " + ("OpenPI's own model and the JAX stack compute the same numbers bit for bit on "
                                    "this jax; where both differ from the golden, the jax release moved them (not the "
                                    "stack)."
                                    if exact and identical else "OpenPI and the JAX stack differ on this jax.")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", default=None, help="golden set under tests/golden/ (default: each golden spec in the "
                    "first set holding it)")
    ap.add_argument("--md", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--render", type=Path, default=None, help="only re-render --md from a saved --json")
    args = ap.parse_args(argv)
    if args.render:
        doc = json.loads(args.render.read_text())
        from pibridge.parity.golden_rules import describe_host

        (args.md or args.render.with_suffix(".md")).write_text(markdown(doc["cases"], doc["versions"], doc["set"],
                                                                        describe_host(doc["host"])))
        return 0
    import flax
    import jax
    import jaxlib
    import openpi

    from pibridge.parity import goldens as g
    from pibridge.parity.golden_rules import describe_host
    from pibridge.parity.hostinfo import host_info

    sets = g.golden_sets(REPO / "tests" / "golden")
    if args.set and args.set not in [d.name for d in sets]:
        raise SystemExit(f"no golden set {args.set}: one of {[d.name for d in sets]}")
    versions = {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
                "python": sys.version.split()[0], "openpi": str(Path(openpi.__path__[0]).parents[1])}
    cases = []
    with tempfile.TemporaryDirectory(prefix="pibridge-openpi-goldens-") as tmp:
        for spec in g.ALL_SPECS:
            holding = [d for d in sets if (d / spec.trace_name(g.PRECISIONS[0])).is_file()
                       and (args.set is None or d.name == args.set)]
            for precision in g.PRECISIONS if holding else ():
                c = run_case(holding[0], sets, spec, precision, Path(tmp))
                cases.append(c)
                a = c["stages"]["actions"]
                print(f"{c['case']:18s} actions: OpenPI vs stack {a['openpi_vs_stack']['abs']:.3e}; OpenPI vs "
                      f"golden {a['openpi_vs_golden']['abs']:.3e}; stack vs golden {a['stack_vs_golden']['abs']:.3e}",
                      flush=True)
    set_names = ", ".join(dict.fromkeys(c["set"] for c in cases))
    md = markdown(cases, versions, set_names, describe_host(host_info()))
    print(md)
    if args.md:
        args.md.write_text(md)
    if args.json:
        args.json.write_text(json.dumps({"versions": versions, "set": set_names, "host": host_info(),
                                         "cases": cases}, indent=1) + "\n")
    ok = all(r["openpi_vs_stack"]["bit_equal"] for c in cases for r in c["stages"].values())
    print("OpenPI == JAX stack bit for bit at every compared stage" if ok else "FAIL: OpenPI and the stack differ")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
