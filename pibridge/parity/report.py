"""Comparison reports: rich terminal table and JSON (HTML lives in report_html.py)."""

from __future__ import annotations

import json
from dataclasses import asdict

from pibridge.parity.compare import Comparison, StageResult
from pibridge.parity.verdict import allowance_how_far

_STYLE = {"pass": "green", "fail": "bold red", "shape-mismatch": "bold red", "nonfinite": "bold red",
          "no-rule": "yellow", "skipped": "dim", "empty": "dim"}


def _fmt(x: float | None, spec: str) -> str:
    return "" if x is None else format(x, spec)


COLUMNS = ("stage", "status", "cosine", "max-abs", "mean-abs", "rel-L2", "worst index: a / b", "tolerance")
# what a narrower terminal drops first (the HTML / JSON reports keep every column)
_DROP_ORDER = ("worst index: a / b", "mean-abs", "tolerance", "rel-L2")
_MIN_WIDTH = {"stage": 24, "status": 8, "cosine": 10, "max-abs": 10, "mean-abs": 10, "rel-L2": 10,
              "worst index: a / b": 30, "tolerance": 24}


def columns_for(width: int | None) -> tuple[str, ...]:
    """The table columns that fit a terminal of this width (None: all)."""
    cols = list(COLUMNS)
    for drop in _DROP_ORDER:
        if width is None or sum(_MIN_WIDTH[c] + 3 for c in cols) <= width:
            break
        cols.remove(drop)
    return tuple(cols)


def comparison_table(c: Comparison, title: str = "parity", width: int | None = None, only_failing: bool = False):
    """width: the terminal's (drops the least needed columns to fit); only_failing: failed stages and the first
    divergence only (with a count of the rows left out)."""
    from rich.table import Table

    cols = columns_for(width)
    first = c.first_diverging
    shown = [r for r in c.results if not only_failing or r.failed or r.status == "no-rule"]
    left_out = len(c.results) - len(shown)
    caption = f"{left_out} passing / skipped stages not shown (--only-failing)" if only_failing else None
    t = Table(title=f"{title} ({c.precision})", header_style="bold", caption=caption)
    for col in cols:
        t.add_column(col, justify="left" if col in ("stage", "status", "worst index: a / b") else "right",
                     overflow="fold")
    for r in shown:
        m = r.metrics
        tol = "" if r.rule is None else f"<= {r.rule.max_abs:.1e}, cos >= {r.rule.min_cosine}"
        name = f"{r.name}  <- first divergence" if first is not None and r.name == first.name else r.name
        status = r.status + (f" ({r.note})" if r.note and r.status != "no-rule" else "")
        cells = {"stage": name, "status": f"[{_STYLE.get(r.status, '')}]{status}[/]",
                 "cosine": _fmt(m and m.cosine, ".7f"), "max-abs": _fmt(m and m.max_abs, ".3e"),
                 "mean-abs": _fmt(m and m.mean_abs, ".3e"), "rel-L2": _fmt(m and m.rel_l2, ".3e"),
                 "worst index: a / b": "" if m is None else f"{list(m.worst_index)}: {m.worst_a:.6g} / {m.worst_b:.6g}",
                 "tolerance": tol}
        t.add_row(*(cells[col] for col in cols))
    return t


def _listed(labelled: list[tuple[str, list[str]]]) -> list[str]:
    """One "label: a, b, c" line per non-empty list."""
    return [f"{label}: {', '.join(items)}" for label, items in labelled if items]


def summary_lines(c: Comparison) -> list[str]:
    lines = _listed([("stages only in A (not compared)", c.only_in_a), ("stages only in B (not compared)", c.only_in_b),
                     ("stages without a tolerance rule", [r.name for r in c.results if r.status == "no-rule"]),
                     ("tolerance patterns that matched no stage", c.unused_rules)])
    first = c.first_diverging
    lines.append("PASS: every compared stage within tolerance" if first is None else
                 f"FAIL: first diverging stage: {first.name} ({_why(first)})")
    return lines


def _why(r: StageResult) -> str:
    if r.metrics is None or r.rule is None:
        return r.note or r.status
    m = r.metrics
    return (f"max-abs {m.max_abs:.3e} vs tolerance {r.rule.max_abs:.1e}, "
            f"cosine {m.cosine:.7f} vs {r.rule.min_cosine}")


def comparison_json(c: Comparison, **extra) -> str:
    first = c.first_diverging
    return json.dumps({
        "passed": c.passed, "precision": c.precision, "first_diverging": first.name if first else None,
        "stages": [asdict(r) for r in c.results], "only_in_a": c.only_in_a, "only_in_b": c.only_in_b,
        "unused_rules": c.unused_rules, **extra}, indent=2)


# --- bf16 allowance (pibridge/parity/allowance.py): CAND vs REF judged against BASE vs REF -----------------------

def allowance_table(c, title: str = "bf16 allowance", only_failing: bool = False):
    """c: allowance.AllowanceComparison."""
    from rich.table import Table

    labels = c.labels
    t = Table(title=f"{title}: candidate {labels.get('candidate', '')} and baseline {labels.get('baseline', '')} "
                    f"vs reference {labels.get('reference', '')}", header_style="bold")
    for col in ("stage", "status", "rel-L2 base", "rel-L2 cand", "1-cos base", "1-cos cand", "ratio", "limit rel / angle",
                "k, floor"):
        t.add_column(col, justify="left" if col in ("stage", "status") else "right")
    first = c.first_diverging
    for r in [r for r in c.results if not only_failing or r.failed or r.status == "no-rule"]:
        e, lim = r.errors, r.limits()
        name = f"{r.name}  <- first divergence" if first is not None and r.name == first.name else r.name
        status = r.status + (f" ({r.note})" if r.note and r.status != "no-rule" else "")
        t.add_row(name, f"[{_STYLE.get(r.status, '')}]{status}[/]",
                  *(["", "", "", ""] if e is None else [format(e[0].rel_l2, ".3e"), format(e[1].rel_l2, ".3e"),
                                                         format(e[0].one_minus_cos, ".2e"),
                                                         format(e[1].one_minus_cos, ".2e")]),
                  _fmt(r.ratio, ".3f"), "" if lim is None else f"{lim[0]:.3e} / {lim[1]:.3e}",
                  "" if r.rule is None else f"{r.rule.k:g}, {r.rule.floor:g}")
    return t


def allowance_summary_lines(c) -> list[str]:
    lines = _listed([("reference stages the candidate did not record", c.not_in_candidate),
                     ("stages only in the candidate (not compared)", c.only_in_candidate),
                     ("stages without an allowance rule", [r.name for r in c.results if r.status == "no-rule"]),
                     ("allowance patterns that matched no stage", c.unused_rules)])
    differing = [f"{r.name} rel-L2 {r.cand.rel_l2:.1e}" for r in c.results
                 if r.name.startswith("input/") and r.cand is not None and r.cand.rel_l2 > 1e-5]
    if differing:
        lines.append(f"NOTE: the candidate's model inputs differ from the reference's ({', '.join(differing)}): every "
                     "model stage then carries that preprocessing difference, which the baseline does not; to judge "
                     "the model, capture the candidate with --shared-inputs (the reference capture's --save-inputs)")
    first = c.first_diverging
    lines.append("PASS: every compared stage within its bf16 allowance" if first is None else
                 f"FAIL: first diverging stage: {first.name} ({allowance_how_far(first)}; k {first.rule.k:g}, "
                 f"floor {first.rule.floor:g})" if first.rule else f"FAIL: first diverging stage: {first.name} "
                 f"({allowance_how_far(first)})")
    return lines


def allowance_json(c, **extra) -> str:
    first = c.first_diverging
    stages = []
    for r in c.results:
        e, lim = r.errors, r.limits()
        stages.append({**asdict(r), "ratio": r.ratio,
                       "errors": None if e is None else {"base": asdict(e[0]), "cand": asdict(e[1])},
                       "limits": None if lim is None else {"rel_l2": lim[0], "angle": lim[1]}})
    return json.dumps({
        "mode": "bf16-allowance", "passed": c.passed, "first_diverging": first.name if first else None,
        "labels": c.labels, "stages": stages, "not_in_candidate": c.not_in_candidate,
        "only_in_candidate": c.only_in_candidate, "unused_rules": c.unused_rules, **extra}, indent=2)
