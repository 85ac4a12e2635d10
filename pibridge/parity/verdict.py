"""The verdict a report opens with (terminal, JSON and HTML from the same record): the first diverging stage, how
far past its tolerance, the likely cause when a known defect matches (configs/diagnoses.json) and the next command.
Works for a tolerance comparison (compare.Comparison) and a bf16-allowance one (allowance.AllowanceComparison)."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass
from functools import cache

from pibridge.configs import CONFIG_DIR


@dataclass(frozen=True)
class Diagnosis:
    pattern: str
    cause: str
    next: str
    defect: str | None = None  # the defect tests/test_tolerances.py injects that first diverges here
    fix: str | None = None  # a configs/fixes.json id
    precision: str = "*"
    fixes: bool | None = None
    shared: bool | None = None


@dataclass(frozen=True)
class VerdictRecord:
    passed: bool
    headline: str
    stage: str | None = None
    how_far: str = ""  # e.g. "max-abs 3.2e-02 is 320x its tolerance 1.0e-04; 1 - cosine 4.1e-03 is 41x"
    cause: str = ""
    defect: str | None = None
    fix: str | None = None
    next: str = ""

    def lines(self) -> list[str]:
        out = [self.headline]
        if self.how_far:
            out.append(f"  how far: {self.how_far}")
        if self.cause:
            out.append(f"  likely cause: {self.cause}" + "".join(
                f" [{k} {v}]" for k, v in (("fix", self.fix), ("defect", self.defect)) if v))
        if self.next:
            out.append(f"  next: {self.next}")
        return out

    def to_dict(self) -> dict:
        return asdict(self)


@cache
def load_diagnoses() -> tuple[Diagnosis, ...]:
    rows = json.loads((CONFIG_DIR / "diagnoses.json").read_text())["rules"]
    return tuple(Diagnosis(**r) for r in rows)


def diagnose(stage: str, precision: str, fixes: bool | None, shared: bool | None) -> Diagnosis | None:
    """The first rule matching the stage and the run's conditions (None in a rule: either)."""
    for d in load_diagnoses():
        if not fnmatch.fnmatchcase(stage, d.pattern) or d.precision not in ("*", precision):
            continue
        if (d.fixes is not None and fixes is not None and d.fixes != fixes) or \
                (d.shared is not None and shared is not None and d.shared != shared):
            continue
        if (d.fixes is not None and fixes is None) or (d.shared is not None and shared is None):
            continue  # a condition the run does not tell: not this rule
        return d
    return None


def _times(value: float, limit: float) -> str:
    return f"{value / limit:.3g}x" if limit > 0 else "inf x"


def tolerance_how_far(r) -> str:
    """compare.StageResult -> how far past its rule."""
    m, rule = r.metrics, r.rule
    if m is None or rule is None:
        return r.note or r.status
    parts = []
    if m.max_abs > rule.max_abs:
        parts.append(f"max-abs {m.max_abs:.3e} is {_times(m.max_abs, rule.max_abs)} its tolerance {rule.max_abs:.1e}")
    gap, allowed = 1.0 - m.cosine, 1.0 - rule.min_cosine
    if m.cosine < rule.min_cosine:
        parts.append(f"1 - cosine {gap:.2e} is {_times(gap, allowed)} the allowed {allowed:.1e}")
    return "; ".join(parts) + f" (rel-L2 {m.rel_l2:.3e}, worst at {list(m.worst_index)}: {m.worst_a:.6g} vs {m.worst_b:.6g})"


def allowance_how_far(r) -> str:
    """allowance.AllowanceResult -> how far past its limits."""
    e, lim = r.errors, r.limits()
    if e is None or lim is None:
        return r.note or r.status
    return (f"rel-L2 {e[1].rel_l2:.3e} is {_times(e[1].rel_l2, lim[0])} its limit {lim[0]:.3e}; angle {e[1].angle:.3e} "
            f"is {_times(e[1].angle, lim[1])} its limit {lim[1]:.3e} (OpenPI's own bf16: rel-L2 {e[0].rel_l2:.3e})")


def trace_conditions(a, b) -> tuple[bool | None, bool | None]:
    """(fixes, shared) of a comparison of traces a (reference) and b: whether the torch side ran with the runtime
    fixes, and whether the model inputs were shared (--shared-inputs / --shared-preprocessing)."""
    metas = [t.meta for t in (a, b)]
    torch_side = [m for m in metas if m.get("stack") != "jax"]
    fixes = torch_side[0].get("fixes_enabled") if torch_side else None
    shared = any(m.get("shared_inputs") for m in metas) or metas[0].get("stack") == metas[1].get("stack")
    return fixes, shared


MIXED_PRECISION = Diagnosis(
    "*", "the two traces ran at different precisions (float32 vs bf16): bf16 rounding alone explains differences "
         "of this size; the tolerances compare like with like",
    "capture both at one --precision, or judge a bf16 run with the bf16 allowance: pibridge parity compare CAND "
    "--reference JAX_F32 --baseline JAX_BF16")


def verdict(c, *, fixes: bool | None = None, shared: bool | None = None, precision: str | None = None,
            allowance: bool = False, rerun: str = "", mixed_precision: bool = False) -> VerdictRecord:
    """c: a Comparison or an AllowanceComparison; fixes / shared: how the torch side ran (None: unknown);
    rerun: the command that reproduces this report (the next command of a pass)."""
    first = c.first_diverging
    what = "bf16 allowance" if allowance else "tolerance"
    if first is None:
        n = sum(1 for r in c.results if r.status == "pass")
        return VerdictRecord(True, f"PASS: all {n} compared stages within their {what}", next=rerun or (
            "pibridge check OUT with the Python that will run the policy (its transformers / LeRobot versions decide "
            "the runtime fixes)"))
    how = allowance_how_far(first) if allowance else tolerance_how_far(first)
    d = MIXED_PRECISION if mixed_precision else diagnose(first.name, precision or getattr(c, "precision", "bf16"),
                                                         fixes, shared)
    return VerdictRecord(False, f"FAIL: first diverging stage {first.name} ({first.status})", first.name, how,
                         d.cause if d else "no known defect matches this stage",
                         d.defect if d else None, d.fix if d else None,
                         d.next if d else "read the per-stage table from the top; pibridge convert --dry-run audits "
                                          "every tensor")
