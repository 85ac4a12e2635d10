"""Full-size LoRA pi05 convert (issue 17): wall and peak RSS against the I/O floor and the non-LoRA conversion, in
one run.

1. synth pi05 --lora both (OpenPI's variants: PaliGemma rank 16, expert rank 32; training layout, the llm base
   bf16, factors and the rest float32) and, as the non-LoRA baseline, pi05 training layout stored bf16 (same base
   tree; its SigLIP / heads are bf16 where the LoRA tree has them float32: noted in the JSON);
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


def one(work: Path, name: str, synth_args: list[str]) -> tuple[dict, dict]:
    ck, out, floor = work / name, work / f"{name}-out", work / "floor.bin"
    row = {"checkpoint": name}
    row["synth_s"], row["synth_peak_rss"], _ = run_measured(CLI + ["synth", str(ck), "--variant", "pi05",
                                                                  "--profile", "pi05_droid", "--asset-id", "droid",
                                                                  *synth_args])
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
    lora, lora_keys = one(a.workdir, "pi05-lora", ["--lora", "both"])
    print(json.dumps({k: v for k, v in lora.items() if k != "lora_provenance"}), flush=True)
    base, base_keys = one(a.workdir, "pi05-bf16", ["--layout", "training", "--dtype", "bfloat16"])
    print(json.dumps(base), flush=True)
    doc = {"lora": lora, "non_lora": base, "keys_identical": lora_keys == base_keys, "n_keys": len(lora_keys),
           "rss_over_non_lora": lora["convert_peak_rss"] - base["convert_peak_rss"],
           "rss_target": base["convert_peak_rss"] + LAYER_F32_SLICE,
           "rss_within_target": lora["convert_peak_rss"] <= base["convert_peak_rss"] + LAYER_F32_SLICE,
           "note": "non-LoRA baseline stored all-bf16 (SigLIP / heads bf16, 0.4 B params that the LoRA tree keeps "
                   "float32); both written as LeRobot's bf16 layout"}
    a.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: v for k, v in doc.items() if k not in ("lora", "non_lora")}, indent=2))
    subprocess.run(["rm", "-rf", str(a.workdir)], check=False)
    return 0 if doc["keys_identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
