"""The report explains itself (issue 16): a verdict with the cause and the next command, plots against the
tolerance with the first divergence marked, the actions of both stacks, a glossary, fused-stage timings, the
bf16-allowance comparison as HTML, terminal views that fit the terminal; pages rendered by Debian's chromium
(`make browser` installs it) without errors, every plot with a non-zero size."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from pibridge.errors import ParityFailure
from pibridge.parity.allowance import allowance_command
from pibridge.parity.compare import compare
from pibridge.parity.report import COLUMNS, columns_for
from pibridge.parity.run import compare_command
from pibridge.parity.trace import read_trace
from pibridge.parity.verdict import diagnose, load_diagnoses

GOLDEN = Path(__file__).parent / "golden" / "foreign-host"
F32, BF16 = GOLDEN / "tiny-pi05-float32.safetensors", GOLDEN / "tiny-pi05-bf16.safetensors"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]
# the test's copy of a page gets this probe (the report itself has no scripts): size of every svg, and errors
PROBE = """<script>window.onerror=(m)=>{document.title='JS-ERROR '+m};addEventListener('load',()=>{
const p=document.createElement('pre');p.id='probe';p.textContent=[...document.querySelectorAll('svg')].map(e=>{
const b=e.getBoundingClientRect();return (e.id||e.getAttribute('aria-label'))+'='+Math.round(b.width)+'x'+Math.round(b.height)}).join('\\n');
document.body.appendChild(p)});</script>"""


def _console(width=200, terminal=False):
    return Console(file=io.StringIO(), width=width, force_terminal=terminal, color_system=None)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    compare_command(F32, F32, json_out=root / "pass.json", html_out=root / "pass.html", console=_console())
    with pytest.raises(ParityFailure):
        compare_command(F32, BF16, json_out=root / "fail.json", html_out=root / "fail.html", console=_console())
    allowance_command(BF16, F32, BF16, json_out=root / "allow.json", html_out=root / "allow.html", console=_console())
    return root


def test_verdict_in_json_and_html(reports):
    ok, bad = (json.loads((reports / f"{n}.json").read_text())["verdict"] for n in ("pass", "fail"))
    assert ok["passed"] and ok["headline"].startswith("PASS") and ok["next"]
    assert not bad["passed"] and bad["stage"] == "img/embed" and "x its tolerance" in bad["how_far"]
    assert "different precisions" in bad["cause"] and "--reference" in bad["next"]
    page = (reports / "fail.html").read_text()
    verdict = re.search(r'<section id="verdict".*?</section>', page).group(0)
    assert "img/embed" in verdict and "likely cause" in verdict and "next" in verdict
    assert "first divergence: img/embed" in page  # the marker on the plot
    assert 'id="actions-plot"' in page and 'id="glossary"' in page and "<script" not in page
    for col in ("cosine", "max-abs", "mean-abs", "rel-L2", "worst index", "tolerance"):
        assert f"<dt>{col}</dt>" in page, col
    assert "max-abs tolerance" in page and "1 - cosine allowed" in page  # tolerance lines
    assert json.loads((reports / "allow.json").read_text())["verdict"]["passed"]
    assert 'id="verdict"' in (reports / "allow.html").read_text()


def test_actions_plot_has_a_series_per_dim_per_stack_and_the_difference(reports):
    page = (reports / "fail.html").read_text()
    plot = re.search(r'<svg id="actions-plot".*?</svg>', page).group(0)
    stages = read_trace(F32).stages
    dims = (stages.get("actions/unnormalized") or stages["actions"]).value.shape[-1]
    assert plot.count("<polyline") == 3 * dims  # A, B, and B - A per dim
    assert "difference B - A" in plot
    legend = re.findall(r'<tspan fill="[^"]+">(dim \d+) </tspan>', plot)
    assert legend == [f"dim {d}" for d in range(dims)]  # every dim named (it was cut at dim 18 of 32)
    lines = [float(y) for y in re.findall(r'<text x="\d+" y="([\d.]+)" class="a"><tspan', plot)]
    assert len(lines) == -(-dims // 12) and max(lines) < float(re.search(r'height="(\d+)"', plot).group(1))


def test_timings_label_fused_stages():
    from pibridge.parity.report_html import fused_note

    c = compare(read_trace(F32), read_trace(F32))
    res = [type(r)(**{**r.__dict__, "wall_b": 0.0 if r.name == "llm/block00" else 1.0, "wall_a": 1.0})
           for r in c.results]
    assert fused_note(res, "A", "B") == "B fuses 1 stage(s) into neighbouring ones (no separate time: llm/block00)"
    assert fused_note([type(r)(**{**r.__dict__, "wall_a": 1.0, "wall_b": 1.0}) for r in c.results], "A", "B") is None


def test_every_diagnosis_rule_is_reachable_and_named():
    for d in load_diagnoses():
        assert d.cause and d.next, d.pattern
    assert diagnose("llm/kv00/k", "bf16", False, True).fix == "rope-inv-freq-fp32"
    assert diagnose("img/embed", "float32", True, False).pattern == "img/embed"
    assert diagnose("img/embed", "float32", True, True).pattern == "img/*"  # shared: not the resize


@pytest.mark.parametrize("width", [80, 120, 200])
def test_terminal_views_fit_the_width(width, capsys):
    cols = columns_for(width)
    assert cols[:2] == ("stage", "status") and (width < 200 or cols == COLUMNS)
    con = _console(width, terminal=True)  # what a terminal of this width shows
    with pytest.raises(ParityFailure):
        compare_command(F32, BF16, console=con, view="only-failing")
    out = con.file.getvalue()
    assert "first divergence" in out and "not shown (--only-failing)" in out
    table = [line for line in out.splitlines() if line.startswith(("┃", "│", "┏", "└"))]
    assert table and max(len(line) for line in table) <= width
    summary = _console(width)
    with pytest.raises(ParityFailure):
        compare_command(F32, BF16, console=summary, view="summary")
    text = summary.file.getvalue()
    assert "likely cause" in text and "┃" not in text  # the verdict, no table


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (make browser installs Debian's)")
@pytest.mark.parametrize("name", ["pass", "fail", "allow"])
def test_chromium_renders_the_report(reports, name, tmp_path):
    page = (reports / f"{name}.html").read_text()
    probe = tmp_path / f"{name}.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    common = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<title>JS-ERROR" not in dom.stdout and "<pre id=\"probe\">" in dom.stdout
    sizes = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S).group(1).splitlines()
    assert len(sizes) == page.count("<svg") and len(sizes) >= (3 if name == "allow" else 6), sizes
    for line in sizes:
        w, h = map(int, line.rsplit("=", 1)[1].split("x"))
        assert w > 100 and h > 100, line
    shot = tmp_path / f"{name}.png"
    subprocess.run([*common, "--window-size=1500,2400", f"--screenshot={shot}", (reports / f"{name}.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20000
