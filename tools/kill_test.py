"""Kill `pibridge convert` at random instants; no partial or damaged output may ever survive.

Each run converts a tiny-pi05 checkpoint (OUT ~200 MB, so the tensor bytes take a good share of a run) either
plain into a fresh OUT, plain into an existing empty directory (runs 12-23 of every 24: a valid OUT without
--force, replaced by one rename), or with --force over an existing valid OUT (a bfloat16 conversion, so the old
and the new OUT differ in every weight byte). At a random instant (a random time, a random fill level of the
temporary model.safetensors, or a random delay after the weights are complete) the process is frozen with
SIGSTOP; the files beside OUT then tell which phase it was in (no test hooks in the product); then it gets
SIGKILL, or SIGINT + SIGCONT, and is reaped. Checks after each kill:
  * OUT is absent (plain run), still the empty directory (empty run) or byte-identical to a complete reference conversion: the new one, or for
    --force the previous OUT; a --force OUT missing after a SIGKILL between the two renames must come back
    with `recover_stale` (what every run does first);
  * SIGINT: exit 130, one `pibridge: interrupted` line on stderr, no traceback, no temporary left (after the
    success line, in the interpreter's own exit, Python's default applies: killed by SIGINT, shell status 130);
  * a second, unkilled convert removes every leftover and writes the reference bytes.
Usage: python tools/kill_test.py [--runs 30] [--seed 0] [--report bench/results/kill_test.md] [--json F]
Exit 1 when any run fails a check.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAMERA_MAP = "base_0_rgb=top,left_wrist_0_rgb=wrist"
WEIGHTS = "model.safetensors"
LAST_FILE = "pibridge.json"  # convert writes it last, just before the commit
PHASES = ("startup", "tmp created", "reading + writing tensors", "writing metadata files", "committing",
          "force swap (between renames)", "cleanup (deleting old OUT)", "after commit", "finished")
TRIGGERS = ("bytes", "time", "end")


@dataclass(frozen=True)
class Refs:
    ckpt: Path
    new: dict[str, str]  # relative path -> sha256 of the reference conversion (float32)
    old: dict[str, str]  # the previous OUT of --force runs (bfloat16 weights)
    old_dir: Path
    weights_size: int  # final size of the new model.safetensors
    seconds: float  # wall time of one unkilled convert
    ready_seconds: float  # until the CLI runs its command (its signal handlers are installed)


@dataclass(frozen=True)
class Snapshot:
    exited: bool
    out_exists: bool
    out_inode: int | None
    tmp: bool
    tmp_weights: int | None  # bytes of the temporary model.safetensors so far (None: not created yet)
    tmp_last_file: bool
    old: bool


@dataclass(frozen=True)
class RunResult:
    index: int
    mode: str  # "plain" | "force"
    signal: str
    trigger: str  # "time" | "bytes" | "end" (see freeze_at)
    phase: str
    weights_fraction: float | None
    rc: int
    after_kill: str  # absent | new | old | old only beside OUT | damaged
    after_recovery: str
    leftovers: int  # siblings left beside OUT after the kill
    problems: tuple[str, ...]

    @property
    def damaged(self) -> bool:
        lost = self.mode == "force" and self.after_recovery == "absent"  # the previous OUT must never vanish
        return lost or "damaged" in (self.after_kill, self.after_recovery)


def convert_cmd(ckpt: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pibridge.cli", "convert", str(ckpt), str(out), "--profile", "pi05_droid",
            "--allow-tiny", "--camera-map", CAMERA_MAP, *extra]


def digest(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def setup(work: Path) -> Refs:
    """Synthetic checkpoint, the new reference OUT and the old OUT (bf16) for --force runs."""
    ck = work / "ck"
    _run([sys.executable, "-m", "pibridge.cli", "synth", str(ck), "--variant", "tiny-pi05", "--profile", "pi05_droid",
          "--asset-id", "droid"])
    t0 = time.perf_counter()
    proc = subprocess.Popen(convert_cmd(ck, work / "ref-new"), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_ready(proc)
    ready = time.perf_counter() - t0
    if proc.wait() != 0:
        raise RuntimeError("reference conversion failed")
    seconds = time.perf_counter() - t0
    _run(convert_cmd(ck, work / "ref-old", "--weights-dtype", "bfloat16"))
    _check_loads(work / "ref-new")
    return Refs(ck, digest(work / "ref-new"), digest(work / "ref-old"), work / "ref-old",
                (work / "ref-new" / WEIGHTS).stat().st_size, seconds, ready)


def wait_ready(proc: subprocess.Popen) -> None:
    """Until the CLI's command runs: its lazy import of tensorstore shows in /proc/PID/maps. Before that, in the
    interpreter's own imports (~0.1 s), Ctrl-C is Python's default KeyboardInterrupt (no file touched yet)."""
    while proc.poll() is None:
        try:
            if "tensorstore" in Path(f"/proc/{proc.pid}/maps").read_text():
                return
        except OSError:
            return
        time.sleep(0.002)


def _check_loads(out: Path) -> None:
    """The reference itself loads with the safetensors library and holds every tensor pibridge.json lists."""
    from safetensors import safe_open

    with safe_open(out / WEIGHTS, "np") as f:
        keys = set(f.keys())
        for k in keys:
            f.get_tensor(k)
    expected = json.loads((out / LAST_FILE).read_text())["tensors"]
    if expected != len(keys):
        raise RuntimeError(f"reference has {len(keys)} tensors, pibridge.json says {expected}")


def _siblings(out: Path, kind: str) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.pibridge-{kind}-*"))


def snapshot(proc: subprocess.Popen, out: Path) -> Snapshot:
    tmps = _siblings(out, "tmp")
    weights = tmps[0] / WEIGHTS if tmps else None
    size = weights.stat().st_size if weights is not None and weights.exists() else None
    return Snapshot(exited=proc.poll() is not None, out_exists=out.exists(),
                    out_inode=out.stat().st_ino if out.exists() else None, tmp=bool(tmps), tmp_weights=size,
                    tmp_last_file=bool(tmps) and (tmps[0] / LAST_FILE).exists(), old=bool(_siblings(out, "old")))


def classify(s: Snapshot, final_size: int, inode_before: int | None) -> str:
    if s.exited:
        return "finished"
    if s.old:
        return "cleanup (deleting old OUT)" if s.out_exists else "force swap (between renames)"
    if s.tmp:
        if s.tmp_weights is None:
            return "tmp created"
        if s.tmp_weights < final_size:
            return "reading + writing tensors"
        return "committing" if s.tmp_last_file else "writing metadata files"
    if s.out_exists and s.out_inode != inode_before:
        return "after commit"
    return "startup"


def _stopped(pid: int) -> bool:
    """Every thread stopped (a writer thread inside write(2) stops only when the call returns)."""
    try:
        states = [(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in Path(f"/proc/{pid}/task").iterdir()]
    except (OSError, IndexError):
        return True  # gone
    return all(st in ("T", "t", "Z", "X") for st in states)


def freeze_at(proc: subprocess.Popen, out: Path, trigger: str, target: float, final_size: int,
              after_ready: bool = False, inode_before: int | None = None) -> None:
    """Wait for the chosen instant, then SIGSTOP until the whole process is stopped. Triggers: "time" (`target` s
    after the start, or after the CLI is ready), "bytes" (the temporary model.safetensors holds `target` of its
    final size), "end" (`target` s after the weights are complete: metadata files, commit, --force swap)."""
    if after_ready:
        wait_ready(proc)
    t0 = time.perf_counter()
    while proc.poll() is None and time.perf_counter() - t0 < 60:
        if trigger == "time" and time.perf_counter() - t0 >= target:
            break
        if trigger == "bytes" and _weights_size(out) >= target * final_size:
            break
        if trigger == "end" and _weights_done(out, final_size, inode_before):
            time.sleep(target)
            break
        time.sleep(0.001)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGSTOP)
        deadline = time.perf_counter() + 5
        while not _stopped(proc.pid) and time.perf_counter() < deadline:
            time.sleep(0.0005)


def _weights_size(out: Path) -> int:
    for tmp in _siblings(out, "tmp"):
        try:
            return (tmp / WEIGHTS).stat().st_size
        except FileNotFoundError:
            pass
    return -1


def _weights_done(out: Path, final_size: int, inode_before: int | None) -> bool:
    try:
        moved = out.exists() and out.stat().st_ino != inode_before
    except FileNotFoundError:
        moved = False
    return _weights_size(out) >= final_size or bool(_siblings(out, "old")) or moved


def state_of(out: Path, refs: Refs) -> str:
    if not out.exists():
        return "absent"
    if out.is_dir() and not any(out.iterdir()):
        return "empty"
    d = digest(out)
    return "new" if d == refs.new else "old" if d == refs.old else "damaged"


def one_run(i: int, work: Path, refs: Refs, rng: random.Random, seconds: float) -> tuple[RunResult, float]:
    """One killed conversion and its checks; also returns the wall time of the unkilled re-run. `seconds`: the
    current estimate of one convert (the machine is shared: its load moves it)."""
    mode = ("plain", "force")[i % 2]
    mode = "empty" if mode == "plain" and (i // 12) % 2 else mode
    sig = (signal.SIGINT, signal.SIGKILL)[(i // 2) % 2]
    trigger = TRIGGERS[(i // 4) % len(TRIGGERS)]
    span = seconds - (refs.ready_seconds if sig == signal.SIGINT else 0.0)  # SIGINT: after the CLI is ready
    target = {"bytes": rng.uniform(0.02, 0.98), "time": rng.uniform(0.0, span * 1.05),
              "end": rng.uniform(0.0, 0.2 * seconds)}[trigger]
    parent = work / f"run-{i:03d}"
    parent.mkdir()
    out = parent / "out"
    if mode == "force":  # hard links: convert must never write into OUT; any change shows in the digests
        shutil.copytree(refs.old_dir, out, copy_function=os.link)
    elif mode == "empty":
        out.mkdir()
    inode_before = out.stat().st_ino if out.exists() else None
    problems: list[str] = []
    proc = subprocess.Popen(convert_cmd(refs.ckpt, out, *(["--force"] if mode == "force" else [])), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    freeze_at(proc, out, trigger, target, refs.weights_size, after_ready=sig == signal.SIGINT,
              inode_before=inode_before)
    snap = snapshot(proc, out)
    phase = classify(snap, refs.weights_size, inode_before)
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        if sig == signal.SIGINT:
            os.kill(proc.pid, signal.SIGCONT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        problems.append("hung after the signal")
    rc = proc.returncode
    problems += _check_exit(sig, phase, rc, err, out)
    after_kill = state_of(out, refs)
    olds = _siblings(out, "old")
    if after_kill == "absent" and mode == "force" and olds and digest(olds[0]) == refs.old:
        after_kill = "old only beside OUT"
    leftovers = len(list(parent.iterdir())) - out.exists()
    problems += _check_after_kill(mode, rc, after_kill)
    after_recovery = _recover(out, refs, after_kill)
    if after_recovery not in {"force": ("new", "old"), "empty": ("new", "empty")}.get(mode, ("new", "absent")):
        problems.append(f"after recover_stale OUT is {after_recovery}")
    rerun_problems, rerun_seconds = _rerun(out, refs)
    problems += rerun_problems
    shutil.rmtree(parent)
    frac = None if snap.tmp_weights is None else round(snap.tmp_weights / refs.weights_size, 3)
    return RunResult(i, mode, sig.name, trigger, phase, frac, rc, after_kill, after_recovery, leftovers,
                     tuple(problems)), rerun_seconds


def _check_exit(sig: signal.Signals, phase: str, rc: int, err: str, out: Path) -> list[str]:
    if phase == "finished":
        return [] if rc == 0 else [f"finished run exited {rc}"]
    if sig == signal.SIGKILL:
        return [] if rc == -signal.SIGKILL else [f"SIGKILL gave rc {rc}"]
    problems = []
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if phase == "after commit" and rc == -signal.SIGINT and "wrote" in err and "Traceback" not in err:
        return []  # Ctrl-C in the interpreter's exit, after the success line: Python's default, shell status 130
    if phase == "after commit" and rc == 0 and "wrote" in err and "Traceback" not in err:
        return []  # Ctrl-C after the command returned, during finalization (no Python handler runs): nothing stopped
    if rc != 130:
        problems.append(f"SIGINT gave rc {rc}")
    if "Traceback" in err:
        problems.append("traceback on SIGINT")
    if not lines or not lines[-1].startswith("pibridge: interrupted"):
        problems.append(f"no one-line interrupt message: {lines[-1:]}")
    if _siblings(out, "tmp") or _siblings(out, "old"):
        problems.append("SIGINT left a temporary beside OUT")
    return problems


def _check_after_kill(mode: str, rc: int, after_kill: str) -> list[str]:
    allowed = {"force": ("new", "old", "old only beside OUT"), "empty": ("empty", "new")}.get(mode, ("absent", "new"))
    problems = [] if after_kill in allowed else [f"OUT is {after_kill} after the kill ({mode})"]
    if rc == 0 and after_kill != "new":
        problems.append(f"exit 0 but OUT is {after_kill}")
    return problems


def _recover(out: Path, refs: Refs, before: str) -> str:
    """What every run does first (pibridge.convert.atomic.recover_stale), then the state of OUT."""
    from pibridge.convert.atomic import recover_stale

    actions = recover_stale(out)
    return state_of(out, refs) if actions or before == "old only beside OUT" else before


def _rerun(out: Path, refs: Refs) -> tuple[list[str], float]:
    t0 = time.perf_counter()
    needs_force = out.exists() and any(out.iterdir())  # an empty directory is a valid OUT without --force
    proc = subprocess.run(convert_cmd(refs.ckpt, out, *(["--force"] if needs_force else [])), cwd=ROOT,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    problems = [] if proc.returncode == 0 else [f"re-run failed ({proc.returncode}): {proc.stderr.strip()[-300:]}"]
    left = sorted(p.name for p in out.parent.iterdir() if p != out)
    if left:
        problems.append(f"re-run left {left}")
    if state_of(out, refs) != "new":
        problems.append("re-run did not write the reference bytes")
    return problems, seconds


def run_kill_test(runs: int, seed: int = 0, work: Path | None = None, log=None,
                  refs: Refs | None = None) -> tuple[Refs, list[RunResult]]:
    """`runs` killed conversions in `work` (default: a temporary directory, removed afterwards); `refs` from
    `setup(work)` when the caller made them already."""
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="pibridge-kill-")) if own else Path(work)
    try:
        refs = refs or setup(work)
        rng = random.Random(seed)
        results, durations = [], [refs.seconds]
        for i in range(runs):
            result, took = one_run(i, work, refs, rng, statistics.median(durations))
            results.append(result)
            durations.append(took)
            if log:
                r = results[-1]
                log(f"run {i:3d} {r.mode:5s} {r.signal:7s} {r.trigger:5s} {r.phase:28s} rc={r.rc:4d} "
                    f"after={r.after_kill:20s} {'; '.join(r.problems) or 'ok'}")
        return refs, results
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def report_markdown(refs: Refs, results: list[RunResult], seed: int, seconds: float) -> str:
    sigs = sorted({r.signal for r in results})
    by_phase = Counter((r.phase, r.signal) for r in results)
    lines = ["# Kill test: `pibridge convert` killed at random instants", "",
             f"`python tools/kill_test.py --runs {len(results)} --seed {seed}` ({seconds:.0f} s). "
             "tiny-pi05 checkpoint, "
             f"OUT {refs.weights_size / 1e6:.0f} MB of weights, one unkilled convert {refs.seconds:.2f} s "
             f"(CLI ready after {refs.ready_seconds:.2f} s). "
             "Plain runs write a fresh OUT, empty runs into an existing empty directory (no --force); --force runs "
             "replace a valid bfloat16 OUT. Each run is frozen "
             "(SIGSTOP) at a random time, a random fill level of the temporary model.safetensors, or up to 0.2 x that "
             "after the weights are complete (trigger `end`: metadata files, commit, swap), its phase is "
             "read from the files beside OUT, then it gets SIGKILL or SIGINT. SIGINT runs start their clock once the "
             "CLI runs its command: during the interpreter's own imports before that (~0.1 s, nothing touched yet) "
             "Ctrl-C is Python's default KeyboardInterrupt.", "",
             f"- runs: {len(results)} ({sum(r.mode == 'plain' for r in results)} plain, "
             f"{sum(r.mode == 'empty' for r in results)} into an empty directory, "
             f"{sum(r.mode == 'force' for r in results)} --force); signals: "
             + ", ".join(f"{s} {sum(r.signal == s for r in results)}" for s in sigs),
             f"- damaged or partial OUT found: **{sum(r.damaged for r in results)}**; runs failing any check: "
             f"**{sum(bool(r.problems) for r in results)}**",
             "- OUT after the kill: " + ", ".join(f"{k} {v}" for k, v in Counter(r.after_kill for r in results).items())
             + " (old only beside OUT: SIGKILL between the two renames, put back by the next run)",
             "- SIGINT exit codes: " + ", ".join(f"{k} x{v}" for k, v in
                                                 Counter(r.rc for r in results if r.signal == "SIGINT").items())
             + " (0: finished before the signal; -2: landed in the interpreter's exit after the success line, "
               "Python's default, shell status 130)",
             f"- machine load average at the end: {os.getloadavg()[0]:.1f} (shared 2-core machine)",
             "", "| phase when killed | " + " | ".join(sigs) + " | total |", "|---|" + "---|" * (len(sigs) + 1)]
    for ph in PHASES:
        row = [by_phase[(ph, s)] for s in sigs]
        if sum(row):
            lines.append(f"| {ph} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    lines += ["", "| run | mode | signal | trigger | phase | weights written | rc | OUT after kill | after recovery | "
              "leftovers | result |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        frac = "" if r.weights_fraction is None else f"{100 * r.weights_fraction:.0f}%"
        lines.append(f"| {r.index} | {r.mode} | {r.signal} | {r.trigger} | {r.phase} | {frac} | {r.rc} | "
                     f"{r.after_kill} | {r.after_recovery} | {r.leftovers} | {'; '.join(r.problems) or 'ok'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", type=Path, help="write the Markdown summary here")
    ap.add_argument("--json", type=Path, help="write every run as JSON here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    refs, results = run_kill_test(args.runs, args.seed, log=print)
    seconds = time.perf_counter() - t0
    text = report_markdown(refs, results, args.seed, seconds)
    print(text)
    if args.report:
        args.report.write_text(text)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 1 if any(r.problems for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
