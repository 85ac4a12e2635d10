"""Run every bad-input case of tests/reliability/cases.py through the real CLI and write docs/reliability.md.

    .venv/bin/python tools/reliability_table.py [--out docs/reliability.md] [--workers 4]

Same cases and checks as tests/test_reliability_cases.py (slow ones included); exits 1 when a case that is not
marked xfail breaks a check, or an xfail case unexpectedly passes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from reliability import build as B  # noqa: E402
from reliability.cases import CASES  # noqa: E402
from reliability.runner import Outcome, run_all  # noqa: E402

UNDETECTABLE = """\
## What cannot be detected

- **A bit flip inside stored float data of a real OpenPI checkpoint.** orbax writes each array chunk as a zarr
  v2 chunk compressed with zstd level 1 *without* zstd's optional content checksum (frame header descriptor bit 2
  is 0 in the files written here, as in orbax's), so a flipped bit inside a block's payload (literals of barely
  compressible float data) decodes without error into a different weight, and a real OpenPI checkpoint carries no
  checksum of its values: no reader can detect it there. What *is* caught: flips in zstd frame / block headers
  (`bitflip-zstd-frame`), anything in the OCDBT b-tree nodes (CRC-32C, `bitflip-node`), truncated or deleted data
  files (`data-file-*`, `node-file-truncated`), and, for a synthetic checkpoint, a payload flip too
  (`bitflip-payload`): `convert` compares the value fingerprint it computes while streaming with the one
  `pibridge synth` recorded in `pibridge_synth.json`.
- **A NaN / Inf that is in the data on purpose.** `--allow-nonfinite` converts such weights (`weight-nan-allowed`).
- **Plausible but wrong values**: a checkpoint of the right shapes with other weights (another run, another step),
  or norm stats of another robot with the right dims, convert cleanly. `pibridge inspect` shows the fingerprint and
  norm-stats summary to compare against the source; `pibridge parity run` shows what the converted policy computes.

## Decisions recorded by the cases

- Traces with different stage sets are *reported*, not an error: `parity compare` compares the common stages and
  lists the others ("stages only in A/B (not compared)"): what a stack records is its capture's choice (a trace
  of a stack that skips some internals is still comparable on the rest), and the listing keeps the gap visible.
  No common stage at all is an error (exit 2). A stage whose shapes
  differ is a parity failure (exit 1, status shape-mismatch); a stage tensor that is not float32 means the file
  was not written by pibridge (trace format 1 stores float32 only): exit 2.
- `--force` replaces only pibridge's own output: every entry must be listed in its pibridge.json (name, size,
  XXH3-128) and unmodified; a listed file the user deleted is no obstacle (`ok-force-own-out-file-deleted`: nothing
  foreign is lost). OUT may neither hold nor lie inside an input, found by (st_dev, st_ino) up the parent chains; a
  bind mount of the checkpoint's directory is covered by tests/test_guard.py (it needs mount privileges, so it is
  not a row here). An empty existing directory is a valid OUT without `--force` (`ok-empty-dir-out`).
- The norm stats' meaningful width (trailing all-zero dims not counted) must equal the profile's dims
  (`profile-asset-dims-mismatch`); stats of another robot with the same dims still convert (see above).
- A tolerance rule matching no stage is reported ("tolerance patterns that matched no stage"), not an error.
- Prompts longer than the profile's `max_token_len` are truncated with OpenPI's warning, exactly as OpenPI's
  `PaligemmaTokenizer.tokenize` does (openpi models/tokenizer.py:40-46): `Token length (N) exceeds max length (L),
  truncating.` on stderr, exit 0 (`obs-long-prompt-odd-sizes`).
- Observation files hold uint8 (B, H, W, 3) images only. Float or grayscale images are refused with the expected
  layout (the robot policies' float -> uint8 conversion happens before an observation is written); images of any
  size are accepted as long as the resize with padding to 224x224 keeps at least one pixel per side
  (a 1x1000 image would become 0 rows high, where OpenPI's PIL resize fails too).
"""


def relative(text: str, case_dir: Path) -> str:
    return text.replace(str(case_dir) + "/", "").replace(str(case_dir), ".")


def cell(text: str, limit: int = 170) -> str:
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|").replace("\n", " ")


def status(o: Outcome) -> str:
    if o.case.xfail:
        return "xfail" if o.problems else "XPASS"
    return "pass" if not o.problems else "FAIL: " + "; ".join(o.problems)


def render(outcomes: list[Outcome], workdir: Path, seconds: float) -> str:
    n_pass = sum(status(o) == "pass" for o in outcomes)
    n_xfail = sum(status(o) == "xfail" for o in outcomes)
    lines = ["# Reliability: bad inputs", "",
             "Generated by `tools/reliability_table.py` from `tests/reliability/cases.py` (the same cases "
             "`tests/test_reliability_cases.py` runs). Each case runs the real CLI in a subprocess inside its own "
             "directory (`ck` checkpoint, `out` output, `obs` observation, `a`/`b` traces). Exit 2: bad input, "
             "exit 1: parity tolerance failure. \"Nothing written\": every input byte-identical afterwards (sha256 "
             "of the tree), no OUT (or the existing OUT unchanged), no `.out.pibridge-tmp-*` temporaries; for the "
             "cases that are meant to write, everything except that output. \"case dir sha256\": the first 12 hex "
             "digits of one sha256 over the tree digests of every entry of the case directory, before -> after "
             "the command (equal: nothing in it deleted or changed).", "",
             f"{len(outcomes)} cases: {n_pass} pass" + (f", {n_xfail} xfail (known gap, see below)" if n_xfail else "") + "; "
             f"{seconds:.0f} s wall for the whole table.", "",
             "| case | what | command | exit | message (first line) | nothing written | case dir sha256 before -> after "
             "| result |",
             "|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        d = workdir / o.case.id
        lines.append(f"| `{o.case.id}` | {cell(o.case.what, 120)} | `{cell(o.command, 150)}` | {o.exit_code} | "
                     f"{cell(relative(o.message, d))} | {'yes' if o.untouched else 'no'} | "
                     f"{o.digest_before[:12]} -> {'same' if o.digest_after == o.digest_before else o.digest_after[:12]} | "
                     f"{cell(status(o), 120)} |")
    xfails = [o for o in outcomes if o.case.xfail]
    lines += ["", "## Known gaps (xfail)", ""] + [f"- `{o.case.id}`: {o.case.xfail}." for o in xfails]
    return "\n".join(lines) + "\n\n" + UNDETECTABLE


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "reliability.md")
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pibridge-reliability-") as tmp:
        shared = B.build_shared(Path(tmp) / "shared")
        t0 = time.perf_counter()
        by_id = run_all(CASES, shared, Path(tmp) / "cases", workers=args.workers)
        seconds = time.perf_counter() - t0
        outcomes = [by_id[c.id] for c in CASES]
        args.out.write_text(render(outcomes, Path(tmp) / "cases", seconds))
    bad = [o for o in outcomes if status(o) not in ("pass", "xfail")]
    print(f"wrote {args.out}: {len(outcomes)} cases, {len(bad)} unexpected")
    for o in bad:
        print(f"  {o.case.id}: {status(o)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
