"""Shared by the version-matrix tests: one worker run per transformers release (in .venvs/tf-<ver>, built
once by tools/tfvenv.py and cached), holding the gate jobs (tiny-pi05) and the per-fix jobs (test-size
variant test-w72-pi05, whose widths show the bf16 scale effects). Releases outside the support config's
"gate" list are marked slow (run by `make test-all` / `make matrix`)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import matrix  # noqa: E402
import tfvenv  # noqa: E402

REFS = ROOT / ".venvs" / "matrix-refs"
GATE = matrix.SUPPORT["gate"]
RELEASES = [m["transformers"] for m in matrix.SUPPORT["matrix"]]
RELEASES_LE_53 = [v for v in RELEASES if tuple(map(int, v.split(".")[:2])) <= (5, 3)]
RELEASES_GE_54 = [v for v in RELEASES if tuple(map(int, v.split(".")[:2])) >= (5, 4)]
RELEASES_GE_56 = [v for v in RELEASES if tuple(map(int, v.split(".")[:2])) >= (5, 6)]
ROPE, IMAGE, TEXT, DOUBLE = ("rope-inv-freq-fp32", "image-features-undivided", "text-embedding-scaled",
                             "double-scaling-lerobot-0.5")


def releases(versions):
    return [pytest.param(v, id=v, marks=() if v in GATE else pytest.mark.slow) for v in versions]


def _le53(version: str) -> bool:
    return version in RELEASES_LE_53


@functools.cache
def cases() -> dict[str, Path]:
    out = matrix.ensure_cases(REFS, ("tiny-pi05",))
    fv = matrix.fix_variant(True)
    out[fv.name] = matrix.make_case(fv, REFS / fv.name)
    return out


def jobs(version: str) -> list[dict]:
    c = cases()
    tiny, fix = str(c["tiny-pi05"]), str(c["test-w72-pi05"])
    js = [{"tag": f"gate/{dt}/{'on' if on else 'off'}", "variant": "tiny-pi05", "case": tiny, "lerobot": "0.6.1",
           "dtype": dt, "fixes": on, "exact": False}
          for dt, on in (("float32", True), ("bfloat16", True), ("bfloat16", False))]
    base = {"variant": "test-w72-pi05", "case": fix, "detail": True, "exact": False, "fixes": True}
    native = "0.5.1" if _le53(version) else "0.6.1"  # the LeRobot whose code needs only the RoPE fix here
    js += [dict(base, tag="rope/with", lerobot=native, dtype="bfloat16"),
           dict(base, tag="rope/without", lerobot=native, dtype="bfloat16", skip=[ROPE]),
           dict(base, tag="exact/with", lerobot=native, dtype="bfloat16", exact=True)]
    if _le53(version):
        js += [dict(base, tag="lr06/with", lerobot="0.6.1", dtype="bfloat16"),
               dict(base, tag="image/without", lerobot="0.6.1", dtype="bfloat16", skip=[IMAGE]),
               dict(base, tag="text/without", lerobot="0.6.1", dtype="bfloat16", skip=[TEXT])]
    else:
        js += [dict(base, tag="double/with", lerobot="0.5.0", dtype="bfloat16"),
               dict(base, tag="double/without", lerobot="0.5.0", dtype="bfloat16", skip=[DOUBLE])]
    js.append({"tag": "layout", "kind": "layout", "variant": "test-w72-pi05", "case": fix})
    return js


@functools.cache
def results(version: str) -> dict[str, dict]:
    """{tag: worker result} for one release (venv built / reused; one subprocess)."""
    tfvenv.ensure_venv(version)
    return {r["tag"]: r for r in matrix.run_release(version, jobs(version), timeout=1500)}


def stage(result: dict, name: str) -> list:
    """[cosine, max_abs, rel_l2] of one stage of a detail job."""
    return result["stages"][name]


def llm_deficit(result: dict) -> float:
    """Sum over llm/* stages of (1 - cosine): how far the prefix pass is from the JAX reference."""
    return sum(1 - v[0] for k, v in result["stages"].items() if k.startswith("llm/") and v and v[0] is not None)
