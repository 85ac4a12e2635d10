"""Self-contained HTML reports (no scripts, no external assets, inline SVG), from the same records as the terminal:
the verdict (`id="verdict"`: first diverging stage, how far past its tolerance, likely cause, next command), error
by layer for the ViT, the LLM and the action expert and per denoising step, each against its tolerance with the
first divergence marked; the actions of both stacks over the horizon and their difference (`id="actions-plot"`);
per-stage wall time (a stage a stack fuses into a neighbour is labelled, not drawn as 0 s); the stage table; a
glossary of the metric columns (`id="glossary"`). allowance_html: the same for the bf16-allowance comparison."""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass

import numpy as np

from pibridge.parity.compare import Comparison, StageResult

_W, _H, _PAD = 560, 260, 56
_E = html.escape

GLOSSARY = [
    ("stage", "a named point of the forward pass, identical on every stack (docs/DESIGN.md, stage contract), in "
              "execution order; A is the reference (usually OpenPI JAX), B the stack checked"),
    ("status", "pass / fail against the stage's tolerance; no-rule: no tolerance matches; skipped: not comparable "
               "by design (the note says why); shape-mismatch, nonfinite: failed before any metric"),
    ("cosine", "cosine similarity of A and B over the valid elements (1: same direction; two all-zero arrays: 1)"),
    ("max-abs", "largest |A - B| over the valid elements (padded rows are ignored)"),
    ("mean-abs", "mean |A - B| over the valid elements"),
    ("rel-L2", "||A - B|| / ||A||: the error relative to the reference's size"),
    ("worst index", "where |A - B| is largest, with A's and B's values there"),
    ("tolerance", "the stage passes when max-abs <= this and cosine >= the given minimum (configs/tolerances.json, "
                  "each rule with its measured why)"),
    ("1 - cosine", "plotted instead of the cosine so that small angles show on a log axis"),
    ("first divergence", "the first stage in execution order that fails: where the stacks part; later stages "
                         "inherit its error"),
    ("wall time", "seconds each stack spent on the stage; 'fused' where a stack computes it inside a neighbouring "
                  "stage (no separate time)"),
]
ALLOWANCE_GLOSSARY = [
    ("reference (REF)", "JAX stack float32: the exact answer"),
    ("baseline (BASE)", "JAX stack bf16: bit-exact with OpenPI's own bf16 inference"),
    ("candidate (CAND)", "the trace judged (e.g. LeRobot bf16)"),
    ("rel-L2 base / cand", "||X - REF|| / ||REF|| of BASE and of CAND"),
    ("1-cos base / cand", "1 - cosine(X, REF); the angle sqrt(2 (1 - cos)) is judged"),
    ("ratio", "CAND's rel-L2 over BASE's: how much farther from float32 than OpenPI's own bf16 run"),
    ("limit", "k * BASE's error + floor, for rel-L2 and the angle (configs/allowance.json)"),
    ("k, floor", "the allowance rule of the stage pattern, each with its measured why"),
]


@dataclass(frozen=True)
class Point:
    name: str
    values: tuple[float | None, ...]  # one per series
    first: bool = False


def _log_y(v: float, lo: float, hi: float) -> float:
    v = min(max(v, lo), hi)
    return _H - _PAD - (math.log10(v) - math.log10(lo)) / max(math.log10(hi) - math.log10(lo), 1e-9) * (_H - 2 * _PAD)


def _chart(title: str, points: list[Point], series: list[tuple[str, str, bool]], ylabel: str) -> str:
    """Log-scale line chart; series: (label, css class, dashed). A vertical marker at the first divergence."""
    if not points:
        return ""
    values = [v for p in points for v in p.values if v is not None and v > 0 and math.isfinite(v)]
    lo = max(min(values, default=1e-12) / 2, 1e-12)
    hi = max(max(values, default=1.0), lo * 10) * 2
    n = len(points)

    def x(i):
        return _PAD + (i + 0.5) * (_W - 2 * _PAD) / n

    parts = [f'<svg class="plot" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" role="img" aria-label="{_E(title)}">',
             f'<text x="{_W / 2}" y="16" text-anchor="middle" class="t">{_E(title)}</text>',
             f'<text x="12" y="{_H / 2}" transform="rotate(-90 12 {_H / 2})" text-anchor="middle" class="a">{_E(ylabel)}</text>']
    exps = [e for e in range(math.ceil(math.log10(lo)), math.floor(math.log10(hi)) + 1)]
    for e in exps[::max(1, math.ceil(len(exps) / 8))]:  # at most 8 grid lines
        y = _log_y(10.0 ** e, lo, hi)
        parts.append(f'<line x1="{_PAD}" x2="{_W - _PAD}" y1="{y:.1f}" y2="{y:.1f}" class="g"/>'
                     f'<text x="{_PAD - 4}" y="{y + 4:.1f}" text-anchor="end" class="a">1e{e}</text>')
    for i, p in enumerate(points):
        if p.first:
            right = x(i) > _W / 2
            parts.append(f'<line x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{_PAD - 10}" y2="{_H - _PAD}" class="fd"/>'
                         f'<text x="{x(i) + (-3 if right else 3):.1f}" y="{_PAD - 14}" class="fdl" '
                         f'text-anchor="{"end" if right else "start"}">first divergence: {_E(p.name)}</text>')
    legend_x = _PAD
    for k, (label, cls, dashed) in enumerate(series):
        pts = [(x(i), _log_y(p.values[k], lo, hi)) for i, p in enumerate(points)
               if p.values[k] is not None and math.isfinite(p.values[k])]
        if not pts:
            continue
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        parts.append(f'<polyline points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in pts)}" class="{cls}"{dash}/>')
        if len(pts) == 1 or not dashed:
            parts += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" class="{cls}d"/>' for a, b in pts]
        parts.append(f'<text x="{legend_x:.0f}" y="32" class="{cls}l">{"- - " if dashed else "— "}{_E(label)}</text>')
        legend_x += 5.6 * (len(label) + 4)
    step = max(1, math.ceil(n / 12))
    for i in range(0, n, step):  # slanted so that long stage names do not overlap
        short = "/".join(points[i].name.split("/")[1:]) or points[i].name
        parts.append(f'<text x="{x(i):.1f}" y="{_H - _PAD + 10}" text-anchor="end" class="a" '
                     f'transform="rotate(-30 {x(i):.1f} {_H - _PAD + 10})">{_E(short)}</text>')
    parts.append("</svg>")
    return "".join(parts)


_TOLERANCE_SERIES = [("max-abs", "m", False), ("max-abs tolerance", "m", True), ("1 - cosine", "c", False),
                     ("1 - cosine allowed", "c", True), ("rel-L2", "r", False)]


def _tolerance_points(results: list[StageResult], pattern: str, first: str | None) -> list[Point]:
    rx = re.compile(pattern)
    out = []
    for r in results:
        if r.metrics is None or not rx.fullmatch(r.name):
            continue
        m, rule = r.metrics, r.rule
        out.append(Point(r.name, (m.max_abs, rule.max_abs if rule else None, 1.0 - m.cosine,
                                  1.0 - rule.min_cosine if rule else None, m.rel_l2), r.name == first))
    return out


def _last_step(names: list[str]) -> str:
    steps = sorted({m.group(1) for n in names if (m := re.match(r"expert/step(\d\d)/", n))})
    return rf"expert/step{steps[-1]}/block\d\d" if steps else r"$^"


PLOTS = [("ViT: error by block", r"img/(embed|block\d\d|out)"), ("LLM (prefix): error by layer", r"llm/block\d\d"),
         ("LLM: keys / values by layer", r"llm/kv\d\d/[kv]"), ("error per denoising step (velocity)", r"velocity/step\d\d"),
         ("inputs, prefix and outputs", r"input/.*|img/tokens|prefix/.*|suffix/.*|actions(/unnormalized)?")]


def _stage_plots(c: Comparison) -> list[str]:
    first = c.first_diverging.name if c.first_diverging else None
    names = [r.name for r in c.results]
    plots = [(t, p) for t, p in PLOTS[:2]] + [("action expert: error by layer, last step", _last_step(names))] + PLOTS[2:]
    return [_chart(t, _tolerance_points(c.results, p, first), _TOLERANCE_SERIES, "error (log)") for t, p in plots]


# ------------------------------------------------------------------------------------------------- actions
def _hue(i: int, n: int) -> str:
    return f"hsl({int(360 * i / max(n, 1))},65%,42%)"


def actions_plot(a: np.ndarray | None, b: np.ndarray | None, label_a: str, label_b: str, sample: int = 0) -> str:
    """Both stacks' actions of one sample over the horizon (one series per action dim per stack: A solid, B dashed)
    and their difference B - A below (`id="actions-plot"`). a, b: (B, horizon, dims)."""
    if a is None or b is None or a.shape != b.shape or a.ndim != 3:
        return ""
    xa, xb = a[sample].astype(np.float64), b[sample].astype(np.float64)  # (horizon, dims)
    horizon, dims = xa.shape
    w, h, pad = 720, 230, 48

    def panel(y0: float, arrays: list[tuple[np.ndarray, bool]], title: str) -> list[str]:
        vals = np.concatenate([v.ravel() for v, _ in arrays])
        vals = vals[np.isfinite(vals)]
        lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 1.0)
        if hi - lo < 1e-12:
            lo, hi = lo - 1.0, hi + 1.0

        def px(t):
            return pad + t * (w - 2 * pad) / max(horizon - 1, 1)

        def py(v):
            return y0 + h - pad + (-(v - lo) / (hi - lo)) * (h - 2 * pad)

        out = [f'<text x="{w / 2}" y="{y0 + 16}" text-anchor="middle" class="t">{_E(title)}</text>',
               f'<line x1="{pad}" x2="{w - pad}" y1="{py(lo):.1f}" y2="{py(lo):.1f}" class="g"/>',
               f'<text x="{pad - 4}" y="{py(hi) + 4:.1f}" text-anchor="end" class="a">{hi:.3g}</text>',
               f'<text x="{pad - 4}" y="{py(lo) + 4:.1f}" text-anchor="end" class="a">{lo:.3g}</text>',
               f'<text x="{w / 2}" y="{y0 + h - pad + 28}" text-anchor="middle" class="a">action step (0..{horizon - 1})</text>']
        if lo < 0 < hi:
            out.append(f'<line x1="{pad}" x2="{w - pad}" y1="{py(0):.1f}" y2="{py(0):.1f}" class="z"/>')
        for arr, dashed in arrays:
            for d in range(dims):
                pts = " ".join(f"{px(t):.1f},{py(float(arr[t, d])):.1f}" for t in range(horizon) if np.isfinite(arr[t, d]))
                dash = ' stroke-dasharray="4 3"' if dashed else ""
                out.append(f'<polyline points="{pts}" fill="none" stroke="{_hue(d, dims)}" stroke-width="1.5"{dash}>'
                           f'<title>dim {d}</title></polyline>')
        return out

    diff = xb - xa
    per_row = 12  # legend entries per line: "dim NN" fits ~50 px, 12 fit the plot's width
    rows = -(-dims // per_row)
    height = 2 * h + 14 + 16 * rows
    parts = [f'<svg id="actions-plot" class="plot" width="{w}" height="{height}" viewBox="0 0 {w} {height}" '
             f'role="img" aria-label="actions of both stacks and their difference">']
    parts += panel(0, [(xa, False), (xb, True)],
                   f"actions/unnormalized, sample {sample}: {label_a} solid, {label_b} dashed, one colour per dim")
    parts += panel(h + 20, [(diff, False)], f"difference B - A (max |B - A| {np.nanmax(np.abs(diff)):.3e})")
    for r in range(rows):  # every dim named: one line of the legend per `per_row` dims
        legend = "".join(f'<tspan fill="{_hue(d, dims)}">dim {d} </tspan>'
                         for d in range(r * per_row, min(dims, (r + 1) * per_row)))
        parts.append(f'<text x="{pad}" y="{2 * h + 26 + 16 * r}" class="a">{legend}</text>')
    parts.append("</svg>")
    return "".join(parts)


# -------------------------------------------------------------------------------------------------- timings
def _timing_chart(results: list[StageResult], label_a: str, label_b: str) -> str:
    rows = [(r.name, r.wall_a or 0.0, r.wall_b or 0.0) for r in results if (r.wall_a or r.wall_b)]
    if not rows:
        return ""
    top = sorted(rows, key=lambda r: -(r[1] + r[2]))[:20]
    peak = max(max(a, b) for _, a, b in top) or 1.0
    bar_h, width = 9, 360
    h = 40 + len(top) * (2 * bar_h + 6)
    parts = [f'<svg class="plot" width="{_W + 160}" height="{h}" role="img" aria-label="wall time per stage">',
             f'<text x="10" y="16" class="t">wall time per stage (20 slowest), seconds: '
             f'<tspan class="ml">{_E(label_a)}</tspan> / <tspan class="cl">{_E(label_b)}</tspan></text>']
    for i, (name, a, b) in enumerate(top):
        y = 30 + i * (2 * bar_h + 6)
        parts.append(f'<text x="230" y="{y + bar_h + 3}" text-anchor="end" class="a">{_E(name)}</text>')
        for j, (v, other, cls) in enumerate(((a, b, "bm"), (b, a, "bc"))):
            text = "fused (timed in a neighbouring stage)" if _fused(v, other) else f"{v:.3f}"
            parts.append(f'<rect x="236" y="{y + j * bar_h}" width="{max(v / peak * width, 1):.1f}" height="{bar_h - 1}" class="{cls}"/>'
                         f'<text x="{240 + v / peak * width:.1f}" y="{y + j * bar_h + bar_h - 1}" class="a">{text}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _fused(v: float, other: float) -> bool:
    """A stage one stack computes inside a neighbouring one: (almost) no time of its own where the other stack
    spent time (under 2 ms and under 1/50 of the other's)."""
    return other > 0 and v < 0.002 and v * 50 < other


def fused_note(results: list[StageResult], label_a: str, label_b: str) -> str | None:
    """One line naming the stages a stack does not time separately."""
    fa = [r.name for r in results if _fused(r.wall_a or 0.0, r.wall_b or 0.0)]
    fb = [r.name for r in results if _fused(r.wall_b or 0.0, r.wall_a or 0.0)]
    parts = [f"{label} fuses {len(n)} stage(s) into neighbouring ones (no separate time: {', '.join(n[:4])}"
             f"{', ...' if len(n) > 4 else ''})" for label, n in ((label_a, fa), (label_b, fb)) if n]
    return "; ".join(parts) or None


# ---------------------------------------------------------------------------------------------------- page
_CSS = """body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1500px}h1{font-size:20px}
table{border-collapse:collapse;font:12px ui-monospace,monospace}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
td:first-child,th:first-child{text-align:left}.pass{color:#176}.fail,.shape-mismatch,.nonfinite{color:#b00;font-weight:bold}
.no-rule{color:#a60}.skipped{color:#888}.first{background:#fee}
#verdict{border:2px solid #176;border-radius:6px;padding:8px 14px;margin:12px 0;background:#f3fbf6}
#verdict.failed{border-color:#b00;background:#fff4f4}#verdict h2{margin:0 0 6px 0}#verdict dt{font-weight:600;float:left;width:110px}
#verdict dd{margin:0 0 4px 120px;font:13px ui-monospace,monospace}
svg{margin:8px 16px 8px 0;background:#fafafa;border:1px solid #eee}.t{font-size:13px;font-weight:600}.a{font-size:10px;fill:#555}
.g{stroke:#e4e4e4}.z{stroke:#bbb}.m{fill:none;stroke:#c33;stroke-width:2}.c{fill:none;stroke:#36c;stroke-width:2}
.r{fill:none;stroke:#393;stroke-width:1.5}.md{fill:#c33}.cd{fill:#36c}.rd{fill:#393}.fd{stroke:#b00;stroke-width:1.5;stroke-dasharray:2 2}
.fdl{font-size:10px;fill:#b00}.ml{fill:#c33;font-size:10px}.cl{fill:#36c;font-size:10px}.rl{fill:#393;font-size:10px}
.bm{fill:#c33}.bc{fill:#36c}.plots{display:flex;flex-wrap:wrap}
h2{font-size:16px;margin-top:20px}table.extra td,table.extra th{text-align:left}li{font:12px ui-monospace,monospace;margin:2px 0}
#glossary dt{font-weight:600}#glossary dd{margin:0 0 6px 20px}"""


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_E(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_E(str(x))}</td>" for x in r) + "</tr>" for r in rows)
    return f'<h2>{_E(title)}</h2><table class="extra"><tr>{head}</tr>{body}</table>'


def verdict_html(v) -> str:
    """v: verdict.VerdictRecord."""
    items = [(k, getattr(v, a)) for k, a in (("stage", "stage"), ("how far", "how_far"), ("likely cause", "cause"),
                                             ("fix id", "fix"), ("defect", "defect"), ("next", "next")) if getattr(v, a)]
    dl = "".join(f"<dt>{_E(k)}</dt><dd>{_E(str(x))}</dd>" for k, x in items)
    return (f'<section id="verdict" class="{"passed" if v.passed else "failed"}"><h2 class="{"pass" if v.passed else "fail"}">'
            f'{_E(v.headline)}</h2><dl>{dl}</dl></section>')


def _glossary(entries: list[tuple[str, str]]) -> str:
    return ('<h2>glossary</h2><dl id="glossary">' + "".join(f"<dt>{_E(k)}</dt><dd>{_E(d)}</dd>" for k, d in entries)
            + "</dl>")


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{_E(title)}</title><style>{_CSS}</style></head>'
            f"<body><h1>{_E(title)}</h1>{body}</body></html>")


def comparison_html(c: Comparison, *, title: str, label_a: str, label_b: str, notes: list[str], verdict,
                    tables: list[tuple[str, list[str], list[list[str]]]] = (),
                    actions: tuple[np.ndarray | None, np.ndarray | None] = (None, None)) -> str:
    """tables: extra (title, header, rows) tables (e.g. the preprocessing-parity section); verdict: a
    verdict.VerdictRecord; actions: both stacks' actions/unnormalized (B, horizon, dims) for the actions plot."""
    first = c.first_diverging
    rows = []
    for r in c.results:
        m = r.metrics
        cells = [_E(r.name), f'<span class="{r.status}">{_E(r.status)}</span>']
        cells += ["", "", "", "", ""] if m is None else [
            f"{m.cosine:.7f}", f"{m.max_abs:.3e}", f"{m.mean_abs:.3e}", f"{m.rel_l2:.3e}",
            _E(f"{list(m.worst_index)}: {m.worst_a:.6g} / {m.worst_b:.6g}")]
        cells.append("" if r.rule is None else f"{r.rule.max_abs:.1e} / {r.rule.min_cosine}")
        cells.append(_E(r.note or (r.rule.why[:200] if r.rule and r.failed else "")))
        cls = ' class="first"' if first is not None and r.name == first.name else ""
        why = f' title="{_E(r.rule.why)}"' if r.rule and r.rule.why else ""  # the tolerance's why, on hover
        rows.append(f"<tr{cls}>" + "".join(f"<td{why if i == 7 else ''}>{x}</td>" for i, x in enumerate(cells)) + "</tr>")
    act = actions_plot(actions[0], actions[1], label_a, label_b)
    body = (f"<p>A = {_E(label_a)}, B = {_E(label_b)}, precision {c.precision}</p>{verdict_html(verdict)}"
            f"<ul>{''.join(f'<li>{_E(n)}</li>' for n in notes)}</ul>{''.join(_table(*t) for t in tables)}"
            + (f"<h2>actions</h2>{act}" if act else "")
            + f'<h2>error by stage against the tolerance</h2><div class="plots">{"".join(_stage_plots(c))}</div>'
            + f"<h2>timings</h2>{_timing_chart(c.results, label_a, label_b)}"
            "<h2>stages</h2><table><tr><th>stage</th><th>status</th><th>cosine</th><th>max-abs</th><th>mean-abs</th>"
            "<th>rel-L2</th><th>worst index: A / B</th><th>tolerance (max-abs / cos; hover: why)</th><th>note</th></tr>"
            f"{''.join(rows)}</table>{_glossary(GLOSSARY)}")
    return _page(title, body)


def allowance_html(c, *, title: str, notes: list[str], verdict) -> str:
    """c: allowance.AllowanceComparison (REF / BASE / CAND)."""
    first = c.first_diverging.name if c.first_diverging else None
    points, rows = [], []
    for r in c.results:
        e, lim = r.errors, r.limits()
        if e is not None:
            points.append(Point(r.name, (e[1].rel_l2, lim[0] if lim else None, e[0].rel_l2), r.name == first))
        cells = [_E(r.name), f'<span class="{r.status}">{_E(r.status)}</span>']
        cells += ["", "", "", ""] if e is None else [f"{e[0].rel_l2:.3e}", f"{e[1].rel_l2:.3e}",
                                                     f"{e[0].one_minus_cos:.2e}", f"{e[1].one_minus_cos:.2e}"]
        cells += ["" if r.ratio is None else f"{r.ratio:.3f}", "" if lim is None else f"{lim[0]:.3e} / {lim[1]:.3e}",
                  "" if r.rule is None else f"{r.rule.k:g}, {r.rule.floor:g}", _E(r.note)]
        cls = ' class="first"' if r.name == first else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    series = [("candidate rel-L2", "m", False), ("limit (k * base + floor)", "m", True), ("baseline rel-L2", "c", False)]
    groups = [("ViT", r"img/.*"), ("LLM", r"llm/.*|prefix/.*"), ("action expert and outputs",
                                                                 r"suffix/.*|expert/.*|velocity/.*|actions.*")]
    plots = [_chart(f"{t}: candidate vs OpenPI's own bf16, against float32", [p for p in points if re.fullmatch(rx, p.name)],
                    series, "rel-L2 vs REF (log)") for t, rx in groups]
    labels = c.labels
    body = (f"<p>reference {_E(str(labels.get('reference', '')))}, baseline {_E(str(labels.get('baseline', '')))}, "
            f"candidate {_E(str(labels.get('candidate', '')))}</p>{verdict_html(verdict)}"
            f"<ul>{''.join(f'<li>{_E(n)}</li>' for n in notes)}</ul>"
            f'<h2>error against float32, candidate and baseline</h2><div class="plots">{"".join(plots)}</div>'
            "<h2>stages</h2><table><tr><th>stage</th><th>status</th><th>rel-L2 base</th><th>rel-L2 cand</th>"
            "<th>1-cos base</th><th>1-cos cand</th><th>ratio</th><th>limit rel / angle</th><th>k, floor</th><th>note</th></tr>"
            f"{''.join(rows)}</table>{_glossary(ALLOWANCE_GLOSSARY)}")
    return _page(title, body)
