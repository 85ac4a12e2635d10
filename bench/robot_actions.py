"""The robot's action, real LeRobot 0.6.1 on OUT vs OpenPI's host side, over the shipped profiles (issue 14's sweep).

For each of the 8 shipped profiles with an OpenPI TrainConfig (pi0_base / pi05_base have none), tiny float32:
`pibridge synth` + `convert` (OUT's defaults; a second OUT with --openpi-resize), one observation per size, then

- LeRobot: OUT loaded the ordinary way (from_pretrained + make_pre_post_processors + predict_action_chunk + OUT's
  postprocessor, the pibridge plugin's steps), all cases in one `.venvs/lr-0.6.1` process (tests/lerobot/capture_many.py);
- OpenPI: its host side (pibridge.parity.openpi_preprocess, validated bit-exact against OpenPI's transforms by
  tools/check_preprocess_vs_openpi.py) around the JAX stack (bit-exact with OpenPI's model), then Unnormalize +
  AbsoluteActions + the robot's outputs;

same raw observation and noise. Cases: (a) 224x224 with OUT's defaults, (b) the clients' native sizes (ALOHA 480x640,
DROID 720x1280, LIBERO 256x256) with --openpi-resize, and (c) the same native sizes on the default OUT (LeRobot's own
in-model torch resize), to show what the step changes. With --serve, (a) and (b) again through `pibridge serve
--lerobot OUT` (one server per OUT, the real LeRobot 0.6.1), queried by the REAL openpi-client (.venvs/openpi-client,
tests/openpi_client/driver.py) with the raw client dict (harness.client_dict) and the noise. Prints a markdown table;
`--md PATH` writes it.

    .venv/bin/python bench/robot_actions.py [--serve] [--md bench/results/robot_actions.md] [--droid-size 180x320]
        [--work DIR]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "lerobot"))
import harness as h  # noqa: E402

from pibridge.serve.server import IMAGES_BY_HOST, IMAGES_BY_STEP  # noqa: E402

LIMIT = 1e-4  # issue 14's acceptance bound on the robot's action (tiny, float32)


def _size(text: str) -> tuple[int, int]:
    a, b = text.lower().split("x")
    return int(a), int(b)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--md", type=Path, help="write the table here")
    ap.add_argument("--droid-size", type=_size, default=h.NATIVE_SIZES["droid"], help="DROID camera HxW")
    ap.add_argument("--profiles", default=",".join(h.SWEEP_PROFILES))
    ap.add_argument("--work", type=Path, help="scratch directory (default: a temporary one)")
    ap.add_argument("--serve", action="store_true", help="also through `pibridge serve` + the real openpi-client")
    a = ap.parse_args(argv)
    profiles = tuple(p for p in a.profiles.split(",") if p)
    cases = h.sweep_cases(profiles, {"droid": a.droid_size})
    cases += [(n, size, False) for n, size, resize in cases if resize]  # (c): native size, LeRobot's own resize
    t0 = time.perf_counter()
    served, serve_s = {}, 0.0
    with tempfile.TemporaryDirectory(prefix="robot-actions-", dir=a.work) as tmp:
        results = h.robot_action_cases(Path(tmp), cases)
        total = time.perf_counter() - t0
        if a.serve:
            t1 = time.perf_counter()
            served = {(r["profile"], r["size"], r["openpi_resize"]): r
                      for r in h.serve_robot_action_cases(Path(tmp), [c for c in cases if c[1] is None or c[2]])}
            serve_s = time.perf_counter() - t1
    by = {(r["profile"], r["size"], r["openpi_resize"]): r for r in results}
    native = {n: size for n, size, resize in cases if resize}
    srv = ("", "")
    if a.serve:
        srv = (" served 224x224 |", " served native, --openpi-resize |")
    rows = [f"| profile | (H, A) | 224x224, OUT's defaults |{srv[0]} native size | native, --openpi-resize |{srv[1]} "
            "native, LeRobot's own resize | Unnormalize alone at 224 (no host transforms) |",
            "|---" * (7 + 2 * a.serve) + "|"]
    ok = True
    for n in profiles:
        d, s = by[(n, (224, 224), False)], native[n]
        r, w = by[(n, s, True)], by[(n, s, False)]
        ok &= d["max_abs"] <= LIMIT and r["max_abs"] <= LIMIT
        cols = ["", ""]
        if a.serve:
            sd, sr = served[(n, (224, 224), False)], served[(n, s, True)]
            # the served OUT resizes with its own step when it has one, else the glue does (serve/policy.py)
            ok &= sd["max_abs"] <= LIMIT and sr["max_abs"] <= LIMIT and sr["images"] == IMAGES_BY_STEP \
                and sd["images"] == IMAGES_BY_HOST
            cols = [f" {sd['max_abs']:.2e} |", f" {sr['max_abs']:.2e} |"]
        rows.append(f"| {n} | {d['shape'][1:]} | {d['max_abs']:.2e} |{cols[0]} {s[0]}x{s[1]} | {r['max_abs']:.2e} |"
                    f"{cols[1]} {w['max_abs']:.2e} | {d['unnormalized_gap']:.2e} |")
    text = "\n".join([
        "# The robot's action: real LeRobot 0.6.1 on OUT vs OpenPI's host side + JAX stack",
        "",
        "Tiny variants, float32, batch 1, same raw observation (synthetic uint8 images, seed 3) and noise; max-abs over "
        "the (H, A) action the robot receives. Written by `bench/robot_actions.py`.",
        "",
        *rows,
        "",
        f"All 224x224 and --openpi-resize cases{' (served ones included)' if a.serve else ''} <= {LIMIT:g}: "
        f"{'yes' if ok else 'NO'}. Without the step, LeRobot resizes "
        "inside the model with torch bilinear (no antialias) on float [0, 1]; OpenPI with PIL on uint8 "
        "(openpi-client image_tools.py:15-58), hence the last-but-one column.",
        *([] if not a.serve else [
            "",
            "Served: `pibridge serve --lerobot OUT --port 0` per OUT (real LeRobot 0.6.1 in .venvs/lr-0.6.1), one "
            "request from the real openpi-client's WebsocketClientPolicy: the raw client dict of the robot family "
            "(ALOHA CHW images under \"images\", DROID joint + gripper position, LIBERO \"observation/*\") at that size, "
            "plus \"noise\"; its float64 \"actions\" vs OpenPI's host side on the JAX stack. The --openpi-resize OUTs "
            "get the client's native-size images (OUT's pibridge_openpi_resize step resizes); the 224x224 ones are "
            "resized (a no-op at 224) by the serve glue, as its startup line says."]),
        "",
        f"{len(cases)} cases, {total:.0f} s in all ({sum(x['openpi_s'] for x in results):.0f} s on the OpenPI / JAX "
        f"side)" + (f"; served: {len(served)} servers + clients, {serve_s:.0f} s "
                    f"({serve_s / max(len(served), 1):.0f} s per OUT)" if a.serve else "") +
        f"; {platform.node()}, {platform.machine()}.",
    ])
    print(text)
    if a.md:
        a.md.parent.mkdir(parents=True, exist_ok=True)
        a.md.write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
