"""Full-size LoRA pi05 convert (issue 17): wall and peak RSS against the I/O floor and the non-LoRA conversion, in
one run.

1. synth pi05 --lora both (OpenPI's variants: PaliGemma rank 16, expert rank 32; training layout, the llm base
   bf16, factors and the rest float32) and, as the non-LoRA baseline, the same checkpoint without its factor leaves
   (identical base leaves and dtypes: synth's LoRA plan with the factors filtered out, in a child process);
2. per checkpoint: `pibridge convert --weights-dtype bfloat16 --runtime-dtype bfloat16` (child process: wall, peak
   RSS from os.wait4), then the sequential I/O floor of bench/convert_full.py on the same output bytes;
3. the two outputs' key / shape / dtype lists must be identical (LeRobot's reference listing too).
Everything is deleted at the end. Targets: LoRA peak RSS <= non-LoRA peak + one layer's float32 slice of the
largest adapted weight (gating_einsum: 2 x 2048 x 16384 x 4 B = 268 MB).

    .venv/bin/python bench/lora_full.py [--workdir /work/bench-tmp] [--out bench/results/lora_full.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_full import CAMS, CLI, IO_FLOOR, PY, check_against_reference, cold, drop_caches  # noqa: E402
from synth_full import disk_bytes, run_measured  # noqa: E402

LAYER_F32_SLICE = 2 * 2048 * 16384 * 4  # one layer of gating_einsum merged in float32


def keys_of(out: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "np") as f:
        return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}


NO_FACTORS = r"""
import sys
import pibridge.convert.synth as s
plan = s.plan_leaves
s.plan_leaves = lambda *a, **k: [p for p in plan(*a, **k) if "lora" not in "/".join(p.path)]
s.write_synthetic_checkpoint(sys.argv[1], variant="pi05", layout="training", profile="pi05_droid", asset_id="droid",
                             lora=s.LoraRequest())
"""


def one(work: Path, name: str, factors: bool) -> tuple[dict, dict]:
    ck, out, floor = work / name, work / f"{name}-out", work / "floor.bin"
    row = {"checkpoint": name}
    synth = (CLI + ["synth", str(ck), "--variant", "pi05", "--profile", "pi05_droid", "--asset-id", "droid", "--lora",
                    "both"]) if factors else [PY, "-c", NO_FACTORS, str(ck)]
    row["synth_s"], row["synth_peak_rss"], _ = run_measured(synth)
    from pibridge.convert.reader import open_checkpoint

    leaves = open_checkpoint(ck).leaves
    row.update(stored_bytes=sum(i.nbytes for i in leaves.values()), ckpt_disk=disk_bytes(ck),
               largest_leaf_bytes=max(i.nbytes for i in leaves.values()), n_leaves=len(leaves),
               cold_cache=drop_caches())
    args = CLI + ["convert", str(ck), str(out), "--profile", "pi05_droid", *CAMS, "--weights-dtype", "bfloat16",
                  "--runtime-dtype", "bfloat16"]
    row["convert_s"], row["convert_peak_rss"], _ = cold(args)
    row["out_bytes"] = (out / "model.safetensors").stat().st_size
    row["reference"] = check_against_reference(out, "pi05", "bfloat16")
    row["lora_provenance"] = json.loads((out / "pibridge.json").read_text()).get("lora")
    keys = keys_of(out)
    shutil.rmtree(out)
    row["io_floor_s"], _, _ = cold([PY, "-c", IO_FLOOR, str(ck), str(floor), str(row["out_bytes"]), "sequential"])
    floor.unlink()
    row["time_ratio_to_floor"] = row["convert_s"] / row["io_floor_s"]
    shutil.rmtree(ck)
    return row, keys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/work/bench-tmp/lora"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "lora_full.json")
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    lora, lora_keys = one(a.workdir, "pi05-lora", True)
    print(json.dumps({k: v for k, v in lora.items() if k != "lora_provenance"}), flush=True)
    base, base_keys = one(a.workdir, "pi05-lora-factors-removed", False)
    print(json.dumps(base), flush=True)
    doc = {"lora": lora, "non_lora": base, "keys_identical": lora_keys == base_keys, "n_keys": len(lora_keys),
           "rss_over_non_lora": lora["convert_peak_rss"] - base["convert_peak_rss"],
           "rss_target": base["convert_peak_rss"] + LAYER_F32_SLICE,
           "rss_within_target": lora["convert_peak_rss"] <= base["convert_peak_rss"] + LAYER_F32_SLICE,
           "note": "non-LoRA baseline: the same base leaves and dtypes without the factor leaves; both written as "
                   "LeRobot's bf16 layout, one after the other on this shared VM"}
    a.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: v for k, v in doc.items() if k not in ("lora", "non_lora")}, indent=2))
    subprocess.run(["rm", "-rf", str(a.workdir)], check=False)
    return 0 if doc["keys_identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
