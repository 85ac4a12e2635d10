"""`make canary`: the early warning for the next upstream release (not part of the gate).

Builds a scratch venv (.venvs/canary, recreated each run) with whatever the registry resolves NOW as the
newest jax / flax / orbax-checkpoint / transformers (and pibridge's other runtime deps), then:
1. the JAX stack on the newest jax / flax reproduces the goldens (tests/golden, via the matrix's golden cases;
   JAX-stack traces made in the project venv where a variant has no golden);
2. the torch stack on the newest transformers (allowed past the supported range with
   PIBRIDGE_ALLOW_UNSUPPORTED_TRANSFORMERS=1) matches them, float32 and bf16, with fixes.
torch: the newest version the registry resolves is recorded; it is installed only with --newest-torch (here that
is a ~3 GB CUDA build); otherwise the project venv's CPU torch is reused (a .pth appended after site-packages).
Writes bench/results/canary.json and canary.md; exits 1 when a check fails (a release moved a number).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
VENV = ROOT / ".venvs" / "canary"
PACKAGES = ("jax", "flax", "orbax-checkpoint", "transformers", "torch")
RUNTIME_DEPS = ("tensorstore", "ml_dtypes", "numpy", "safetensors", "sentencepiece", "typer", "rich", "packaging",
                "pytest")
VARIANTS = ("tiny-pi05", "tiny-pi0")


def resolve_newest(py: Path) -> dict[str, str]:
    """What pip would install now for each package (a dry-run resolve, nothing installed)."""
    out = {}
    for pkg in PACKAGES:
        proc = subprocess.run([str(py), "-m", "pip", "install", "--dry-run", "--no-deps", "-q", "--report", "-", pkg],
                              capture_output=True, text=True)
        report = json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else {"install": []}
        out[pkg] = next((i["metadata"]["version"] for i in report["install"]), "unresolved")
    return out


def build(newest_torch: bool, log=print) -> dict:
    from tfvenv import PTH, project_site_packages

    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run(["python3.11", "-m", "venv", str(VENV)], check=True)
    py = VENV / "bin" / "python"
    newest = resolve_newest(py)
    log(f"newest on the registry: {newest}")
    pkgs = [p for p in PACKAGES if p != "torch" or newest_torch] + list(RUNTIME_DEPS)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--upgrade", *pkgs], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)], check=True)
    if not newest_torch:
        site = next(VENV.glob("lib/python3*/site-packages"))
        (site / PTH).write_text(f"import site; site.addsitedir({str(project_site_packages())!r})\n")
    return newest


def installed(py: Path) -> dict[str, str]:
    code = ("import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
            f"{list(PACKAGES)!r}}}))")
    return json.loads(subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True).stdout)


def check_jax(cases: dict[str, Path]) -> list[dict]:
    """In the canary venv: the JAX stack on the newest jax against the stored reference traces."""
    import matrix
    from pibridge.parity.jax_stack import run_policy
    from pibridge.parity.jax_stack.params import nest
    from pibridge.parity.stages import StageRecorder
    from pibridge.parity.trace import Trace

    rows = []
    for name, case in cases.items():
        variant, inputs, noise, refs, num_steps = matrix.load_case(case)
        meta = json.loads((case / matrix.CASE_STAMP).read_text())
        if meta.get("golden"):  # the golden's own checkpoint, read without orbax
            from pibridge.convert.reader import open_checkpoint

            params = open_checkpoint(case / "ck").read_tree()
        else:
            params = nest(matrix.synthetic_flat_params(variant, meta["seed"], meta["sharp"]))
        for precision, dtype in (("float32", "float32"), ("bf16", "bfloat16")):
            rec = StageRecorder()
            run_policy(params, variant, inputs, noise, precision=precision, num_steps=num_steps, record=rec)
            res = matrix.judge(refs[precision], Trace({s.name: s for s in rec}, {"precision": precision}), dtype)
            rows.append({"check": "jax vs reference", "variant": name, "dtype": dtype, **res})
    return rows


def check_torch(cases: dict[str, Path]) -> list[dict]:
    import matrix

    jobs = [{"variant": n, "case": str(c), "lerobot": "0.6.1", "dtype": dt, "fixes": True, "exact": False}
            for n, c in cases.items() for dt in ("float32", "bfloat16")]
    return [{"check": "torch (fixes on) vs reference", **r} for r in matrix.worker(jobs)]


def inner(refs: Path) -> None:
    """Runs inside the canary venv; prints the rows as JSON."""
    os.environ["PIBRIDGE_ALLOW_UNSUPPORTED_TRANSFORMERS"] = "1"
    import matrix

    cases = matrix.ensure_cases(refs, VARIANTS)
    print(json.dumps(check_jax(cases) + check_torch(cases)))


def markdown(result: dict) -> str:
    lines = [f"# canary ({result['date']}): {'PASS' if result['pass'] else 'FAIL'}", "",
             f"newest resolvable: {result['newest']}", f"installed in the canary venv: {result['installed']}",
             f"torch: {result['torch_note']}", f"supported range: {result['supported']}; wall {result['wall_s']} s", "",
             "| check | variant | dtype | worst stage (cosine) | actions cos / max-abs | result |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['check']} | {r['variant']} | {r['dtype']} | {r['worst_stage']} {r['worst_cosine']:.7f} | "
                     f"{r['actions_cosine']:.7f} / {r['actions_max_abs']:.2e} | {'PASS' if r['pass'] else 'FAIL'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inner", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--refs", type=Path, default=ROOT / ".venvs/matrix-refs")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results")
    ap.add_argument("--newest-torch", action="store_true", help="install the newest torch too (CUDA build, ~3 GB)")
    args = ap.parse_args(argv)
    if args.inner:
        inner(args.inner)
        return 0
    import matrix
    from pibridge.parity.torch_stack import compat

    t0 = time.perf_counter()
    matrix.ensure_cases(args.refs, VARIANTS)  # reference traces from the project venv (cached)
    newest = build(args.newest_torch)
    py = VENV / "bin" / "python"
    inst = installed(py)
    proc = subprocess.run([str(py), str(Path(__file__)), "--inner", str(args.refs)], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    rows = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else []
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "newest": newest, "installed": inst,
              "torch_note": "newest installed" if args.newest_torch else
              f"project venv's {inst['torch']} reused (newest resolvable: {newest['torch']}; --newest-torch installs it)",
              "supported": compat.supported_range()["specifier"],
              "transformers_in_supported_range": compat.is_supported(inst["transformers"]),
              "rows": rows, "error": None if proc.returncode == 0 else proc.stderr[-3000:],
              "wall_s": round(time.perf_counter() - t0, 1)}
    result["pass"] = proc.returncode == 0 and bool(rows) and all(r["pass"] for r in rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "canary.json").write_text(json.dumps(result, indent=1))
    (args.out / "canary.md").write_text(markdown(result))
    print(markdown(result) if rows else result["error"])
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
