"""The bf16 allowance: judge a candidate trace by how far it is from the exact answer, relative to how far
OpenPI's own bf16 run is (numpy only).

Three traces of the same checkpoint, observation and noise: REF (JAX stack, float32: the exact answer), BASE
(JAX stack, bf16: bit-exact with OpenPI's bf16 inference) and CAND (the candidate, e.g. the torch stack or
LeRobot in bf16). Per stage, over the elements valid in all compared traces' pairs (compare.stage_metrics with
REF as the reference side), two error sizes of BASE and of CAND against REF:
  rel-L2 = ||X - REF|| / ||REF||   and   angle = sqrt(2 (1 - cos(X, REF)))
(the angle is on the rel-L2 scale: an error orthogonal to REF of relative size e gives angle ~ e; 1 - cos
itself is reported too). A stage passes when for both sizes e_cand <= k * e_base + floor, with k and floor
from the first rule of configs/allowance.json whose pattern matches. Why: at full size, bf16 rounding alone
moves OpenPI's own bf16 run as far from float32 as a correct conversion's bf16 run, so fixed thresholds
cannot tell a correct conversion from a broken one; the baseline error sets the scale per stage instead.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pibridge.configs import CONFIG_DIR
from pibridge.errors import PibridgeError
from pibridge.parity.compare import Metrics, Verdict, rules_from_json, stage_metrics
from pibridge.parity.stages import Stage
from pibridge.parity.trace import Trace

ALLOWANCE_FILE = CONFIG_DIR / "allowance.json"


@dataclass(frozen=True)
class AllowanceRule:
    pattern: str
    k: float  # the candidate may be k times as far from REF as BASE is ...
    floor: float  # ... plus this (on the rel-L2 / angle scale), for stages BASE gets (nearly) exact
    why: str = ""


@dataclass(frozen=True)
class ErrorSize:
    rel_l2: float
    angle: float  # sqrt(2 (1 - cosine))
    one_minus_cos: float

    @classmethod
    def of(cls, m: Metrics) -> ErrorSize:
        gap = max(0.0, 1.0 - m.cosine)
        return cls(m.rel_l2, math.sqrt(2.0 * gap), gap)


@dataclass(frozen=True)
class AllowanceResult:
    name: str
    status: str  # pass | fail | no-rule | skipped | shape-mismatch | nonfinite | empty (as compare.StageResult)
    base: Metrics | None  # BASE vs REF
    cand: Metrics | None  # CAND vs REF
    rule: AllowanceRule | None
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("fail", "shape-mismatch", "nonfinite")

    @property
    def errors(self) -> tuple[ErrorSize, ErrorSize] | None:
        return None if self.base is None or self.cand is None else (ErrorSize.of(self.base), ErrorSize.of(self.cand))

    @property
    def ratio(self) -> float | None:
        """The larger of cand / base over the two sizes (None when BASE is exact)."""
        e = self.errors
        if e is None:
            return None
        pairs = [(e[1].rel_l2, e[0].rel_l2), (e[1].angle, e[0].angle)]
        if any(b == 0 for _, b in pairs):
            return None
        return max(c / b for c, b in pairs)

    def limits(self) -> tuple[float, float] | None:
        """The (rel-L2, angle) the candidate may reach."""
        e = self.errors
        if e is None or self.rule is None:
            return None
        k, f = self.rule.k, self.rule.floor
        return k * e[0].rel_l2 + f, k * e[0].angle + f


@dataclass(frozen=True)
class AllowanceComparison(Verdict):
    results: list[AllowanceResult]
    not_in_candidate: list[str]  # REF stages the candidate did not record
    only_in_candidate: list[str]
    unused_rules: list[str]
    labels: dict = field(default_factory=dict)  # {"reference"|"baseline"|"candidate": "stack (precision)"}


def load_allowance(path: Path | None = None) -> list[AllowanceRule]:
    path = Path(path or ALLOWANCE_FILE)
    try:
        raw = json.loads(path.read_text())
        return rules_from_json(AllowanceRule, raw["rules"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PibridgeError(f"allowance file {path} is invalid ({err})",
                            'JSON {"rules": [{"pattern", "k", "floor", "why"}, ...]}',
                            "fix the file; pibridge/configs/allowance.json is the reference") from None


def match_allowance(rules: list[AllowanceRule], stage: str) -> AllowanceRule | None:
    return next((r for r in rules if fnmatch.fnmatchcase(stage, r.pattern)), None)


def stage_errors(ref: Stage, x: Stage) -> tuple[float, float] | str:
    """(rel-L2, angle) of x against ref, or why none can be computed."""
    m = stage_metrics(ref, x)
    if isinstance(m, str):
        return m
    e = ErrorSize.of(m)
    return e.rel_l2, e.angle


TEXT_K = "llm/kv00/k/text"  # derived: the first layer's k on the text rows only


def with_text_k(t: Trace) -> Trace:
    """Add TEXT_K after llm/kv00/k: k of the prefix rows after the image tokens (B, L, K, H). Those rows' inputs
    are the text embeddings, exact up to bf16 rounding on every run, and layer 0's k mixes no tokens, so the
    inherited image error that dominates llm/kv00/k in BASE (OpenPI's bf16 SigLIP) is absent there, and the
    text rows hold the latest positions, where a RoPE phase error (bf16 inv_freq) is largest."""
    k = t.stages.get("llm/kv00/k")
    if k is None or "img/tokens" not in t.stages:
        return t
    n_img = t.stages["img/tokens"].value.shape[1]  # cameras * 256 image tokens come first
    valid = np.ones(k.value.shape, dtype=bool) if k.valid is None else np.broadcast_to(k.valid, k.value.shape)
    text = Stage(TEXT_K, k.value[:, n_img:], valid[:, n_img:], 0.0)
    stages = {}
    for name, s in t.stages.items():
        stages[name] = s
        if name == "llm/kv00/k":
            stages[TEXT_K] = text
    return Trace(stages, t.meta)


def _status_of(note: str) -> str:
    return "shape-mismatch" if note.startswith("shape") else "nonfinite" if note.startswith("non") else "empty"


def judge_stage(name: str, ref: Stage, base: Stage, cand: Stage, rule: AllowanceRule | None,
                skip: str | None = None) -> AllowanceResult:
    if skip:
        return AllowanceResult(name, "skipped", None, None, rule, skip)
    mb, mc = stage_metrics(ref, base), stage_metrics(ref, cand)
    for m, who in ((mc, "candidate"), (mb, "baseline")):
        if isinstance(m, str):
            return AllowanceResult(name, _status_of(m), None if isinstance(mb, str) else mb,
                                   None if isinstance(mc, str) else mc, rule, f"{who}: {m}")
    r = AllowanceResult(name, "no-rule", mb, mc, rule, "" if rule else "no allowance rule matches this stage")
    if rule is None:
        return r
    lim_rel, lim_ang = r.limits()
    cand_err = r.errors[1]
    ok = cand_err.rel_l2 <= lim_rel and cand_err.angle <= lim_ang
    return AllowanceResult(name, "pass" if ok else "fail", mb, mc, rule)


def _fingerprint(t: Trace, key: str) -> str | None:
    value = t.meta.get(key)
    return value if isinstance(value, str) else (value or {}).get("fingerprint")  # str: traces before 2026-11-26


def check_traces(ref: Trace, base: Trace, cand: Trace) -> None:
    """PibridgeError (exit 2) unless REF is float32, BASE bf16, REF and BASE record the same stages of the same
    checkpoint, and all three saw the same observation (fingerprints, where recorded, must all be present)."""
    precisions = (ref.meta.get("precision", "float32"), base.meta.get("precision", "float32"))
    if precisions != ("float32", "bf16"):
        raise PibridgeError(f"reference / baseline precisions are {precisions[0]} / {precisions[1]}",
                            "--reference a float32 trace and --baseline a bf16 trace, both of the jax stack",
                            "capture them with `pibridge parity capture --stack jax --precision float32|bf16`")
    if ref.order != base.order:
        only = sorted(set(ref.order) ^ set(base.order))
        raise PibridgeError(f"reference and baseline record different stages ({only[:4] or 'order differs'})",
                            "two captures of one checkpoint and observation with the same --steps",
                            "capture both again with the same options, only --precision differing")
    obs = {label: _fingerprint(t, "observation") for label, t in (("reference", ref), ("baseline", base),
                                                                  ("candidate", cand))}
    if len(set(obs.values())) > 1:
        raise PibridgeError(f"observation fingerprints differ: {obs}", "three traces of one observation file",
                            "capture all three from the same `pibridge parity obs` file")
    ck = (_fingerprint(ref, "checkpoint"), _fingerprint(base, "checkpoint"))
    if ck[0] != ck[1]:
        raise PibridgeError(f"reference and baseline checkpoints differ ({ck[0]} vs {ck[1]})",
                            "both captured from the same OpenPI checkpoint", "capture them from one checkpoint")
    if not any(n in cand.stages for n in ref.order):
        raise PibridgeError("the candidate shares no stage with the reference",
                            "a pibridge trace of the same policy", "check that the candidate is a pibridge trace")


def compare_allowance(ref: Trace, base: Trace, cand: Trace,
                      rules: list[AllowanceRule] | None = None) -> AllowanceComparison:
    check_traces(ref, base, cand)
    ref, base, cand = (with_text_k(t) for t in (ref, base, cand))
    rules = load_allowance() if rules is None else rules
    common = [n for n in ref.order if n in cand.stages]
    skips = {}
    for t in (ref, base, cand):
        skips.update(t.meta.get("not_comparable", {}))
    results = [judge_stage(n, ref.stages[n], base.stages[n], cand.stages[n], match_allowance(rules, n), skips.get(n))
               for n in common]
    unused = [r.pattern for r in rules if not any(fnmatch.fnmatchcase(n, r.pattern) for n in common)]
    labels = {k: f"{t.meta.get('stack')} ({t.meta.get('precision')})"
              for k, t in (("reference", ref), ("baseline", base), ("candidate", cand))}
    return AllowanceComparison(results, [n for n in ref.order if n not in cand.stages],
                               [n for n in cand.order if n not in ref.stages], unused, labels)


def _notes(ref: Trace, base: Trace, cand: Trace) -> list[str]:
    notes = []
    for label, t in (("reference", ref), ("baseline", base), ("candidate", cand)):
        m = t.meta
        notes.append(f"{label}: {m.get('stack')} stack, {m.get('precision')}, checkpoint "
                     f"{str(_fingerprint(t, 'checkpoint'))[:23]}, observation {_fingerprint(t, 'observation')}, "
                     f"fixes {m.get('fixes_applied') or 'none'}")
    return notes


def allowance_command(cand: Path, reference: Path, baseline: Path, *, allowance: Path | None = None,
                      json_out: Path | None = None, html_out: Path | None = None, console=None,
                      view: str = "full") -> AllowanceComparison:
    """`pibridge parity compare CAND --reference REF --baseline BASE`: ParityFailure (exit 1) when a stage
    exceeds its allowance; PibridgeError (exit 2) on mismatched traces."""
    from pibridge.errors import ParityFailure
    from pibridge.parity.report import allowance_json, allowance_summary_lines, allowance_table
    from pibridge.parity.run import _console
    from pibridge.parity.trace import read_trace

    ref, base, tc = read_trace(reference), read_trace(baseline), read_trace(cand)
    c = compare_allowance(ref, base, tc, load_allowance(allowance))
    from pibridge.parity.report_html import allowance_html
    from pibridge.parity.verdict import verdict

    console = console or _console()
    shared = bool(tc.meta.get("shared_inputs"))
    v = verdict(c, fixes=tc.meta.get("fixes_enabled"), shared=shared, precision="bf16", allowance=True)
    title = f"bf16 allowance {Path(cand).name}"
    if view != "summary":
        console.print(allowance_table(c, title=title, only_failing=view == "only-failing"))
    notes = _notes(ref, base, tc)
    for line in (notes if view == "full" else []) + allowance_summary_lines(c) + v.lines()[1:]:
        console.print(line, highlight=False)
    if json_out:
        Path(json_out).write_text(allowance_json(c, notes=notes, verdict=v.to_dict()))
        console.print(f"JSON report: {json_out}")
    if html_out:
        Path(html_out).write_text(allowance_html(c, title=title, notes=notes + allowance_summary_lines(c)[:-1],
                                                 verdict=v))
        console.print(f"HTML report: {Path(html_out).resolve()}")
    first = c.first_diverging
    if first is not None:
        raise ParityFailure(f"bf16 allowance failed: first diverging stage {first.name} ({first.status})",
                            "every stage's candidate error within k x the baseline's error + floor",
                            "read the report; the first diverging stage names where the candidate parts from OpenPI")
    return c
