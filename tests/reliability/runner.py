"""Run one bad-input case through the real CLI (a subprocess) and check everything the issue asks of it.

Checks (each failure is one line in Outcome.problems): exit code; every expected message substring in the output;
exactly one `pibridge: error:` message carrying `expected:` and `what to do:` lines (error exits); no
"Traceback" unless the case runs --debug; nothing written or damaged: every entry of the case directory other
than the one the case may write is byte-identical afterwards (tree sha256), no `.<name>.pibridge-*` temporaries.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from reliability import build as B
from reliability.cases import Case

TIMEOUT_S = 120
ERROR_PREFIX = "pibridge: error: "


@dataclass(frozen=True)
class Outcome:
    case: Case
    command: str  # as a user would type it (relative paths, run in the case directory)
    exit_code: int
    output: str  # stderr then stdout
    message: str  # first line of the error message (or of the output, for accepted cases)
    untouched: bool  # inputs byte-identical, nothing written except the case's expected output, no temporaries
    problems: tuple[str, ...]
    seconds: float
    digest_before: str  # sha256 over the whole case directory (every entry's tree digest), before the command
    digest_after: str


def _snapshot(d: Path) -> dict[str, str]:
    return {p.name: B.tree_digest(p) for p in sorted(d.iterdir())}


def _whole(snapshot: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in sorted(snapshot.items())).encode()).hexdigest()


def _first_message_line(case: Case, stderr: str, stdout: str) -> str:
    for line in stderr.splitlines():
        if line.startswith(ERROR_PREFIX):
            return line[len(ERROR_PREFIX):]
    lines = [l for l in (stderr + "\n" + stdout).splitlines() if l.strip()]
    key = next((m for m in case.messages if any(m in l for l in lines)), None)
    return next((l.strip() for l in lines if key and key in l), lines[0].strip() if lines else "")


def run_case(case: Case, shared: B.Shared, workdir: Path) -> Outcome:
    d = workdir / case.id
    d.mkdir(parents=True)
    case.build(shared, d)
    before = _snapshot(d)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pibridge.cli", *case.args], cwd=d, capture_output=True, text=True,
                          timeout=TIMEOUT_S, env=dict(os.environ, COLUMNS="200", NO_COLOR="1"))
    seconds = time.perf_counter() - t0
    after = _snapshot(d)
    problems = _check(case, proc, before, after, d)
    untouched = not any(p.startswith("nothing written:") for p in problems)
    return Outcome(case, "pibridge " + shlex.join(case.args), proc.returncode, proc.stderr + proc.stdout,
                   _first_message_line(case, proc.stderr, proc.stdout), untouched, tuple(problems), seconds,
                   _whole(before), _whole(after))


def _check(case: Case, proc: subprocess.CompletedProcess, before: dict, after: dict, d: Path) -> list[str]:
    out = proc.stderr + proc.stdout
    problems = []
    if proc.returncode != case.exit_code:
        problems.append(f"exit code {proc.returncode}, expected {case.exit_code}")
    problems += [f"message lacks {m!r}" for m in case.messages if m not in out]
    if ("Traceback" in out) != case.traceback:
        problems.append("traceback printed" if not case.traceback else "no traceback with --debug")
    errors = [l for l in proc.stderr.splitlines() if l.startswith(ERROR_PREFIX)]
    if case.exit_code in (1, 2) and not case.traceback:
        if len(errors) != 1 or "\nexpected: " not in proc.stderr or "\nwhat to do: " not in proc.stderr:
            problems.append(f"not one message with found / expected / what to do ({len(errors)} error lines)")
    elif errors and not (case.traceback and len(errors) == 1):  # --debug: the traceback, then the one message
        problems.append(f"unexpected error message: {errors[0]}")
    problems += _written_problems(case, before, after, d)
    return problems


def _written_problems(case: Case, before: dict, after: dict, d: Path) -> list[str]:
    problems = []
    for name in sorted(set(before) | set(after)):
        if name == case.writes:
            continue
        if before.get(name) != after.get(name):
            what = "created" if name not in before else "removed" if name not in after else "changed"
            problems.append(f"nothing written: {name} {what}")
    if case.writes and case.writes not in after:
        problems.append(f"expected output {case.writes} not written")
    leftovers = sorted({n for p in (d, d / "out", d / "ck" / "out", d / "trace") for n in B.temp_siblings(p)})
    problems += [f"nothing written: temporary {n} left" for n in leftovers]
    return problems


def run_all(cases: tuple[Case, ...], shared: B.Shared, workdir: Path, workers: int = 4) -> dict[str, Outcome]:
    """Every case, `workers` subprocesses at a time (each case has its own directory)."""
    slow_first = sorted(cases, key=lambda c: not c.slow)
    with ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(lambda c: run_case(c, shared, workdir), slow_first))
    return {o.case.id: o for o in outcomes}
