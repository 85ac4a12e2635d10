"""Self-contained HTML report of a comparison: summary, per-stage table, and inline SVG plots (no scripts,
no external assets): error by layer for the ViT, the LLM and the action expert, error per denoising step,
and per-stage wall time of both stacks side by side."""

from __future__ import annotations

import html
import math
import re

from pibridge.parity.compare import Comparison, StageResult

_W, _H, _PAD = 560, 220, 44


def _series(results: list[StageResult], pattern: str) -> list[tuple[str, float, float]]:
    rx = re.compile(pattern)
    return [(r.name, r.metrics.max_abs, 1.0 - r.metrics.cosine) for r in results
            if r.metrics is not None and rx.fullmatch(r.name)]


def _log_y(v: float, lo: float, hi: float) -> float:
    v = max(v, lo)
    return _H - _PAD - (math.log10(v) - math.log10(lo)) / max(math.log10(hi) - math.log10(lo), 1e-9) * (_H - 2 * _PAD)


def _line_chart(title: str, points: list[tuple[str, float, float]]) -> str:
    if not points:
        return ""
    values = [p[1] for p in points] + [p[2] for p in points]
    lo = max(min([v for v in values if v > 0], default=1e-12) / 2, 1e-12)
    hi = max(max(values), lo * 10) * 2
    n = len(points)

    def x(i):
        return _PAD + (i + 0.5) * (_W - 2 * _PAD) / n

    parts = [f'<svg width="{_W}" height="{_H}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{_W / 2}" y="16" text-anchor="middle" class="t">{html.escape(title)}</text>']
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        y = _log_y(10.0 ** e, lo, hi)
        if _PAD - 1 <= y <= _H - _PAD + 1:
            parts.append(f'<line x1="{_PAD}" x2="{_W - _PAD}" y1="{y:.1f}" y2="{y:.1f}" class="g"/>'
                         f'<text x="{_PAD - 4}" y="{y + 4:.1f}" text-anchor="end" class="a">1e{e}</text>')
    for idx, (cls, label) in enumerate((("m", "max-abs"), ("c", "1 - cosine (0: at the floor)"))):
        pts = " ".join(f"{x(i):.1f},{_log_y(p[1 + idx], lo, hi):.1f}" for i, p in enumerate(points))
        parts.append(f'<polyline points="{pts}" class="{cls}"/>')
        parts.append(f'<text x="{_W - _PAD}" y="{30 + 14 * idx}" text-anchor="end" class="{cls}l">{label}</text>')
    step = max(1, n // 12)
    for i in range(0, n, step):
        short = points[i][0].split("/")[-1]
        parts.append(f'<text x="{x(i):.1f}" y="{_H - _PAD + 14}" text-anchor="middle" class="a">{html.escape(short)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _timing_chart(results: list[StageResult], label_a: str, label_b: str) -> str:
    rows = [(r.name, r.wall_a or 0.0, r.wall_b or 0.0) for r in results if (r.wall_a or r.wall_b)]
    if not rows:
        return ""
    top = sorted(rows, key=lambda r: -(r[1] + r[2]))[:20]
    peak = max(max(a, b) for _, a, b in top) or 1.0
    bar_h, width = 9, 360
    h = 40 + len(top) * (2 * bar_h + 6)
    parts = [f'<svg width="{_W + 140}" height="{h}" role="img" aria-label="wall time per stage">',
             f'<text x="10" y="16" class="t">wall time per stage (20 slowest), seconds: '
             f'<tspan class="ml">{html.escape(label_a)}</tspan> / <tspan class="cl">{html.escape(label_b)}</tspan></text>']
    for i, (name, a, b) in enumerate(top):
        y = 30 + i * (2 * bar_h + 6)
        parts.append(f'<text x="230" y="{y + bar_h + 3}" text-anchor="end" class="a">{html.escape(name)}</text>')
        for j, (v, cls) in enumerate(((a, "bm"), (b, "bc"))):
            parts.append(f'<rect x="236" y="{y + j * bar_h}" width="{max(v / peak * width, 1):.1f}" height="{bar_h - 1}" class="{cls}"/>'
                         f'<text x="{240 + v / peak * width:.1f}" y="{y + j * bar_h + bar_h - 1}" class="a">{v:.3f}</text>')
    parts.append("</svg>")
    return "".join(parts)


_CSS = """body{font:14px system-ui,sans-serif;margin:24px;color:#222}h1{font-size:20px}
table{border-collapse:collapse;font:12px ui-monospace,monospace}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
td:first-child,th:first-child{text-align:left}.pass{color:#176}.fail,.shape-mismatch,.nonfinite{color:#b00;font-weight:bold}
.no-rule{color:#a60}.skipped{color:#888}.first{background:#fee}.ok{color:#176}.bad{color:#b00}
svg{margin:8px 16px 8px 0;background:#fafafa;border:1px solid #eee}.t{font-size:13px;font-weight:600}.a{font-size:10px;fill:#555}
.g{stroke:#e4e4e4}.m{fill:none;stroke:#c33;stroke-width:2}.c{fill:none;stroke:#36c;stroke-width:2}
.ml{fill:#c33;font-size:11px}.cl{fill:#36c;font-size:11px}.bm{fill:#c33}.bc{fill:#36c}.plots{display:flex;flex-wrap:wrap}
h2{font-size:16px;margin-top:20px}table.extra td,table.extra th{text-align:left}li{font:12px ui-monospace,monospace;margin:2px 0}"""


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>" for r in rows)
    return f'<h2>{html.escape(title)}</h2><table class="extra"><tr>{head}</tr>{body}</table>'


def comparison_html(c: Comparison, *, title: str, label_a: str, label_b: str, notes: list[str],
                    tables: list[tuple[str, list[str], list[list[str]]]] = ()) -> str:
    """tables: extra (title, header, rows) tables shown before the plots (e.g. the preprocessing-parity section)."""
    first = c.first_diverging
    verdict = ('<p class="ok">PASS: every compared stage within tolerance</p>' if first is None else
               f'<p class="bad">FAIL: first diverging stage <b>{html.escape(first.name)}</b></p>')
    plots = [_line_chart("ViT: error by block", _series(c.results, r"img/(embed|block\d\d|out)")),
             _line_chart("LLM (prefix): error by layer", _series(c.results, r"llm/block\d\d")),
             _line_chart("action expert: error by layer, last step", _last_step(c.results)),
             _line_chart("error per denoising step (velocity)", _series(c.results, r"velocity/step\d\d"))]
    rows = []
    for r in c.results:
        m = r.metrics
        cells = [html.escape(r.name), f'<span class="{r.status}">{html.escape(r.status)}</span>']
        cells += ["", "", "", ""] if m is None else [f"{m.cosine:.7f}", f"{m.max_abs:.3e}", f"{m.mean_abs:.3e}", f"{m.rel_l2:.3e}"]
        cells.append("" if r.rule is None else f"{r.rule.max_abs:.1e} / {r.rule.min_cosine}")
        cells.append(html.escape(r.note))
        cls = ' class="first"' if first is not None and r.name == first.name else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body><h1>{html.escape(title)}</h1><p>A = {html.escape(label_a)}, B = {html.escape(label_b)}, precision {c.precision}</p>
{verdict}<ul>{''.join(f'<li>{html.escape(n)}</li>' for n in notes)}</ul>
{''.join(_table(*t) for t in tables)}<h2>plots</h2><div class="plots">{''.join(plots)}</div>{_timing_chart(c.results, label_a, label_b)}
<h2>stages</h2><table><tr><th>stage</th><th>status</th><th>cosine</th><th>max-abs</th><th>mean-abs</th><th>rel-L2</th><th>tolerance (max-abs / cos)</th><th>note</th></tr>
{''.join(rows)}</table></body></html>"""


def _last_step(results: list[StageResult]) -> list[tuple[str, float, float]]:
    steps = sorted({m.group(1) for r in results if (m := re.match(r"expert/step(\d\d)/", r.name))})
    return _series(results, rf"expert/step{steps[-1]}/block\d\d") if steps else []
