#!/usr/bin/env bash
# Full-size synthetic pi05 in the real LeRobot 0.6.1 (bf16 weights, bf16 runtime), judged by the bf16 allowance
# (docs/DESIGN.md "Parity"; pibridge/configs/allowance.json): REF = JAX stack float32 (the exact answer),
# BASE = JAX stack bf16 (bit-exact with OpenPI's own bf16 inference), CAND = real LeRobot 0.6.1 bf16, runtime fixes
# on (expected: pass) and off (expected: fail at the RoPE stages). Every capture in its own process, one full
# model at a time; all four see OpenPI's preprocessed inputs of one observation (REF's --save-inputs), so the
# comparison is about the model, not about resizing. Needs ~16 GB of disk and ~19 GB of RAM (the LeRobot load).
# Results: bench/results/allowance_full_pi05_bf16.{md,fixed.json,nofix.json}.
#   bench/allowance_full.sh [WORKDIR]          (VARIANT=tiny-pi05 for a quick dry run of the script itself)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"; B="$root/.venv/bin"; LR="$root/.venvs/lr-0.6.1/bin"
work="${1:-/work/bench-allowance}"; rm -rf "$work"; mkdir -p "$work"; cd "$work"
res="$root/bench/results/allowance_full_pi05_bf16"; tok="$root/tests/data/test_spm.model"
variant="${VARIANT:-pi05}"; tiny=()
if [ "$variant" != pi05 ]; then  # LeRobot builds only full sizes: the tests' configuration-only patch for tiny ones
  tiny=(--allow-tiny); res="$work/allowance_$variant"
  export PIBRIDGE_LEROBOT_PRELOAD="$root/tests/lerobot/tiny_patch.py"
fi
timed() { local name=$1; shift; /usr/bin/time -f "$name %e s %M KB" -a -o times.txt "$@"; }
"$B/pibridge" synth ck --variant "$variant" --dtype bfloat16 --profile pi05_droid --asset-id droid --sharp-attention >/dev/null
"$B/pibridge" convert ck out --profile pi05_droid --camera-map base_0_rgb=top,left_wrist_0_rgb=wrist \
  --weights-dtype bfloat16 --runtime-dtype bfloat16 --tokenizer "$tok" --fold-norm-eps "${tiny[@]}" >/dev/null
"$B/pibridge" parity obs --profile pi05_droid --batch 1 obs.safetensors >/dev/null
timed jax-float32 "$B/pibridge" parity capture --stack jax --openpi ck --obs obs.safetensors --out ref.safetensors \
  --precision float32 --tokenizer "$tok" --save-inputs inputs.safetensors
timed jax-bf16 "$B/pibridge" parity capture --stack jax --openpi ck --obs obs.safetensors --out base.safetensors \
  --precision bf16 --tokenizer "$tok" --shared-inputs inputs.safetensors
for fixes in fixes no-fixes; do
  timed "lerobot-0.6.1-bf16-$fixes" "$LR/pibridge" parity capture --stack lerobot --lerobot out --obs obs.safetensors \
    --out "lr-$fixes.safetensors" --precision bf16 --shared-inputs inputs.safetensors "--$fixes"
done
set +e
"$B/pibridge" parity compare lr-fixes.safetensors --reference ref.safetensors --baseline base.safetensors \
  --json "$res.fixed.json" > fixed.txt 2>&1; rc_fixed=$?
"$B/pibridge" parity compare lr-no-fixes.safetensors --reference ref.safetensors --baseline base.safetensors \
  --json "$res.nofix.json" > nofix.txt 2>&1; rc_nofix=$?
set -e
{
  echo "# Full-size pi05 (bf16) in the real LeRobot 0.6.1, judged by the bf16 allowance"
  echo
  echo "bench/allowance_full.sh, $(date -u +%F), this machine (CPU). Exit codes: fixes on $rc_fixed (0 = pass),"
  echo "fixes off $rc_nofix (1 = a stage broke its allowance). Capture wall time and peak RSS:"
  echo; sed 's/^/    /' times.txt; echo
  echo "## Runtime fixes on"; echo; sed 's/^/    /' fixed.txt; echo
  echo "## Runtime fixes off"; echo; sed 's/^/    /' nofix.txt
} > "$res.md"
echo "fixes on: exit $rc_fixed, fixes off: exit $rc_nofix ($res.md)"
