"""Make the goldens (tests/golden/), each validated against OpenPI's own Pi0 run from its source.

    make goldens OPENPI_SRC=/path/to/openpi            # or:
    .venv/bin/python tools/make_goldens.py --openpi-src /path/to/openpi [--openpi-python PY] [--openpi-commit SHA]

For each spec of pibridge.parity.goldens (tiny-pi05, tiny-pi0) and precision (float32, bf16): synth the checkpoint,
build the observation and OpenPI-preprocessed inputs, run pibridge's JAX stack recording every stage, then run
OpenPI's Pi0.sample_actions on the same params / inputs / noise in OpenPI's scratch environment (this same
file with --openpi-side, under PYTHONPATH=$OPENPI_SRC/src:<repo>, reusing tools/validate_jax_stack.py's model
construction). A float32 golden whose actions differ from OpenPI's by more than 1e-5 is refused (nothing is
written, exit 1); a bf16 one records its max-abs (0 expected: the JAX stack follows OpenPI's bf16 policy).
LoRA specs (goldens.LORA_SPECS): OpenPI's Pi0 with the case's lora_configs (tools/validate_lora.py's model), the
JAX stack unmerged; their inputs are the base variant's, checked equal to a set's stored file and not copied.
The OpenPI commit comes from $OPENPI_SRC/.git when present, else --openpi-commit (required then).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pibridge.parity import goldens as g  # noqa: E402
from pibridge.parity.stacks.jax.capture import golden_stages  # noqa: E402

TOKENIZER = REPO / "tests" / "data" / "test_spm.model"


def openpi_commit(src: Path, given: str | None) -> str:
    head = src / ".git" / "HEAD"
    if head.is_file():
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref_file = src / ".git" / ref[5:]
            if ref_file.is_file():
                return ref_file.read_text().strip()
            packed = src / ".git" / "packed-refs"
            for line in packed.read_text().splitlines() if packed.is_file() else []:
                if line.endswith(" " + ref[5:]):
                    return line.split()[0]
        else:
            return ref
    if not given:
        raise SystemExit(f"{src} has no .git: pass --openpi-commit SHA (the checkout's commit, e.g. {g.OPENPI_COMMIT})")
    return given


def openpi_actions(args, ckpt: Path, inputs: Path, spec: g.GoldenSpec, precision: str, work: Path) -> np.ndarray:
    out = work / f"openpi-{spec.name}-{precision}.npy"
    env = dict(os.environ, PYTHONPATH=f"{args.openpi_src / 'src'}:{REPO}")
    cmd = [str(args.openpi_python), str(Path(__file__).resolve()), "--openpi-side", "--ckpt", str(ckpt),
           "--inputs", str(inputs), "--variant", spec.name, "--precision", precision, "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"OpenPI run failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return np.load(out)


def make_variant(args, spec: g.GoldenSpec, commit: str, work: Path, staged: Path) -> list[dict]:
    from pibridge.configs import load_variant
    from pibridge.parity.trace import write_trace

    synth = g.write_checkpoint(spec, work / f"ck-{spec.name}")
    obs = g.golden_observation(spec)
    pre = g.golden_inputs(spec, obs, synth.out, TOKENIZER)
    g.save_inputs(work / spec.inputs_name, pre, obs.noise, {"observation_fingerprint": obs.fingerprint(),
                                                             "prompts": list(obs.prompts), "synth": spec.__dict__})
    inputs_file = work / spec.inputs_name
    sets = g.golden_sets(REPO / "tests" / "golden")
    if spec.lora and any((d / spec.inputs_name).is_file() for d in sets):  # shared with the base variant's set
        inputs_file = g.inputs_path(sets, spec)
        (mine, n1, _), (stored, n2, _) = g.load_inputs(work / spec.inputs_name), g.load_inputs(inputs_file)
        if not (all(np.array_equal(getattr(mine, f), getattr(stored, f))
                    for f in ("images", "image_mask", "state", "tokens", "token_mask")) and np.array_equal(n1, n2)):
            raise SystemExit(f"REFUSED {spec.name}: its preprocessed inputs differ from {inputs_file}, which it shares")
    else:
        shutil.copyfile(inputs_file, staged / spec.inputs_name)
    inputs, noise, _ = g.load_inputs(inputs_file)  # what the tests will read back
    params, variant = g.stack_params(spec, synth.out), load_variant(spec.variant)
    rows = []
    for precision in g.PRECISIONS:
        ours, stages = golden_stages(params, variant, inputs, noise, precision, spec)
        ref = openpi_actions(args, synth.out, inputs_file, spec, precision, work)
        max_abs = float(np.max(np.abs(ours.astype(np.float64) - ref)))
        cos = float(np.dot(ours.ravel(), ref.ravel()) / (np.linalg.norm(ours) * np.linalg.norm(ref)))
        row = {"golden": spec.trace_name(precision), "openpi_max_abs": max_abs, "openpi_cosine": cos}
        print(json.dumps(row), flush=True)
        if max_abs != 0.0:  # same host, same jitted computation: OpenPI's model and the JAX stack agree bit for bit
            raise SystemExit(f"REFUSED {row['golden']}: {precision} actions differ from OpenPI's by {max_abs:.3e}; "
                             "on one host the JAX stack reproduces OpenPI's Pi0.sample_actions exactly (max-abs 0): "
                             "find what differs (tools/validate_jax_stack.py) before making goldens")
        meta = g.trace_meta(spec, precision, synth=synth, obs_fingerprint=obs.fingerprint(), openpi_commit=commit,
                            openpi_max_abs=max_abs, openpi_cosine=cos)
        write_trace(staged / spec.trace_name(precision), stages, meta)
        rows.append(row)
    return rows


def main_project(args) -> int:
    commit = openpi_commit(args.openpi_src, args.openpi_commit)
    work = Path(tempfile.mkdtemp(prefix="pibridge-goldens-"))
    staged = work / "staged"
    staged.mkdir()
    try:
        rows = []
        for spec in g.ALL_SPECS:
            if not args.variants or spec.name in args.variants:
                rows += make_variant(args, spec, commit, work, staged)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for f in sorted(staged.iterdir()):  # only after every golden passed
            shutil.copyfile(f, args.out_dir / f.name)
            print(f"wrote {args.out_dir / f.name} ({f.stat().st_size / 1e6:.2f} MB)")
        print(f"OpenPI commit {commit}; {len(rows)} goldens validated")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main_openpi_side(args) -> int:
    """In OpenPI's scratch venv: OpenPI's Pi0.sample_actions on the golden's params and inputs -> actions .npy."""
    import jax

    sys.path.insert(0, str(REPO / "tools"))
    import validate_jax_stack as v

    from pibridge.configs import load_variant
    from pibridge.convert.reader import open_checkpoint

    spec = next(s for s in g.ALL_SPECS if s.name == args.variant)
    variant = load_variant(spec.variant)
    inputs, noise, _ = g.load_inputs(args.inputs)
    params = open_checkpoint(args.ckpt).read_tree()
    if spec.lora:  # OpenPI's Pi0 with lora_configs for the adapted experts, as tools/validate_lora.py builds it
        import validate_lora as vl

        model = vl._openpi_model(variant, params, noise.shape[1], inputs.token_len, args.precision,
                                 spec.lora_request().settings())
    else:
        model = v._openpi_model(variant, params, noise.shape[1], inputs.token_len, args.precision)
    ctx = jax.default_matmul_precision("highest") if args.precision == "float32" else v._null()
    with ctx:
        actions = v._openpi_run(model, v._observation(inputs), noise, g.NUM_STEPS)[0]
    np.save(args.out, np.asarray(actions, np.float32))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--openpi-src", type=Path, default=None, help="OpenPI checkout (its src/ goes on PYTHONPATH)")
    ap.add_argument("--openpi-python", type=Path, default=Path("/work/openpi-venv/bin/python"),
                    help="interpreter of an environment that runs OpenPI's model code")
    ap.add_argument("--openpi-commit", default=None, help="commit of --openpi-src when it has no .git")
    ap.add_argument("--out-dir", type=Path, default=None,
                    help="the set to write (default: tests/golden/<this host's set name>, e.g. amd-epyc-avx512)")
    ap.add_argument("--variants", nargs="*", default=None, help="spec names, e.g. tiny-pi05 tiny-pi05-lora")
    ap.add_argument("--openpi-side", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--precision", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.openpi_side:
        return main_openpi_side(args)
    if args.out_dir is None:
        from pibridge.parity.hostinfo import host_info

        args.out_dir = REPO / "tests" / "golden" / g.set_name_for(host_info())
    if args.out_dir.name == g.FOREIGN_SET:
        raise SystemExit(f"{args.out_dir} is the foreign-host set, kept unchanged (issue 12): write another set")
    if args.openpi_src is None or not (args.openpi_src / "src" / "openpi").is_dir():
        raise SystemExit("pass --openpi-src PATH (an OpenPI checkout with src/openpi), e.g. make goldens OPENPI_SRC=...")
    return main_project(args)


if __name__ == "__main__":
    sys.exit(main())
