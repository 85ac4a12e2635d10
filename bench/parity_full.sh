#!/usr/bin/env bash
# Full-size synthetic pi05 parity on this machine: synth (bf16, sharp attention) -> convert (bf16 weights and
# runtime, test tokenizer, folded normalizer epsilons) -> `pibridge parity run --precision bf16`, each stack's
# capture in its own process (per-stage wall time and peak RSS are in the report). Needs ~15 GB of disk and
# ~14 GB of RAM (the JAX capture's peak). Results: bench/results/parity_full_pi05_bf16.{json,log}.
#   bench/parity_full.sh [WORKDIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"; B="$root/.venv/bin"
work="${1:-/work/bench-parity}"; rm -rf "$work"; mkdir -p "$work"; cd "$work"
t0=$(date +%s)
"$B/pibridge" synth ck --variant pi05 --dtype bfloat16 --profile pi05_droid --asset-id droid --sharp-attention >/dev/null
"$B/pibridge" convert ck out --profile pi05_droid --camera-map base_0_rgb=top,left_wrist_0_rgb=wrist \
  --weights-dtype bfloat16 --runtime-dtype bfloat16 --tokenizer "$root/tests/data/test_spm.model" --fold-norm-eps
"$B/pibridge" parity obs --profile pi05_droid --batch 1 obs.safetensors
t1=$(date +%s)
set +e
"$B/pibridge" parity run --openpi ck --lerobot out --obs obs.safetensors --precision bf16 \
  --html report.html --json "$root/bench/results/parity_full_pi05_bf16.json" --workdir traces \
  > "$root/bench/results/parity_full_pi05_bf16.log" 2>&1
rc=$?
echo "synth+convert $((t1 - t0)) s, parity run $(( $(date +%s) - t1 )) s, exit $rc (report: $work/report.html)"
