"""Comparison reports: rich terminal table and JSON (HTML lives in report_html.py)."""

from __future__ import annotations

import json
from dataclasses import asdict

from pibridge.parity.compare import Comparison, StageResult

_STYLE = {"pass": "green", "fail": "bold red", "shape-mismatch": "bold red", "nonfinite": "bold red",
          "no-rule": "yellow", "skipped": "dim", "empty": "dim"}


def _fmt(x: float | None, spec: str) -> str:
    return "" if x is None else format(x, spec)


def comparison_table(c: Comparison, title: str = "parity"):
    from rich.table import Table

    t = Table(title=f"{title} ({c.precision})", header_style="bold")
    for col in ("stage", "status", "cosine", "max-abs", "mean-abs", "rel-L2", "worst index: a / b", "tolerance"):
        t.add_column(col, justify="left" if col in ("stage", "status", "worst index: a / b") else "right")
    first = c.first_diverging
    for r in c.results:
        m = r.metrics
        worst = "" if m is None else f"{list(m.worst_index)}: {m.worst_a:.6g} / {m.worst_b:.6g}"
        tol = "" if r.rule is None else f"<= {r.rule.max_abs:.1e}, cos >= {r.rule.min_cosine}"
        name = f"{r.name}  <- first divergence" if first is not None and r.name == first.name else r.name
        status = r.status + (f" ({r.note})" if r.note and r.status != "no-rule" else "")
        t.add_row(name, f"[{_STYLE.get(r.status, '')}]{status}[/]", _fmt(m and m.cosine, ".7f"),
                  _fmt(m and m.max_abs, ".3e"), _fmt(m and m.mean_abs, ".3e"), _fmt(m and m.rel_l2, ".3e"), worst, tol)
    return t


def summary_lines(c: Comparison) -> list[str]:
    lines = []
    if c.only_in_a:
        lines.append(f"stages only in A (not compared): {', '.join(c.only_in_a)}")
    if c.only_in_b:
        lines.append(f"stages only in B (not compared): {', '.join(c.only_in_b)}")
    no_rule = [r.name for r in c.results if r.status == "no-rule"]
    if no_rule:
        lines.append(f"stages without a tolerance rule: {', '.join(no_rule)}")
    if c.unused_rules:
        lines.append(f"tolerance patterns that matched no stage: {', '.join(c.unused_rules)}")
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
