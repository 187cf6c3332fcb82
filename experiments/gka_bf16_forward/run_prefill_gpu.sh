#!/usr/bin/env bash
# The 8B-shape GKA 1:3 hybrid's 4K prefill under PRIME_SSM_CORE=bf16 (GKA's bf16 forward in every
# replaced layer) with the solve on the warpgroup MMAs (the default on Hopper, asked for by name
# here) and in registers, alternating in one binary while the time allows (DEADLINE_S, default 450 s, from the start).
# Builds lib/ and prime-bench into build-gpu first (sm_90a; carry .deps). Results under $OUT.
#   bash experiments/gka_bf16_forward/run_prefill_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
deadline=$(( start + ${DEADLINE_S:-450} ))
OUT=${OUT:-/tmp/prime-gka-prefill-out}
mkdir -p "$OUT"
trap 'bash experiments/gpu/pack_out.sh "$OUT"' EXIT  # all.tgz: every file, for the runner's few
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/machine.txt" 2>&1
bash experiments/gpu/build_filtered.sh "$OUT" '/lib/|/search/|/kernels/|/apps/prime-bench' prime-bench || exit 1
hbm=$(nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && echo 4800 || echo 3350)
for round in 1 2 3; do
  for form in wgmma registers; do
    left=$(( deadline - $(date +%s) ))
    [ $left -lt 60 ] && { echo "$form $round: skipped, $left s left"; continue; }
    name=prefill_4k_gka_1to3_ssm_core_bf16_${form}_$round
    PRIME_SSM_CORE=bf16 PRIME_GKA_FORWARD_ITERATE=$form timeout $(( left - 5 )) build-gpu/bin/prime-bench decode \
      --device cuda --model synthetic:qwen3-8b+convert:GKA:1:3 --mode eager --prompt 4096 --new-tokens 8 \
      --hbm-gbps "$hbm" > "$OUT/$name.txt" 2>&1
    echo "$name: exit $?, $(grep -E '^synthetic.* eager ' "$OUT/$name.txt" | head -1)"
  done
done
echo "total: $(( $(date +%s) - start )) s"
