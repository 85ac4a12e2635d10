"""Full-size `pibridge convert` benchmark, ratios against baselines measured in the same run.

For each stored dtype (pi05 float32, pi05 bfloat16 by default):
  1. synth the checkpoint (not timed here; see bench/synth_full.py),
  2. I/O floor: in a child process, read every leaf once with tensorstore (pibridge's reader) and write the
     same number of output bytes as the conversion writes, with plain sequential writes,
  3. `pibridge convert --dry-run` (metadata only) in a child process,
  4. `pibridge convert` in a child process (wall time, peak RSS from os.wait4),
  5. where it fits in RAM: the naive way (read the whole tree, convert in memory, safetensors save_file),
  6. with --roundtrip: bench/roundtrip_full.py on the checkpoint and OUT (bit-exact back to the OpenPI tree),
then checks the output's key set / shapes / dtypes against LeRobot's reference listing and deletes everything.
Convert and the floors run --repeat times (default 3), interleaved, and the medians are compared (this VM's disk
varies by +-20 % from run to run; every single run is in the JSON). Each measured run starts with the page cache
dropped where allowed (root): cold reads for all, recorded as cold_cache. The floor is sequential (read a leaf,
then write), as the issue defines it; an overlapped floor (the next leaf decodes while this one is written) is
reported as a stricter yardstick. The converter overlaps reading, transposing and writing, so it can come in under
1.0x of the sequential floor.
Targets (issue 4): convert wall <= 1.3 x I/O floor; peak RSS <= 2.2 x largest stored leaf + 0.5 GB.
The floor ends with fsync, as the converter must before it renames OUT into place (an OUT that a power loss can
leave half-written is what the atomic protocol exists to prevent); the floor's time without the fsync is reported
too (io_floor_nosync_s) so the ratio can be read both ways.

    .venv/bin/python bench/convert_full.py [--workdir /work/bench-tmp] [--runs pi05:float32,pi05:bfloat16] [--naive]
        [--roundtrip] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_full import disk_bytes, run_measured  # noqa: E402

PY = sys.executable
CLI = [PY, "-m", "pibridge.cli"]
CAMS = "--camera-map", "base_0_rgb=base,left_wrist_0_rgb=wrist"

# argv: CKPT FILE BYTES MODE. "sequential" (the floor): read a leaf, then write its share. "overlapped"
# (informational, a stricter yardstick): the next leaf decodes on tensorstore's threads while this one is written.
IO_FLOOR = r"""
import os, sys, time, numpy as np
from pibridge.convert.reader import open_checkpoint
ck = open_checkpoint(sys.argv[1]); total = int(sys.argv[3]); overlapped = sys.argv[4] == "overlapped"; written = 0
stored = sum(i.nbytes for i in ck.leaves.values()); paths = list(ck.leaves)
t0 = time.perf_counter()
pending = ck.read_async(paths[0]) if overlapped else None
with open(sys.argv[2], "wb", buffering=0) as f:
    for i, path in enumerate(paths):  # read every leaf once, write its share of the output bytes with plain writes
        if overlapped:
            buf = pending.result()
            pending = ck.read_async(paths[i + 1]) if i + 1 < len(paths) else None
        else:
            buf = ck.read(path)
        buf = buf.reshape(-1).view(np.uint8)
        share = min(total - written, buf.size * total // stored)
        for start in range(0, share, buf.size):
            n = min(share - start, buf.size); f.write(buf[:n].data); written += n
        del buf
    pad = np.zeros(1 << 26, np.uint8)
    while written < total:
        n = min(total - written, pad.size); f.write(pad[:n].data); written += n
    t1 = time.perf_counter()
    os.fsync(f.fileno())
print(t1 - t0, time.perf_counter() - t0)
"""

NAIVE = r"""
import sys, numpy as np
from safetensors.numpy import save_file
from pibridge.convert.reader import open_checkpoint
from pibridge.convert.plan import convert_tree
ck = open_checkpoint(sys.argv[1])
tree = {p: ck.read(p) for p in ck.leaves}
_, out = convert_tree(tree, transformers_version="5.5.4", weights_dtype=sys.argv[3])
del tree
save_file(out, sys.argv[2], metadata={"format": "pt"})
"""


def drop_caches() -> bool:
    """Write back and drop the page cache (root only), so every measured run starts cold: a checkpoint synth just
    wrote sits in the cache and would make whichever run comes first look fast."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def cold(cmd: list[str]) -> tuple[float, int, str]:
    drop_caches()
    return run_measured(cmd)


def check_against_reference(out: Path, model: str, weights_dtype: str) -> str:
    from safetensors import safe_open

    ref = {}
    for line in Path(f"/work/shared/reference/lerobot_{model}_state_dict.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            k, shape, dt = line.split("\t")
            ref[k] = (shape.replace(" ", ""), dt if weights_dtype == "bfloat16" else "float32")
    got = {}
    with safe_open(str(out / "model.safetensors"), "np") as f:
        for k in f.keys():
            sl = f.get_slice(k)
            got[k] = (str(tuple(sl.get_shape())).replace(" ", ""), {"F32": "float32", "BF16": "bfloat16"}[sl.get_dtype()])
    bad = sorted(k for k in ref.keys() | got.keys() if ref.get(k) != got.get(k))
    return f"{len(got)} keys, {'identical to' if not bad else f'{len(bad)} differ from'} the reference listing" + \
        (f" (e.g. {bad[:3]})" if bad else "")


def measure_round(args: list[str], ck: Path, out: Path, floor_file: Path, roundtrip: bool, first: bool,
                  model: str, weights: str) -> dict:
    """One cold convert, then (after OUT is checked and deleted) the two floors on the same bytes, each cold."""
    wall, rss, _ = cold(args)
    out_bytes = os.path.getsize(out / "model.safetensors")
    m = {"convert_s": wall, "convert_peak_rss": rss, "out_bytes": out_bytes}
    if first:
        m["reference"] = check_against_reference(out, model, weights)
        if roundtrip:
            rt_wall, rt_rss, rt_out = run_measured([PY, str(Path(__file__).parent / "roundtrip_full.py"), str(ck),
                                                    str(out)])
            m.update(roundtrip=rt_out.strip(), roundtrip_s=rt_wall, roundtrip_peak_rss=rt_rss)
    shutil.rmtree(out)
    m["io_floor_s"], m["io_floor_peak_rss"], printed = cold([PY, "-c", IO_FLOOR, str(ck), str(floor_file),
                                                             str(out_bytes), "sequential"])
    in_loop, with_sync = (float(x) for x in printed.split())
    m["io_floor_nosync_s"] = m["io_floor_s"] - (with_sync - in_loop)
    m["io_floor_overlapped_s"], _, _ = cold([PY, "-c", IO_FLOOR, str(ck), str(floor_file), str(out_bytes),
                                             "overlapped"])
    floor_file.unlink()
    return m


def bench(model: str, stored: str, work: Path, naive: bool, roundtrip: bool, repeat: int) -> dict:
    ck, out, floor_file = work / f"{model}-{stored}", work / f"{model}-{stored}-out", work / "floor.bin"
    subprocess.run(CLI + ["synth", str(ck), "--variant", model, "--dtype", stored, "--profile", f"{model}_droid",
                          "--asset-id", "droid"], check=True, stdout=subprocess.DEVNULL)
    from pibridge.convert.reader import open_checkpoint

    leaves = open_checkpoint(ck).leaves
    largest = max(i.nbytes for i in leaves.values())
    weights = stored
    args = CLI + ["convert", str(ck), str(out), "--profile", f"{model}_droid", *CAMS, "--weights-dtype", weights,
                  "--runtime-dtype", weights]
    row = {"model": model, "stored": stored, "weights_dtype": weights, "stored_bytes": sum(i.nbytes for i in
           leaves.values()), "largest_leaf_bytes": largest, "ckpt_disk": disk_bytes(ck), "cold_cache": drop_caches()}
    row["dry_run_s"], _, _ = run_measured(args + ["--dry-run"])
    rounds = [measure_round(args, ck, out, floor_file, roundtrip, i == 0, model, weights) for i in range(repeat)]
    row.update({k: v for k, v in rounds[0].items() if not k.endswith("_s") or k == "roundtrip_s"})
    for key in ("convert_s", "io_floor_s", "io_floor_nosync_s", "io_floor_overlapped_s"):
        row[key + "_all"] = [r[key] for r in rounds]
        row[key] = statistics.median(row[key + "_all"])  # medians: the VM's disk varies by +-20 % run to run
    row["convert_peak_rss"] = max(r["convert_peak_rss"] for r in rounds)
    row["time_ratio"] = row["convert_s"] / row["io_floor_s"]
    row["time_ratio_nosync_floor"] = row["convert_s"] / row["io_floor_nosync_s"]
    row["time_ratio_overlapped_floor"] = row["convert_s"] / row["io_floor_overlapped_s"]
    row["rss_budget"] = 2.2 * largest + 0.5e9
    row["rss_ratio_to_budget"] = row["convert_peak_rss"] / row["rss_budget"]
    if naive:
        try:
            row["naive_s"], row["naive_peak_rss"], _ = cold([PY, "-c", NAIVE, str(ck), str(floor_file), weights])
        except RuntimeError as err:
            row["naive"] = f"failed: {str(err)[-200:]}"
        floor_file.unlink(missing_ok=True)
    shutil.rmtree(ck)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/work/bench-tmp")
    ap.add_argument("--runs", default="pi05:float32,pi05:bfloat16")
    ap.add_argument("--naive", action="store_true", help="also time restore-everything-then-save (needs RAM)")
    ap.add_argument("--roundtrip", action="store_true", help="also run bench/roundtrip_full.py on each OUT")
    ap.add_argument("--repeat", type=int, default=3, help="convert / floor rounds, interleaved; medians reported")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "convert_full.json"))
    a = ap.parse_args()
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for run in a.runs.split(","):
        model, stored = run.split(":")
        t0 = time.time()
        rows.append(bench(model, stored, work, a.naive, a.roundtrip, a.repeat))
        r = rows[-1]
        print(f"{model} stored {stored} -> {r['weights_dtype']}, medians of {a.repeat}: convert {r['convert_s']:.1f} s vs I/O floor "
              f"{r['io_floor_s']:.1f} s (x{r['time_ratio']:.2f}, target <= 1.3; x{r['time_ratio_nosync_floor']:.2f} vs the "
              f"floor without fsync, x{r['time_ratio_overlapped_floor']:.2f} vs an overlapped floor "
              f"{r['io_floor_overlapped_s']:.1f} s); peak RSS {r['convert_peak_rss'] / 1e9:.2f} GB "
              f"vs budget {r['rss_budget'] / 1e9:.2f} GB (x{r['rss_ratio_to_budget']:.2f}); dry-run {r['dry_run_s']:.1f} s; "
              f"{r['reference']}" + (f"; naive {r['naive_s']:.1f} s / {r['naive_peak_rss'] / 1e9:.2f} GB" if "naive_s" in r else
                                      f"; naive: {r.get('naive', 'not run')}") + (f"; round trip: {r['roundtrip']}" if "roundtrip" in r else "")
              + f" [{time.time() - t0:.0f} s]", flush=True)
    Path(a.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
