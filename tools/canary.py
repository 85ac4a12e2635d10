"""`make canary`: the early warning for the next upstream release (not part of the gate).

Per Python (3.11 and 3.12 by default; `--python 3.12` runs one), a scratch venv .venvs/canary-py<X.Y>, recreated
each run:
1. newest released, per package: what pip resolves with --no-deps for this Python; a newer release this Python or
   this machine cannot take is named with pip's own reason (Requires-Python; the machine's pip constraint file,
   whose cap is lifted with PIP_CONSTRAINT=/dev/null for that one resolve);
2. installable: a dry-run resolve of the newest with its dependencies; when pip cannot resolve it, its reason
   ("transformers requires kernels<0.20,>=0.19.1; the registry's newest kernels is 0.17.2");
3. installs pibridge core + [jax] with the newest jax / flax / orbax-checkpoint, and the newest transformers: where
   that does not resolve, by its matrix row's no-deps install plan (tools/tfvenv.py; it must be declared there),
   else the newest installable one, labelled as such, never silently. torch is not installed (the newest here is a
   ~3 GB CUDA build): the project venv's CPU torch (3.11) or the shared .venvs/_torch (3.12, as
   tools/lerobot_env.sh) through a .pth, unless --newest-torch;
4. checks: the JAX stack on the installed jax / flax reproduces the goldens (the matrix's golden cases, judged by
   the golden rules, pibridge/parity/golden_rules.py: the measured host spread) and the torch stack on the installed transformers matches them (fixes on, float32 and bf16);
5. same host, newest vs pinned: the JAX-stack traces of the canary venv against those of the project venv's jax on
   this machine (stages bit-equal, the first that differs, the largest error): a release that moves a number shows
   here even where a tolerance passes it, and a host difference cannot (both run here).
Writes bench/results/canary.json and canary.md (one section per Python; a one-Python run keeps the other's
section); exits 1 when a check fails or cannot run.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
PACKAGES = ("jax", "flax", "orbax-checkpoint", "transformers", "torch")
MODULES = {"jax": "jax", "flax": "flax", "orbax-checkpoint": "orbax.checkpoint", "transformers": "transformers",
           "torch": "torch"}
PYTHONS = {"3.11": ["python3.11"], "3.12": ["/root/.pyenv/versions/3.12.*/bin/python", "python3.12"]}
VARIANTS = ("tiny-pi05", "tiny-pi0")
PIP = ["-m", "pip", "--disable-pip-version-check"]


# --- pip's answers, parsed (pure; tests/test_canary.py feeds recorded pip output) -------------------------------

def _version(v: str) -> Version | None:
    try:
        return Version(v)
    except InvalidVersion:
        return None


def unresolvable_reason(stderr: str) -> str:
    """pip's reason a resolve failed, in one line.
    'Could not find a version that satisfies the requirement kernels<0.20,>=0.19.1 (from transformers) (from
    versions: 0.1.7, ..., 0.17.2)' -> 'transformers requires kernels<0.20,>=0.19.1; the registry's newest kernels
    is 0.17.2'. A conflict ('The conflict is caused by:') gives pip's cause lines; anything else its last error."""
    m = re.search(r"satisfies the requirement (\S+)(?: \(from ([^)]+)\))? \(from versions: ([^)]*)\)", stderr)
    if m:
        req, by, served = m.groups()
        name = Requirement(req).name
        versions = [v for v in (s.strip() for s in served.split(",")) if v and _version(v) is not None]
        newest = max(versions, key=Version) if versions else None
        head = f"{by} requires {req}" if by else f"{req} is not served for this Python / platform"
        return head + (f"; the registry's newest {name} is {newest}" if newest else f"; the registry serves no {name}")
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
    if "The conflict is caused by:" in stderr:
        i = next(i for i, ln in enumerate(lines) if ln.startswith("The conflict is caused by:"))
        cause = []
        for ln in lines[i + 1:]:
            if ln.startswith(("To fix", "ERROR", "Additionally")):
                break
            cause.append(ln)
        return "conflict: " + "; ".join(cause)
    errors = [ln.removeprefix("ERROR: ") for ln in lines if ln.startswith("ERROR")]
    return errors[-1] if errors else (lines[-1] if lines else "pip failed without a message")


def other_python_releases(stderr: str, newest: str) -> list[tuple[str, str]]:
    """[(version, 'Requires-Python >=3.12')] newer than `newest`, from pip's 'Ignored the following versions that
    require a different python version: 0.11.0 Requires-Python >=3.12; ...' line."""
    m = re.search(r"Ignored the following versions that require a different python version: (.*)", stderr)
    if not m:
        return []
    base = _version(newest)
    out = []
    for item in m.group(1).split(";"):
        parts = item.strip().split(" ", 1)
        v = _version(parts[0])
        if v is not None and len(parts) == 2 and (base is None or v > base) and not v.is_prerelease:
            out.append((parts[0], parts[1].strip()))
    return sorted(out, key=lambda p: Version(p[0]))


def constraint_lines(constraint_files: list[str], package: str) -> list[str]:
    """'file: line' for each line of the pip constraint files that names `package`."""
    out = []
    for f in constraint_files:
        try:
            lines = Path(f).read_text().splitlines()
        except OSError:
            continue
        for ln in lines:
            ln = ln.split("#")[0].strip()
            if ln:
                try:
                    if Requirement(ln).name.lower() == package:
                        out.append(f"{f}: {ln}")
                except Exception:  # not a requirement line (an option)
                    continue
    return out


def cuda_requirements(requires_dist: list[str]) -> list[str]:
    """The CUDA runtime requirements of a wheel (a torch CUDA build: cuda-toolkit, nvidia-*, triton)."""
    return [r for r in requires_dist or []
            if re.match(r"(cuda-|nvidia-|triton)", r.split(";")[0].strip().lower())]


def summarize(pkg: str, newest: str, other_pythons, capped: dict | None, resolve_error: str | None,
              requires_dist=None) -> dict:
    """One package's status from pip's answers: newest released, what here cannot be installed, and why."""
    released = [newest] + [v for v, _ in other_pythons] + ([capped["version"]] if capped else [])
    out = {"newest_for_this_python": newest, "newest_released": max(released, key=Version),
           "not_installable": [], "installable": resolve_error is None}
    for why in dict.fromkeys(w for _, w in other_pythons):  # one entry per reason: "0.11.0 ... 0.12.0.1"
        vs = [v for v, w in other_pythons if w == why]
        out["not_installable"].append({"version": vs[0] if len(vs) == 1 else f"{vs[0]} ... {vs[-1]} ({len(vs)} releases)",
                                       "reason": f"{why} (this Python is older)"})
    if capped:
        out["not_installable"].append({"version": capped["version"], "reason": capped["reason"]})
    if resolve_error is not None:
        out["not_installable"].append({"version": newest, "reason": resolve_error})
    cuda = cuda_requirements(requires_dist)
    if cuda:
        out["cuda_build"] = f"{pkg} {newest} here is a CUDA build ({len(cuda)} CUDA requirements, e.g. {cuda[0]})"
    return out


# --- pip, run -------------------------------------------------------------------------------------------------

def pip_report(py: Path, args: list[str], env: dict | None = None) -> tuple[dict | None, str]:
    """`pip install --dry-run --report -` -> (report or None, pip's stderr). Nothing is installed."""
    proc = subprocess.run([str(py), *PIP, "install", "--dry-run", "-q", "--report", "-", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})
    ok = proc.returncode == 0 and proc.stdout.strip()
    return (json.loads(proc.stdout) if ok else None), proc.stderr


def constraint_files(py: Path) -> list[str]:
    """The pip constraint files in force (PIP_CONSTRAINT, else `pip config list`'s *.constraint)."""
    if os.environ.get("PIP_CONSTRAINT"):
        return os.environ["PIP_CONSTRAINT"].split()
    out = subprocess.run([str(py), *PIP, "config", "list"], capture_output=True, text=True).stdout
    return [m.group(1) for m in re.finditer(r"^\S+\.constraint='([^']+)'", out, re.M)]


def _installed_version(report: dict | None, pkg: str) -> str | None:
    items = (report or {}).get("install", [])
    return next((i["metadata"]["version"] for i in items if i["metadata"]["name"].lower() == pkg), None)


def survey(py: Path, log=print) -> dict[str, dict]:
    """Per package: newest released, installable here or why not (pip's own words)."""
    cons = constraint_files(py)
    out = {}
    for pkg in PACKAGES:
        report, err = pip_report(py, ["--no-deps", pkg])
        newest = _installed_version(report, pkg)
        if newest is None:
            out[pkg] = {"newest_released": "unresolved", "not_installable": [{"version": "?", "reason":
                        unresolvable_reason(err)}], "installable": False}
            continue
        requires = report["install"][0]["metadata"].get("requires_dist", [])
        _, err_newer = pip_report(py, ["--no-deps", f"{pkg}>{newest}"])
        others = other_python_releases(err_newer, newest)
        capped = None
        lines = constraint_lines(cons, pkg)
        if lines:
            free, _ = pip_report(py, ["--no-deps", pkg], env={"PIP_CONSTRAINT": "/dev/null"})
            v = _installed_version(free, pkg)
            if v and Version(v) > Version(newest):
                cuda = cuda_requirements(free["install"][0]["metadata"].get("requires_dist", []))
                capped = {"version": v, "reason": "this machine's pip constraint " + "; ".join(lines)
                          + (f"; and it is a CUDA build ({len(cuda)} CUDA requirements, e.g. {cuda[0]}): no CPU "
                             "wheel is served" if cuda else "")}
        resolve_error = None
        if pkg != "torch":  # torch's full resolve means ~3 GB of CUDA wheels; judged from its metadata instead
            full, err_full = pip_report(py, [f"{pkg}=={newest}"])
            resolve_error = None if full is not None else unresolvable_reason(err_full)
        out[pkg] = summarize(pkg, newest, others, capped, resolve_error, requires)
        log(f"  {pkg}: {out[pkg]}")
    return out


# --- the venv ---------------------------------------------------------------------------------------------------

def find_python(version: str) -> str:
    for pattern in PYTHONS[version]:
        for cand in sorted(glob.glob(pattern)) or [pattern]:
            probe = subprocess.run([cand, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                   capture_output=True, text=True) if shutil.which(cand) or Path(cand).is_file() \
                else None
            if probe is not None and probe.returncode == 0 and probe.stdout.strip() == version:
                return cand
    raise SystemExit(f"canary: no Python {version} found (tried {PYTHONS[version]})")


def venv_dir(version: str) -> Path:
    from tfvenv import VENVS

    return VENVS / f"canary-py{version}"


def torch_pth(version: str) -> tuple[str | None, str]:
    """(site dir the venv's .pth adds, what it is): the project venv's CPU torch on 3.11, .venvs/_torch on 3.12."""
    from tfvenv import VENVS, project_site_packages

    if version == "3.11":
        return str(project_site_packages()), "the project venv's CPU torch"
    shared = VENVS / "_torch"
    if (shared / ".pibridge-stamp").is_file():
        return str(shared), f"the shared {shared.name} ({(shared / '.pibridge-stamp').read_text().strip()})"
    return None, f"{shared} is missing (tools/lerobot_env.sh / make lerobot-env builds it)"


def _newest_label(s: dict) -> str:
    if s["newest_for_this_python"] == s["newest_released"]:
        return "newest"
    return "newest for this Python / machine (newer: last column)"


def build(version: str, status: dict[str, dict], newest_torch: bool, log=print) -> dict:
    """Install what `status` allows; -> {package: route} (how each package under test got there)."""
    import tfvenv

    venv = venv_dir(version)
    py = venv / "bin" / "python"
    pip = [str(py), *PIP, "install", "-q"]
    routes, pins = {}, []
    for pkg in ("jax", "flax", "orbax-checkpoint"):
        s = status[pkg]
        if s["installable"]:
            pins.append(f"{pkg}=={s['newest_for_this_python']}")
            routes[pkg] = _newest_label(s)
        else:
            pins.append(pkg)
            routes[pkg] = "NOT the newest: the newest installable (see not installable)"
    subprocess.run(pip + ["-e", f"{ROOT}[jax]", *pins, "pytest"], check=True)
    tf = status["transformers"]
    newest = tf["newest_for_this_python"]
    spec = tfvenv.install_spec(newest)
    if tf["installable"]:
        subprocess.run(pip + [f"transformers=={newest}"], check=True)
        routes["transformers"] = _newest_label(tf)
    elif spec and spec.get("no_deps"):
        for args in tfvenv.install_plan(newest, spec):
            subprocess.run(pip + args, check=True)
        tfvenv.check_missing(str(py), spec)  # before the torch .pth: only this venv
        routes["transformers"] = (f"{_newest_label(tf)}, by its matrix row's no-deps plan (left out: "
                                  f"{', '.join(spec['missing'])}; configs/transformers_support.json)")
    else:
        subprocess.run(pip + ["transformers"], check=True)
        routes["transformers"] = ("NOT the newest: the newest installable (the newest has no no-deps plan in "
                                  "configs/transformers_support.json)")
    if newest_torch:
        subprocess.run(pip + [f"torch=={status['torch']['newest_for_this_python']}"], check=True)
        routes["torch"] = "newest installable here (--newest-torch)"
    else:
        site_dir, what = torch_pth(version)
        if site_dir:
            site = next(venv.glob("lib/python3*/site-packages"))
            (site / "zz_canary_torch.pth").write_text(f"import site; site.addsitedir({site_dir!r})\n")
        routes["torch"] = f"not installed: {what}" + ("" if site_dir else " - the torch check cannot run")
    log(f"  routes: {routes}")
    return routes


INSTALLED = ("import importlib, importlib.metadata as m, json, sys\nout = {}\nfor p, mod in %r.items():\n"
             "    try:\n        f = importlib.import_module(mod).__file__\n"
             "        out[p] = {'version': m.version(p), 'file': f, 'own': f.startswith(sys.prefix)}\n"
             "    except Exception as e:\n        out[p] = {'version': None, 'error': repr(e)[:300]}\n"
             "print(json.dumps(out))")


def installed(py: Path) -> dict[str, dict]:
    """Version and origin of each package as the venv imports it ('own': from the canary venv itself)."""
    proc = subprocess.run([str(py), "-c", INSTALLED % (MODULES,)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- checks (inside the canary venv) ---------------------------------------------------------------------------

def check_jax(cases: dict[str, Path], traces: Path | None = None) -> list[dict]:
    """The JAX stack on the installed jax against the stored reference traces (its traces kept in `traces`)."""
    import jax

    import matrix
    from pibridge.parity.stacks.jax import run_policy
    from pibridge.parity.stacks.jax.params import nest
    from pibridge.parity.stages import StageRecorder
    from pibridge.parity.trace import Trace, write_trace

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
            if meta.get("golden"):  # the JAX stack is judged by the golden rules (host spread), not tolerances.json
                res |= golden_verdict(f"{name}-{precision}", refs[precision], list(rec), Path(meta["golden"]))
            if traces is not None:
                traces.mkdir(parents=True, exist_ok=True)
                write_trace(traces / f"{name}-{precision}.safetensors", rec,
                            {"stack": "jax", "precision": precision, "jax": jax.__version__})
            rows.append({"check": "jax vs reference", "variant": name, "dtype": dtype, **res})
    return rows


def golden_verdict(case: str, golden, stages, golden_dir: Path) -> dict:
    """pibridge/parity/golden_rules.py on one case: pass, first failing stage, the worst error / limit, and the
    mismatch report (both hosts, error as a multiple of the host spread)."""
    from pibridge.parity.golden_rules import check_golden
    from pibridge.parity.hostinfo import host_info

    from pibridge.parity.goldens import DROPPED_STAGES, set_host

    stages = [s for s in stages if s.name not in DROPPED_STAGES]
    r = check_golden(case, golden, stages, golden_host=set_host(golden_dir, golden), today_host=host_info())
    worst = max(r.rows, key=lambda x: max(x.errors[m] / x.limits.limit[m] for m in x.errors))
    ratio = max(worst.errors[m] / worst.limits.limit[m] for m in worst.errors)
    return {"pass": r.passed, "rule": "golden_rules.json", "first_failing": r.first_failure and r.first_failure.name,
            "worst_ratio": [worst.name, ratio], "golden_explain": r.explain(limit=3)}


def check_torch(cases: dict[str, Path]) -> list[dict]:
    import matrix

    jobs = [{"variant": n, "case": str(c), "lerobot": "0.6.1", "dtype": dt, "fixes": True, "exact": False}
            for n, c in cases.items() for dt in ("float32", "bfloat16")]
    return [{"check": "torch (fixes on) vs reference", **r} for r in matrix.worker(jobs)]


def same_host(pinned: Path, newest: Path) -> list[dict]:
    """Per trace in both dirs: the newest jax's stages against the pinned jax's, on this machine (information)."""
    from pibridge.parity.compare import stage_metrics
    from pibridge.parity.trace import read_trace

    rows = []
    for f in sorted(pinned.glob("*.safetensors")):
        if not (newest / f.name).is_file():
            continue
        a, b = read_trace(f), read_trace(newest / f.name)
        ms = {n: stage_metrics(a.stages[n], b.stages[n]) for n in a.order if n in b.stages}
        ms = {n: m for n, m in ms.items() if not isinstance(m, str)}
        largest = max(ms, key=lambda n: ms[n].max_abs)
        rows.append({"variant": f.stem.rsplit("-", 1)[0], "precision": a.meta["precision"],
                     "jax": [a.meta.get("jax"), b.meta.get("jax")], "stages": len(ms),
                     "bit_equal": sum(m.max_abs == 0 for m in ms.values()),
                     "first_differing": next((n for n, m in ms.items() if m.max_abs > 0), None),
                     "largest": [largest, ms[largest].max_abs, ms[largest].rel_l2],
                     "min_cosine": min(m.cosine for m in ms.values()), "actions_max_abs": ms["actions"].max_abs})
    return rows


def inner(refs: Path, traces: Path | None = None) -> None:
    """Runs inside the canary venv; prints the rows as JSON (a stack that cannot import gives an error row)."""
    os.environ["PIBRIDGE_ALLOW_UNSUPPORTED_TRANSFORMERS"] = "1"
    import matrix

    cases = matrix.ensure_cases(refs, VARIANTS)
    rows = []
    for name, check in (("jax vs reference", lambda c: check_jax(c, traces)),
                        ("torch (fixes on) vs reference", check_torch)):
        try:
            rows += check(cases)
        except ImportError as err:
            rows.append({"check": name, "variant": "-", "dtype": "-", "pass": False, "error": f"cannot run: {err}"})
    print(json.dumps(rows))


# --- one Python, the report -----------------------------------------------------------------------------------

def run_python(version: str, refs: Path, newest_torch: bool, pinned: Path, log=print) -> dict:
    t0 = time.perf_counter()
    base = find_python(version)
    venv = venv_dir(version)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), *PIP, "install", "-q", "--upgrade", "pip"], check=True)
    log(f"canary python {version} ({base}): survey")
    status = survey(py, log)
    routes = build(version, status, newest_torch, log)
    inst = installed(py)
    pib = subprocess.run([str(py), "-c", "import pibridge; print(pibridge.__file__)"], capture_output=True,
                         text=True).stdout.strip()
    traces = venv / "jax-traces"
    proc = subprocess.run([str(py), str(Path(__file__)), "--inner", str(refs), "--traces", str(traces)],
                          capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    rows = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else []
    from pibridge.fixes import shims

    tf = (inst.get("transformers") or {}).get("version")
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "python": subprocess.run(
        [str(py), "-c", "import platform; print(platform.python_version())"], capture_output=True, text=True
    ).stdout.strip(), "packages": {p: {**status[p], "installed": inst.get(p), "route": routes.get(p)} for p in PACKAGES},
        "pibridge": pib, "supported": shims.supported_range()["specifier"],
        "transformers_in_supported_range": bool(tf) and shims.is_supported(tf),
        "rows": rows, "same_host": same_host(pinned, traces) if traces.is_dir() else [],
        "error": None if proc.returncode == 0 else proc.stderr[-3000:],
        "wall_s": round(time.perf_counter() - t0, 1)}
    res["pass"] = proc.returncode == 0 and bool(rows) and all(r["pass"] for r in rows)
    return res


def _not_testable(s: dict) -> str:
    items = [f"{n['version']}: {n['reason']}" for n in s.get("not_installable", [])]
    if s.get("cuda_build"):
        items.append(s["cuda_build"])
    return "<br>".join(items) or "-"


def _installed_cell(s: dict) -> str:
    inst = s.get("installed") or {}
    if not inst.get("version"):
        return f"none ({inst.get('error', 'not importable')})"
    where = "canary venv" if inst.get("own") else f"shared: {Path(inst['file']).parents[1]}"
    return f"{inst['version']} ({where}; {s.get('route')})"


def section(version: str, r: dict) -> list[str]:
    lines = [f"## Python {r['python']}: {'PASS' if r['pass'] else 'FAIL'} ({r['date']}, wall {r['wall_s']} s)", "",
             "| package | newest released | newest for this Python | installed and tested | released, not "
             "installable / not tested here, and why |", "|---|---|---|---|---|"]
    for p, s in r["packages"].items():
        lines.append(f"| {p} | {s.get('newest_released')} | {s.get('newest_for_this_python', '-')} | "
                     f"{_installed_cell(s)} | {_not_testable(s)} |")
    lines += ["", f"pibridge: {r.get('pibridge')}; supported transformers range: {r['supported']}; installed "
              f"transformers in it: {r['transformers_in_supported_range']}", "",
              "| check | variant | dtype | worst stage (cosine) | actions cos / max-abs | result |",
              "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        if "error" in row:
            lines.append(f"| {row['check']} | - | - | {row['error']} | - | FAIL |")
            continue
        lines.append(f"| {row['check']} | {row['variant']} | {row['dtype']} | {row['worst_stage']} "
                     f"{row['worst_cosine']:.7f} | {row['actions_cosine']:.7f} / {row['actions_max_abs']:.2e} | "
                     f"{'PASS' if row['pass'] else 'FAIL'} |")
    explained = [row for row in r["rows"] if row.get("golden_explain")]
    if explained:
        lines += ["", "JAX stack against the goldens under pibridge/configs/golden_rules.json (limit = multiple x the "
                  "measured host spread per stage): worst error / limit per case, and the mismatch report where one "
                  "fails.", ""]
        for row in explained:
            stage, ratio = row["worst_ratio"]
            lines.append(f"- {row['variant']} {row['dtype']}: {'PASS' if row['pass'] else 'FAIL'}, worst {stage} at "
                         f"{ratio:.2f} x its limit")
            if not row["pass"]:
                lines += ["", "      " + row["golden_explain"].replace("\n", "\n      "), ""]
    if r.get("same_host"):
        lines += ["", "Same host: the JAX stack on this venv's jax against the project venv's pinned jax, same machine "
                  "(information: any number a release moves shows here, whatever the tolerance says).", "",
                  "| variant | precision | jax pinned -> here | stages bit-equal | first differing | largest max-abs "
                  "(rel-L2) | min cosine | actions max-abs |", "|---|---|---|---|---|---|---|---|"]
        for h in r["same_host"]:
            lines.append(f"| {h['variant']} | {h['precision']} | {h['jax'][0]} -> {h['jax'][1]} | {h['bit_equal']}/"
                         f"{h['stages']} | {h['first_differing'] or '-'} | {h['largest'][0]} {h['largest'][1]:.3e} "
                         f"({h['largest'][2]:.2e}) | {h['min_cosine']:.7f} | {h['actions_max_abs']:.3e} |")
        lines += openpi_on_this_jax(r["same_host"][0]["jax"][1], moved=any(h["bit_equal"] < h["stages"]
                                                                            for h in r["same_host"]),
                                    pinned=r["same_host"][0]["jax"][0])
    if r.get("error"):
        lines += ["", "checks did not run:", "", "    " + r["error"].strip().replace("\n", "\n    ")]
    return lines + [""]


def _openpi_doc(jax_version: str) -> tuple[Path, dict | None]:
    f = ROOT / "bench" / "results" / f"canary_openpi_jax-{jax_version}.json"
    return f, json.loads(f.read_text()) if f.is_file() else None


def openpi_on_this_jax(jax_version: str, moved: bool, pinned: str | None = None) -> list[str]:
    """Is a moved number jax's or the stack's? OpenPI's own Pi0 on the same jax (tools/openpi_vs_goldens.py, run in
    an OpenPI venv with that jax; its --json saved as bench/results/canary_openpi_jax-<version>.json), and on the
    pinned jax as the control. Nothing when the numbers did not move."""
    if not moved:
        return []
    f, doc = _openpi_doc(jax_version)
    if doc is None:
        return ["", f"jax {jax_version} moves the numbers: whether OpenPI's own model moves identically is untested "
                f"(run tools/openpi_vs_goldens.py in an OpenPI venv with jax {jax_version}, --json {f.name})"]
    stages = [st for c in doc["cases"] for st in c["stages"].values()]
    equal = sum(st["openpi_vs_stack"]["bit_equal"] for st in stages)
    same = all(st["openpi_vs_golden"] == st["stack_vs_golden"] for st in stages)
    acts = "; ".join(f"{c['case']} {c['stages']['actions']['openpi_vs_golden']['abs']:.2e}" for c in doc["cases"])
    head = (f"OpenPI's own Pi0 (from its source) on jax {jax_version} / flax {doc['versions']['flax']}, same inputs "
            f"(tools/openpi_vs_goldens.py; bench/results/{f.with_suffix('.md').name}): ")
    if equal == len(stages) and same:
        verdict = (f"bit-equal to the JAX stack at all {len(stages)} compared stages (actions, prefix/embeds, "
                   f"llm/kv*) of the {len(doc['cases'])} golden cases, so it moves against the goldens exactly as "
                   f"the stack does (actions max-abs vs golden: {acts}). A FAIL above is the intended alarm: a jax "
                   "release that changes the numbers, not a stack bug; goldens for this jax would be a new set "
                   "(`make goldens` there).")
        _, control = _openpi_doc(pinned) if pinned else (None, None)
        if control:
            worst = max(st["openpi_vs_golden"]["abs"] for c in control["cases"] for st in c["stages"].values())
            verdict += (f" Control, jax {pinned} on this host (canary_openpi_jax-{pinned}.md): OpenPI vs the goldens "
                        f"max-abs {worst:.1e} at every compared stage.")
    else:
        verdict = (f"differs from the JAX stack ({equal}/{len(stages)} stages bit-equal): a stack difference on this "
                   "jax until shown otherwise.")
    return ["", head + verdict]


def markdown(result: dict) -> str:
    ok = all(r["pass"] for r in result["pythons"].values())
    lines = [f"# canary: {'PASS' if ok else 'FAIL'}", "",
             "`make canary` (tools/canary.py). Newest: pip's --no-deps resolve for that Python (torch also without "
             "the machine's pip constraint); a release that cannot be installed here says why in pip's words; the "
             "checks run on what is installed.", ""]
    for v in sorted(result["pythons"]):
        lines += section(v, result["pythons"][v])
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inner", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--traces", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--python", nargs="*", choices=sorted(PYTHONS), default=sorted(PYTHONS),
                    help="the Pythons to run (default: all)")
    ap.add_argument("--refs", type=Path, default=ROOT / ".venvs/matrix-refs")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results")
    ap.add_argument("--newest-torch", action="store_true", help="install the newest installable torch (CUDA, ~3 GB)")
    args = ap.parse_args(argv)
    if args.inner:
        inner(args.inner, args.traces)
        return 0
    import matrix

    cases = matrix.ensure_cases(args.refs, VARIANTS)  # reference traces from the project venv (cached)
    from tfvenv import VENVS

    pinned = VENVS / "canary-pinned-jax"  # the project venv's jax on this machine, for the same-host rows
    shutil.rmtree(pinned, ignore_errors=True)
    check_jax(cases, pinned)
    path = args.out / "canary.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    result = {"pythons": dict(old.get("pythons", {}))}
    for v in args.python:
        result["pythons"][v] = run_python(v, args.refs, args.newest_torch, pinned)
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    (args.out / "canary.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if all(result["pythons"][v]["pass"] for v in args.python) else 1


if __name__ == "__main__":
    sys.exit(main())
