"""`pibridge parity compare` and `pibridge parity run` (numpy only in this process).

`run` captures each stack in its own subprocess (`python -m pibridge.cli parity capture ...`, the one command
line; each side's interpreter selectable: the real LeRobot needs Python 3.12), then compares the traces and
reports: terminal table, JSON, HTML, plus a separately reported preprocessing-parity section (OpenPI's vs LeRobot's
resize on the observation's own images, prompt texts, token ids, discretised state bins), which never decides
pass/fail.

`--torch-stack` names come from the registry (pibridge.parity.stacks: StackSpec.torch_side): "ours" (the torch
stack), "lerobot" (the real LeRobot; its precheck finds the LeRobot interpreter), "transformers" (transformers' own
model). A stack's precheck (named there by string) runs before any capture.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pibridge.errors import ParityFailure, PibridgeError
from pibridge.parity.compare import Comparison, Rule, compare, load_rules
from pibridge.parity.trace import Trace, read_trace

CAPTURE_COMMAND = ("-m", "pibridge.cli", "parity", "capture")  # `python -m pibridge.cli parity capture` per side
BLOG_RESIZE = "blog (480x640 camera): cosine 0.99953, max-abs 116"


# ------------------------------------------------------------------------------------ preprocessing parity
@dataclass(frozen=True)
class PreCheck:
    check: str
    ok: bool | None  # None: informational (resize differences are expected)
    detail: str


@dataclass(frozen=True)
class PreprocessingParity:
    checks: list[PreCheck] = field(default_factory=list)

    def rows(self) -> list[list[str]]:
        return [[c.check, {True: "equal", False: "DIFFERENT", None: "measured"}[c.ok], c.detail] for c in self.checks]


def preprocessing_parity(a: dict, b: dict) -> PreprocessingParity:
    """From the traces' meta["preprocessing"] records (OpenPI side a, LeRobot side b)."""
    pa, pb = a.get("preprocessing") or {}, b.get("preprocessing") or {}
    checks = []
    for slot, r in (pb.get("resize") or {}).items():
        checks.append(PreCheck(f"resize {slot} {r['shape'][0]}x{r['shape'][1]} -> 224x224", None,
                               f"OpenPI PIL vs LeRobot torch, 0-255 scale: cosine {r['cosine']:.5f}, "
                               f"max-abs {r['max_abs']:.1f}, mean-abs {r['mean_abs']:.3f} ({BLOG_RESIZE})"))
    for key, label in (("prompt_texts", "prompt text"), ("tokens", "token ids"), ("state_bins", "state bins")):
        xa, xb = pa.get(key), pb.get(key)
        if not xa or not xb:
            continue
        diff = [i for i, (u, v) in enumerate(zip(xa, xb)) if u != v]
        detail = f"{len(xa) - len(diff)}/{len(xa)} samples equal"
        if diff and key == "state_bins" and xa[diff[0]] and xb[diff[0]]:
            n = sum(u != v for u, v in zip(xa[diff[0]], xb[diff[0]]))
            detail += f"; sample {diff[0]}: {n} bins differ ({xa[diff[0]]} vs {xb[diff[0]]})"
        elif diff:
            detail += f"; sample {diff[0]}: {str(xa[diff[0]])[:80]!r} vs {str(xb[diff[0]])[:80]!r}"
        checks.append(PreCheck(label, not diff and len(xa) == len(xb), detail))
    return PreprocessingParity(checks)


# ------------------------------------------------------------------------------------------- compare
def _rules(tolerances: Path | None) -> list[Rule]:
    return load_rules(Path(tolerances)) if tolerances else load_rules()


def _timing_notes(a: Trace, b: Trace) -> list[str]:
    notes = []
    for label, t in (("A", a), ("B", b)):
        m = t.meta
        tm = m.get("timings", {})
        pk = ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items())
        fixes = m.get("fixes_applied") or {}
        notes.append(f"{label}: {m.get('stack')} stack, {m.get('precision')}, profile {m.get('profile')}, "
                     f"checkpoint {str((m.get('checkpoint') or {}).get('fingerprint'))[:23]}, "
                     f"observation {(m.get('observation') or {}).get('fingerprint')}; model {tm.get('sample_s')} s, "
                     f"capture {tm.get('capture_s')} s, peak RSS {tm.get('peak_rss_mb')} MB; "
                     f"fixes {fixes or 'none'}; {pk}" + (f"; {m['lerobot_tiny_patch']}" if m.get("lerobot_tiny_patch")
                                                        else ""))
    fa = (a.meta.get("checkpoint") or {}).get("fingerprint")
    fb = (b.meta.get("checkpoint") or {}).get("fingerprint")
    if fa and fb and fa != fb:
        notes.append(f"WARNING: checkpoint fingerprints differ ({fa} vs {fb}): not the same weights")
    oa, ob = ((t.meta.get("observation") or {}).get("fingerprint") for t in (a, b))
    if oa and ob and oa != ob:
        notes.append(f"WARNING: observation fingerprints differ ({oa} vs {ob})")
    return notes


def _console():
    from rich.console import Console

    probe = Console()
    return probe if probe.is_terminal else Console(width=200)  # logs and CI: keep the table's columns readable


VIEWS = ("full", "summary", "only-failing")


def _actions(t: Trace):
    from pibridge.parity import stages as st

    s = t.stages.get(st.ACTIONS_UNNORMALIZED) or t.stages.get(st.ACTIONS)
    return None if s is None else s.value


def report(c: Comparison, a: Trace, b: Trace, *, title: str, json_out: Path | None, html_out: Path | None,
           pre: PreprocessingParity | None = None, console=None, notes: list[str] = (), view: str = "full") -> None:
    """Terminal (view: full table, summary = the verdict only, only-failing rows), JSON and HTML, all from the same
    comparison and verdict."""
    from rich.table import Table

    from pibridge.parity.report import comparison_json, comparison_table, summary_lines
    from pibridge.parity.report_html import comparison_html, fused_note
    from pibridge.parity.verdict import trace_conditions, verdict

    console = console or _console()
    label_a, label_b = (f"{t.meta.get('stack')} ({t.meta.get('precision')})" for t in (a, b))
    fixes, shared = trace_conditions(a, b)
    v = verdict(c, fixes=fixes, shared=shared, precision=c.precision,
                mixed_precision=a.meta.get("precision") != b.meta.get("precision"))
    notes = list(notes) + _timing_notes(a, b) + [n for n in [fused_note(c.results, label_a, label_b)] if n]
    width = console.width if console.is_terminal else None
    if view == "full" or (view == "only-failing" and not c.passed):
        console.print(comparison_table(c, title=title, width=width, only_failing=view == "only-failing"))
    if pre is not None and pre.checks and view == "full":
        t = Table(title="preprocessing parity (reported separately, not part of pass/fail)", header_style="bold")
        for col in ("check", "result", "detail"):
            t.add_column(col, overflow="fold")
        for row in pre.rows():
            t.add_row(*row)
        console.print(t)
    for line in (notes if view == "full" else []) + summary_lines(c) + v.lines()[1:]:
        console.print(line, highlight=False, soft_wrap=width is None)
    extra = {"notes": notes, "preprocessing": [asdict(x) for x in pre.checks] if pre else [], "verdict": v.to_dict()}
    if json_out:
        Path(json_out).write_text(comparison_json(c, **extra))
        console.print(f"JSON report: {json_out}")
    if html_out:
        tables = [("preprocessing parity (reported separately)", ["check", "result", "detail"], pre.rows())] \
            if pre and pre.checks else []
        Path(html_out).write_text(comparison_html(c, title=title, label_a=label_a, label_b=label_b, notes=notes,
                                                  tables=tables, verdict=v, actions=(_actions(a), _actions(b))))
        console.print(f"HTML report: {Path(html_out).resolve()}")


def compare_command(a: Path, b: Path, *, tolerances: Path | None = None, json_out: Path | None = None,
                    html_out: Path | None = None, console=None, view: str = "full") -> Comparison:
    """`pibridge parity compare A B`: ParityFailure (exit 1) when a stage breaks its tolerance."""
    ta, tb = read_trace(a), read_trace(b)
    c = compare(ta, tb, _rules(tolerances))
    report(c, ta, tb, title=f"parity {Path(a).name} vs {Path(b).name}", json_out=json_out, html_out=html_out,
           pre=preprocessing_parity(ta.meta, tb.meta), console=console, view=view)
    _raise_on_failure(c)
    return c


def _raise_on_failure(c: Comparison) -> None:
    first = c.first_diverging
    if first is not None:
        raise ParityFailure(f"parity failed: first diverging stage {first.name} ({first.status})",
                            "every compared stage within its tolerance",
                            "read the report; the first diverging stage names where the stacks part")


# ------------------------------------------------------------------------------------------------ run
@dataclass(frozen=True)
class RunRequest:
    openpi: Path
    lerobot: Path
    obs: Path | None = None
    torch_stack: str = "ours"
    precision: str = "float32"
    shared_preprocessing: bool = False
    resize: str = "openpi"
    fixes: bool = True
    steps: int = 10
    tokenizer: Path | None = None
    tolerances: Path | None = None
    jax_python: str = sys.executable
    torch_python: str | None = None  # None: this interpreter (the lerobot stack's precheck finds its own)
    html: Path | None = None
    json: Path | None = None
    workdir: Path | None = None
    view: str = "full"  # terminal: full | summary | only-failing (report())
    keep_temp: bool = False


@dataclass(frozen=True)
class RunResult:
    comparison: Comparison
    preprocessing: PreprocessingParity
    jax_trace: Path
    torch_trace: Path
    seconds: dict[str, float]


def capture_argv(python: str, stack: str, obs: Path, out: Path, **opts) -> list[str]:
    """The subprocess command line of one capture; opts with None / False values are left out."""
    argv = [python, *CAPTURE_COMMAND, "--stack", stack, "--obs", str(obs), "--out", str(out)]
    for key, value in opts.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value not in (None, False):
            argv += [flag, str(value)]
    return argv


def _run_capture(argv: list[str], side: str, console) -> float:
    console.print(f"[dim]$ {' '.join(argv)}[/]", highlight=False)
    t0 = time.perf_counter()
    proc = _with_progress(argv, console) if console.is_terminal else subprocess.run(argv, capture_output=True, text=True)
    own = (proc.stderr or "").partition("pibridge: error: ")[2].strip()
    if proc.returncode == 2 and own:  # the capture refused with its own message (bad input, a missing extra)
        raise PibridgeError(f"the {side} capture ({argv[0]}) stopped:\n  " + own.replace("\n", "\n  "), "",
                            "fix that, or run the printed command alone")
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-12:])
        raise PibridgeError(f"the {side} capture failed (exit {proc.returncode}):\n{tail}",
                            f"a trace from the {side} stack", "run the printed command alone to see the whole error")
    console.print(proc.stdout.strip(), highlight=False)
    return time.perf_counter() - t0


def comparison_note(req: RunRequest) -> str:
    """Which question this run answers (printed and recorded in the report's notes)."""
    if req.shared_preprocessing:
        return ("comparison: shared preprocessing (both models get OpenPI's preprocessed tensors): answers 'is the "
                "conversion right?' -- every model stage is free of preprocessing differences")
    other = "LeRobot's own processors" if req.torch_stack == "lerobot" else f"LeRobot-style preprocessing (resize {req.resize})"
    return (f"comparison: each stack's own preprocessing (OpenPI's vs {other}): answers 'does the deployed policy act "
            "like OpenPI?'; resize differences show from img/embed on. To check the conversion alone, run again with "
            "--shared-preprocessing")


def _with_progress(argv: list[str], console) -> subprocess.CompletedProcess:
    """Run a capture, showing its progress lines (pibridge.parity.progress) as one status line on this terminal."""
    from pibridge.parity.progress import ENV, PREFIX

    with tempfile.TemporaryFile("w+") as out, console.status(f"{argv[argv.index('--stack') + 1]}: starting") as status:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, text=True, env={**os.environ, ENV: "1"})
        err = []
        for line in proc.stderr:
            if line.startswith(PREFIX):
                status.update(line[len(PREFIX):].strip())
            else:
                err.append(line)
        rc = proc.wait()
        out.seek(0)
        return subprocess.CompletedProcess(argv, rc, out.read(), "".join(err))


def preflight(req: RunRequest) -> str | None:
    """What can be checked before any capture: report paths writable, OUT's recorded source vs the checkpoint
    given (norm-stats asset hash; params fingerprint where the checkpoint records one, i.e. `pibridge synth`),
    the observation vs OUT's profile. Returns OUT's params fingerprint when it must still be compared with the
    JAX capture's (a real checkpoint: its fingerprint needs every leaf read)."""
    from pibridge.provenance import load_provenance
    from pibridge.convert.reader import open_checkpoint

    for flag, path in (("--html", req.html), ("--json", req.json)):
        if path is not None:
            _writable_file(Path(path), flag)
    if req.workdir is not None:
        _writable_dir(Path(req.workdir))
    rec = load_provenance(req.lerobot)
    ck = open_checkpoint(req.openpi)
    _same_asset(rec, ck, req)
    recorded = (rec.get("source") or {}).get("fingerprint")
    synth = (ck.synth_record or {}).get("fingerprint")
    if recorded and synth:
        _same_params(recorded, synth, req)
    if req.obs is not None:
        from pibridge.parity.capture import check_observation_fits

        check_observation_fits(Path(req.obs), rec, Path(req.lerobot))
    return recorded if recorded and not synth else None


def _writable_file(path: Path, flag: str) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise PibridgeError(f"{flag} {path} is a directory", "a file path for the report", f"pass {flag} DIR/report")
    if not parent.is_dir():
        raise PibridgeError(f"{flag} {path}: directory {parent} does not exist", "an existing, writable directory",
                            f"create it (mkdir -p {parent}) or pass another {flag} path")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PibridgeError(f"{flag} {path} is not writable", "a path this user can write",
                            f"pass another {flag} path")


def _writable_dir(path: Path) -> None:
    base = path
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
        raise PibridgeError(f"--workdir {path}: {base} is not a writable directory", "a writable directory",
                            "pass another --workdir, or leave it out (a new temporary directory)")


def _same_asset(rec: dict, ck, req: RunRequest) -> None:
    from pibridge.convert.assets import norm_stats_hash

    asset = (rec.get("source") or {}).get("asset")
    if not asset:
        return  # converted before pibridge recorded it
    path = ck.root / "assets" / asset["id"] / "norm_stats.json"
    found = norm_stats_hash(path) if path.is_file() else "absent"
    if found != asset["norm_stats_sha256"]:
        raise PibridgeError(
            f"{req.lerobot} was converted with the norm stats of asset {asset['id']!r} ({asset['norm_stats_sha256'][:19]}"
            f"...), but {path} is {found[:19] + '...' if found != 'absent' else 'absent'}",
            "the checkpoint OUT was converted from (pibridge.json `source`)",
            f"pass --openpi {rec['source'].get('path')}, or re-convert OUT from {req.openpi}")


def _same_params(recorded: str, found: str | None, req: RunRequest) -> None:
    if found and found != recorded:
        raise PibridgeError(f"the checkpoint {req.openpi} has params fingerprint {found[:23]}..., but {req.lerobot} was "
                            f"converted from params {recorded[:23]}...",
                            "the checkpoint OUT was converted from (pibridge.json `source`)",
                            f"pass the checkpoint OUT came from, or re-convert OUT from {req.openpi}")


def run(req: RunRequest, console=None) -> RunResult:
    """Capture both stacks in subprocesses, compare, report; ParityFailure when a model stage diverges. Everything
    checkable runs first (preflight); a failed run removes its temporary directory unless keep_temp."""
    from dataclasses import replace

    from pibridge.vocab import precision_token

    from pibridge.parity.stacks import resolve, torch_sides

    console = console or _console()
    req = replace(req, precision=precision_token(req.precision))  # bfloat16 / bf16 -> the policy token
    sides = torch_sides()
    if req.torch_stack not in sides:
        raise PibridgeError(f"--torch-stack {req.torch_stack}", f"one of {', '.join(sides)}",
                            "pass --torch-stack ours")
    rules = _rules(req.tolerances)  # fail early on a bad tolerance file
    recorded_fp = preflight(req)
    spec = sides[req.torch_stack]
    # before the JAX capture: what the torch side's stack checks itself (lerobot: a precision it can honour, and
    # its environment's interpreter, which it returns)
    found = resolve(spec.precheck)(req) if spec.precheck else None
    torch_python = found or req.torch_python or sys.executable
    note = comparison_note(req)
    console.print(note, highlight=False)
    own = req.workdir is None
    work = Path(req.workdir or tempfile.mkdtemp(prefix="pibridge-parity-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run_in(req, work, rules, recorded_fp, torch_python, note, console)
    except BaseException:
        if own and not req.keep_temp:
            shutil.rmtree(work, ignore_errors=True)
            console.print(f"removed the temporaries of this run ({work}); --keep-temp keeps them", highlight=False)
        else:
            console.print(f"temporaries of this run kept in {work}", highlight=False)
        raise


def _run_in(req: RunRequest, work: Path, rules: list[Rule], recorded_fp: str | None, torch_python: str, note: str,
            console) -> RunResult:
    from pibridge.parity.capture import obs_command
    from pibridge.parity.lerobot_preprocess import default_tokenizer_path
    from pibridge.parity.stacks import torch_sides

    obs = req.obs
    if obs is None:
        obs = work / "obs.safetensors"
        obs_command(obs, profile=str(req.lerobot))
    tok = req.tokenizer or default_tokenizer_path(req.lerobot)
    inputs = work / "inputs.safetensors" if req.shared_preprocessing else None
    jt, tt = work / "jax.trace.safetensors", work / f"{req.torch_stack}.trace.safetensors"
    common = {"precision": req.precision, "steps": req.steps, "tokenizer": tok}
    sec = {"jax": _run_capture(capture_argv(req.jax_python, "jax", obs, jt, openpi=req.openpi, profile=req.lerobot,
                                            save_inputs=inputs, **common), "jax", console)}
    if recorded_fp:  # a real checkpoint's fingerprint is known only once the JAX capture has read its leaves
        _same_params(recorded_fp, (read_trace(jt).meta.get("checkpoint") or {}).get("fingerprint"), req)
    sec["torch"] = _run_capture(capture_argv(torch_python, torch_sides()[req.torch_stack].name, obs, tt,
                                             lerobot=req.lerobot, shared_inputs=inputs, resize=req.resize,
                                             no_fixes=not req.fixes, **common), req.torch_stack, console)
    ta, tb = read_trace(jt), read_trace(tt)
    c = compare(ta, tb, rules)
    pre = preprocessing_parity(ta.meta, tb.meta)
    mode = "shared preprocessing" if req.shared_preprocessing else \
        "LeRobot's own processors" if req.torch_stack == "lerobot" else f"torch side resize {req.resize}"
    report(c, ta, tb, title=f"pibridge parity: OpenPI JAX vs {req.torch_stack} torch, {mode}", json_out=req.json,
           html_out=req.html, pre=pre, console=console, notes=[note], view=req.view)
    console.print(f"traces: {jt}, {tt}; capture wall time jax {sec['jax']:.1f} s, torch {sec['torch']:.1f} s",
                  highlight=False)
    _raise_on_failure(c)
    return RunResult(c, pre, jt, tt, sec)
