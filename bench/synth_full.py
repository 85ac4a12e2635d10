"""Full-size `pibridge synth` benchmark: pi05 and pi0 float32, then pi05 bfloat16, one after another.

Each run: `pibridge synth` in a child process (wall time, peak RSS of that child from os.wait4), on-disk size,
`pibridge inspect --json` in a child process (wall time, peak RSS; variant and counts checked), a spot check of
a few small leaves read back against the formula, then the checkpoint is deleted before the next run.
Needs ~13.5 GB free on the work directory's filesystem (one checkpoint at a time) and ~4.2 GB of RAM
(measured peak: one 2.1 GB float32 chunk, the embedder, plus its compressed copy).

    .venv/bin/python bench/synth_full.py [--workdir /work] [--runs pi05:float32,pi0:float32,pi05:bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXPECTED = {"pi05": (51, 3_353_433_872), "pi0": (50, 3_238_048_528)}
SPOT_LEAVES = [("action_out_proj", "kernel"), ("action_in_proj", "bias"), ("PaliGemma", "llm", "final_norm", "scale")]


def run_measured(cmd: list[str]) -> tuple[float, int, str]:
    """Run `cmd`, wait with os.wait4 to get this child's own peak RSS (ru_maxrss is KiB on Linux)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.read()[-3000:]}")
        return wall, usage.ru_maxrss * 1024, out.read()


def disk_bytes(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(b, f)) for b, _, fs in os.walk(path) for f in fs)


def spot_check(out: Path, variant: str) -> int:
    """Read a few small leaves back and compare them with the formula; returns how many matched."""
    import numpy as np

    from pibridge.configs import load_variant
    from pibridge.convert.reader import open_checkpoint
    from pibridge.convert.synth_weights import generate, plan_leaves

    ck = open_checkpoint(out)
    rec = ck.synth_record
    plans = {p.path: p for p in plan_leaves(load_variant(variant), rec["seed"])}
    ok = 0
    for path in SPOT_LEAVES:
        if path in plans:
            want = generate(plans[path]).astype(ck.read(path).dtype)
            ok += int(np.array_equal(ck.read(path), want))
    return ok


def _counts(variant: str) -> tuple[int, int]:
    from pibridge.configs import load_variant
    from pibridge.convert.tree import count_params, openpi_tree_shapes

    shapes = openpi_tree_shapes(load_variant(variant))
    return len(shapes), count_params(shapes)


def bench_one(workdir: Path, variant: str, dtype: str) -> dict:
    out = workdir / f"{variant}-{dtype}"
    py = sys.executable
    wall, rss, text = run_measured([py, "-m", "pibridge.cli", "synth", str(out), "--variant", variant,
                                    "--dtype", dtype, "--seed", "0"])
    size = disk_bytes(out)
    i_wall, i_rss, i_text = run_measured([py, "-m", "pibridge.cli", "inspect", str(out), "--json", "--no-leaves"])
    doc = json.loads(i_text)
    n_leaves, n_params = EXPECTED.get(variant) or _counts(variant)
    row = {"variant": variant, "dtype": dtype, "synth_s": round(wall, 1), "synth_peak_rss_gb": round(rss / 1e9, 2),
           "stored_gb": round(doc["stored_bytes"] / 1e9, 2), "disk_gb": round(size / 1e9, 2),
           "write_gb_per_s": round(doc["stored_bytes"] / 1e9 / wall, 3),
           "inspect_s": round(i_wall, 2), "inspect_peak_rss_gb": round(i_rss / 1e9, 2),
           "variant_detected": doc["variant"]["variant"], "leaves_ok": doc["n_leaves"] == n_leaves,
           "params_ok": doc["n_params"] == n_params, "spot_leaves_equal": spot_check(out, variant),
           "fingerprint": doc["synth"]["fingerprint"]}
    shutil.rmtree(out)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="/work", help="filesystem to write on (needs ~13.5 GB free)")
    ap.add_argument("--runs", default="pi05:float32,pi0:float32,pi05:bfloat16")
    ap.add_argument("--json-out", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()
    free = shutil.disk_usage(args.workdir).free
    if free < 15e9:
        print(f"only {free / 1e9:.1f} GB free on {args.workdir}; need ~15 GB", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="pibridge-synth-bench-", dir=args.workdir) as tmp:
        for run in args.runs.split(","):
            variant, dtype = run.split(":")
            print(f"synth {variant} {dtype} ...", flush=True)
            rows.append(bench_one(Path(tmp), variant, dtype))
            print(json.dumps(rows[-1]), flush=True)
    cols = ["variant", "dtype", "synth_s", "synth_peak_rss_gb", "stored_gb", "disk_gb", "write_gb_per_s",
            "inspect_s", "inspect_peak_rss_gb", "variant_detected", "spot_leaves_equal"]
    print("\n" + " | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2) + "\n")
    bad = [r for r in rows if not (r["leaves_ok"] and r["params_ok"] and r["variant_detected"] == r["variant"]
                                   and r["spot_leaves_equal"] == len(SPOT_LEAVES))]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
