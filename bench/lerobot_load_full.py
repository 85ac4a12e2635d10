"""Full-size synthetic pi0 / pi05 (bf16) loaded by the real LeRobot 0.6.1 and 0.5.1, checked by pibridge.

For each model: `pibridge synth` (bf16), then for each LeRobot release `pibridge convert --lerobot-version V
--weights-dtype bfloat16 --runtime-dtype bfloat16` and, in that release's venv (tools/lerobot_env.sh),
LOAD_ONE (pibridge.parity.stacks.lerobot.loader.load_only): the real `from_pretrained`, then pibridge compares
every tensor of OUT/model.safetensors with the loaded state dict (missing, unexpected, wrong shape, wrong value).
`mmap_load_file()` first: LeRobot's loader gets a memory-mapped view of the file instead of safetensors' in-memory
copy (same keys and bytes; LeRobot's own key fixing and load_state_dict run unchanged): LeRobot 0.5.1 otherwise peaks above
the ~23 GiB of this machine for a full-size bf16 pi0 (OOM-killed at 23.3 GB anonymous RSS).
One full model at a time (a LeRobot 0.6.1 bf16 load peaks at ~19 GB; 0.5.1 needs ~35-40 GB, i.e. swap on this
machine: see the notes in the results); each OUT and checkpoint is deleted after use.
Needs ~12 GB of disk. Results: bench/results/lerobot_load_full.{json,md}.

    .venv/bin/python bench/lerobot_load_full.py [--workdir /work/bench-lr] [--models pi0,pi05] [--lerobot 0.6.1,0.5.1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from synth_full import run_measured  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLI = [str(ROOT / ".venv" / "bin" / "pibridge")]
CAMS = ["--camera-map", "base_0_rgb=top,left_wrist_0_rgb=wrist"]
LOAD_ONE = ("import json, sys; from pibridge.parity.stacks.lerobot import loader; loader.mmap_load_file(); "
            "print(json.dumps(loader.load_only(sys.argv[1])))")


def swap_used() -> int:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return (int(info["SwapTotal"].split()[0]) - int(info["SwapFree"].split()[0])) * 1024


class SwapPeak:
    """Largest swap use seen while the block runs (polled every 0.2 s): a load that needs more than the machine's
    RAM completes only with swap, and its resident peak alone would understate what it needs."""

    def __enter__(self):
        self.peak, self._stop = swap_used(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, swap_used())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def load_one(ck: Path, out: Path, model: str, lerobot: str) -> dict:
    convert = CLI + ["convert", str(ck), str(out), "--profile", f"{model}_droid", *CAMS, "--lerobot-version", lerobot,
                     "--weights-dtype", "bfloat16", "--runtime-dtype", "bfloat16",
                     "--tokenizer", str(ROOT / "tests" / "data" / "test_spm.model")]
    convert_s, convert_rss, _ = run_measured(convert)
    py = ROOT / ".venvs" / f"lr-{lerobot}" / "bin" / "python"
    swap_before = swap_used()
    with SwapPeak() as swap:
        load_s, load_rss, printed = run_measured([str(py), "-c", LOAD_ONE, str(out)])
    shutil.rmtree(out)
    row = json.loads(printed.strip().splitlines()[-1])
    row.update(model=model, lerobot_version=lerobot, weights_given_as="mmap", convert_s=round(convert_s, 1), convert_peak_rss=convert_rss,
               load_wall_s=round(load_s, 1), load_peak_rss=load_rss, load_peak_swap=max(0, swap.peak - swap_before))
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["# Full-size synthetic checkpoints (bf16) loaded by the real LeRobot, checked by pibridge",
             "", f"Measured {time.strftime('%Y-%m-%d')} on this machine (CPU) by bench/lerobot_load_full.py.", "",
             "| model | LeRobot | transformers | torch | file keys | missing | unexpected | wrong shape | wrong value "
             "| load wall | load peak RSS | peak swap used | file handed to LeRobot | convert wall |", "|---" * 14 + "|"]
    for r in rows:
        v = r["versions"]
        swap = f"{r['load_peak_swap'] / 1e9:.2f} GB" if "load_peak_swap" in r else "-"
        lines.append(f"| {r['model']} | {v['lerobot']} | {v['transformers']} | {v['torch']} | {r['load_keys']} | "
                     f"{r['missing']} | {r['unexpected']} | {r['wrong_shape']} | {r['wrong_value']} | "
                     f"{r['load_wall_s']:.0f} s | {r['load_peak_rss'] / 1e9:.2f} GB | {swap} | "
                     f"{r.get('weights_given_as', 'load_file (in memory)')} | {r['convert_s']:.0f} s |")
    lines += ["", NOTES]
    return "\n".join(lines) + "\n"


NOTES = """\
Reading the table: "file keys" is the number of tensors in OUT/model.safetensors; missing / unexpected compare the
policy's state dict with the file; wrong shape / wrong value compare every tensor of the file with the loaded one
(pibridge's check; LeRobot itself only prints a warning). With "mmap" LeRobot's loader gets a memory-mapped view of
the file, so the peak RSS includes the file's ~6.5-6.7 GB of page cache (reclaimable) on top of the model.
Both releases build the model in float32 and cast it to bf16 afterwards (lerobot 0.5.1
policies/pi0/modeling_pi0.py:369-397, 0.6.1 :216-244, pi05 likewise), but LeRobot 0.5.1 with its transformers 5.3.0
needs far more than this machine's ~23 GiB for a full-size bf16 load (OOM-killed at 23.3 GB anonymous RSS, with or
without mmap; where inside transformers 5.3.0 the extra memory goes was not investigated). Those rows ran with a
temporary 24 GB swap file; "peak swap used" is the machine-wide swap in use during the load (SwapPeak), so 0.5.1
needs roughly 35-40 GB in all. LeRobot 0.6.1 loads without swap (0 bytes swapped while it was available)."""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/work/bench-lr")
    ap.add_argument("--models", default="pi0,pi05")
    ap.add_argument("--append", action="store_true", help="keep the rows already in the results file")
    ap.add_argument("--lerobot", default="0.6.1,0.5.1")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "lerobot_load_full"))
    a = ap.parse_args()
    work = Path(a.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows = json.loads(Path(a.out + ".json").read_text()) if a.append and Path(a.out + ".json").exists() else []
    for model in a.models.split(","):
        ck = work / f"{model}-ck"
        subprocess.run(CLI + ["synth", str(ck), "--variant", model, "--dtype", "bfloat16", "--profile",
                              f"{model}_droid", "--asset-id", "droid"], check=True, stdout=subprocess.DEVNULL)
        for lerobot in a.lerobot.split(","):
            rows.append(load_one(ck, work / f"{model}-out-{lerobot}", model, lerobot))
            print(json.dumps(rows[-1]), flush=True)
            Path(a.out + ".json").write_text(json.dumps(rows, indent=2))
            Path(a.out + ".md").write_text(markdown(rows))
        shutil.rmtree(ck)
    bad = [r for r in rows if r["missing"] or r["unexpected"] or r["wrong_shape"] or r["wrong_value"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
