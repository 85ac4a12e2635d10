"""Per-stage comparison of two traces (numpy only).

Metrics over the elements valid in BOTH traces (validity masks broadcast to the stage's shape):
cosine (two all-zero arrays: 1; one zero: 0), max-abs, mean-abs, relative L2 (||b-a|| / ||a||, a = reference),
worst index with both values. A stage passes when max-abs <= rule.max_abs and cosine >= rule.min_cosine for
the first tolerance rule (configs/tolerances.json) whose pattern and precision match. The first stage in
execution order that fails is the first diverging stage.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pibridge.configs import CONFIG_DIR
from pibridge.errors import PibridgeError
from pibridge.parity.stages import Stage
from pibridge.parity.trace import Trace


@dataclass(frozen=True)
class Rule:
    pattern: str
    precision: str  # "float32", "bf16" or "*"
    max_abs: float
    min_cosine: float
    kind: str = "model"  # "model" or "preprocessing"
    why: str = ""  # where the numbers come from (configs/tolerances.json)


@dataclass(frozen=True)
class Metrics:
    cosine: float
    max_abs: float
    mean_abs: float
    rel_l2: float
    worst_index: tuple[int, ...]
    worst_a: float
    worst_b: float
    n_valid: int


@dataclass(frozen=True)
class StageResult:
    name: str
    status: str  # pass | fail | no-rule | skipped | shape-mismatch | nonfinite | empty
    metrics: Metrics | None
    rule: Rule | None
    note: str = ""
    wall_a: float | None = None
    wall_b: float | None = None

    @property
    def failed(self) -> bool:
        return self.status in ("fail", "shape-mismatch", "nonfinite")


class Verdict:
    """The verdict of a comparison with per-stage `results` (execution order), each with `.failed`."""

    results: list

    @property
    def first_diverging(self):
        return next((r for r in self.results if r.failed), None)

    @property
    def passed(self) -> bool:
        return self.first_diverging is None


@dataclass(frozen=True)
class Comparison(Verdict):
    results: list[StageResult]
    precision: str
    only_in_a: list[str]
    only_in_b: list[str]
    unused_rules: list[str]


def rules_from_json(cls, rows: list[dict]) -> list:
    """Dataclass instances from JSON objects; ValueError naming a rule's unknown (e.g. misspelt) fields."""
    fields = set(cls.__dataclass_fields__)
    for i, row in enumerate(rows):
        if unknown := sorted(set(row) - fields):
            raise ValueError(f"rule {i} ({row.get('pattern', '?')}) has unknown fields {unknown}")
    return [cls(**row) for row in rows]


def load_rules(path: Path | None = None) -> list[Rule]:
    path = path or CONFIG_DIR / "tolerances.json"
    try:
        return rules_from_json(Rule, json.loads(Path(path).read_text())["rules"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PibridgeError(f"tolerance file {path} is invalid ({err})",
                            'JSON {"rules": [{"pattern", "precision", "max_abs", "min_cosine", "kind", "why"}, ...]}',
                            "fix the file; pibridge/configs/tolerances.json is the reference") from None


def match_rule(rules: list[Rule], stage: str, precision: str) -> Rule | None:
    return next((r for r in rules if r.precision in ("*", precision) and fnmatch.fnmatchcase(stage, r.pattern)), None)


def stage_metrics(a: Stage, b: Stage) -> Metrics | str:
    """Metrics over the jointly valid elements, or a string saying why none can be computed."""
    if a.value.shape != b.value.shape:
        return f"shape {a.value.shape} vs {b.value.shape}"
    valid = np.ones(a.value.shape, dtype=bool)
    for s in (a, b):
        if s.valid is not None:
            valid &= np.broadcast_to(s.valid, a.value.shape)
    x, y = a.value.astype(np.float64), b.value.astype(np.float64)
    xv, yv = x[valid], y[valid]
    if xv.size == 0:
        return "no valid elements"
    if not (np.isfinite(xv).all() and np.isfinite(yv).all()):
        return "non-finite values among valid elements"
    diff = np.abs(xv - yv)
    nx, ny = np.linalg.norm(xv), np.linalg.norm(yv)
    if nx == 0 and ny == 0:
        cosine = 1.0
    elif nx == 0 or ny == 0:
        cosine = 0.0
    else:
        cosine = float(np.dot(xv, yv) / (nx * ny))
    worst_flat = int(np.argmax(np.where(valid, np.abs(x - y), -1.0)))
    worst = tuple(int(i) for i in np.unravel_index(worst_flat, a.value.shape))
    return Metrics(cosine=cosine, max_abs=float(diff.max()), mean_abs=float(diff.mean()),
                   rel_l2=float(np.linalg.norm(xv - yv) / max(nx, 1e-30)), worst_index=worst,
                   worst_a=float(x[worst]), worst_b=float(y[worst]), n_valid=int(xv.size))


def _judge(name: str, a: Stage, b: Stage, rule: Rule | None, skip_reason: str | None) -> StageResult:
    if skip_reason:
        return StageResult(name, "skipped", None, rule, skip_reason, a.seconds, b.seconds)
    m = stage_metrics(a, b)
    if isinstance(m, str):
        status = "shape-mismatch" if m.startswith("shape") else "nonfinite" if m.startswith("non") else "empty"
        return StageResult(name, status, None, rule, m, a.seconds, b.seconds)
    if rule is None:
        return StageResult(name, "no-rule", m, None, "no tolerance rule matches this stage", a.seconds, b.seconds)
    ok = m.max_abs <= rule.max_abs and m.cosine >= rule.min_cosine
    return StageResult(name, "pass" if ok else "fail", m, rule, "", a.seconds, b.seconds)


def comparison_precision(a: Trace, b: Trace) -> str:
    """The looser of the two traces' precisions: a bf16 run is judged with bf16 tolerances."""
    precisions = {t.meta.get("precision", "float32") for t in (a, b)}
    return "bf16" if "bf16" in precisions else "float32"


def compare(a: Trace, b: Trace, rules: list[Rule] | None = None, precision: str | None = None) -> Comparison:
    rules = load_rules() if rules is None else rules
    precision = precision or comparison_precision(a, b)
    common = [n for n in a.order if n in b.stages]
    if not common:
        raise PibridgeError("the two traces share no stage", "traces captured by pibridge from the same observation",
                            "check that both files are pibridge traces of the same policy")
    skips = {**a.meta.get("not_comparable", {}), **b.meta.get("not_comparable", {})}
    results = [_judge(n, a.stages[n], b.stages[n], match_rule(rules, n, precision), skips.get(n)) for n in common]
    used = {r.rule.pattern for r in results if r.rule}
    unused = [r.pattern for r in rules if r.precision in ("*", precision) and r.pattern not in used
              and not any(fnmatch.fnmatchcase(n, r.pattern) for n in common)]
    return Comparison(results, precision, [n for n in a.order if n not in b.stages],
                      [n for n in b.order if n not in a.stages], unused)
