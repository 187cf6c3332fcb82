#!/usr/bin/env bash
# GDN's bf16 forward, fused walk against split walk, where a walk has few blocks: one sequence of
# the 8B shape's GDN layer, (1,4096,32,128) and (1,32768,32,128) in `prime-bench kernels` (a block
# per head: 32 fused blocks against 64 split ones), then the 8B-shape GDN 1:3 hybrid's 4K prefill
# under PRIME_SSM_CORE=bf16 (`prime-bench decode --prefill-repeats 5`), the walks alternating twice
# in one binary; last, prep's kernel under ncu with its stalls by SASS line. Builds build-gpu first
# (sm_90a; carry .deps) unless --no-build. Steps run while the time left allows (DEADLINE_S, default
# 420). Results under $OUT, all.tgz among them.
#   bash experiments/gdn_bf16_walk/run_shapes_gpu.sh [--no-build]
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
deadline=$(( start + ${DEADLINE_S:-420} ))
source experiments/gpu/steps.sh  # left, run, begin_out
OUT=${OUT:-/tmp/prime-gdn-walk-shapes-out}
begin_out
if [ "${1:-}" != --no-build ]; then
  bash experiments/gpu/build_filtered.sh "$OUT" '/lib/|/search/|/kernels/|/apps/prime-bench' prime-bench || exit 1
fi
for round in 1 2; do
  for T in 4096 32768; do
    for walk in split fused; do
      name=kernels_bench_gdn_bf16_b1_t${T}_${walk}_$round
      PRIME_GDN_FORWARD_WALK=$walk run 30 $name build-gpu/bin/prime-bench kernels --device cuda --types GDN \
        --dtype bf16 --no-backward --repeats 5 --batch 1 --tokens $T && grep -E '^GDN +\(' "$OUT/$name.txt"
    done
  done
done
for round in 1 2; do
  for walk in split fused; do
    name=prefill_4k_gdn_1to3_ssm_core_bf16_${walk}_$round
    PRIME_SSM_CORE=bf16 PRIME_GDN_FORWARD_WALK=$walk run 60 $name build-gpu/bin/prime-bench decode --device cuda \
      --model synthetic:qwen3-8b+convert:GDN:1:3 --mode eager --prompt 4096 --new-tokens 8 --prefill-repeats 5 &&
      grep -E '^synthetic.* eager ' "$OUT/$name.txt" | head -1
  done
done
if command -v ncu > /dev/null; then
  run 60 ncu_gdn_prep_source ncu --kernel-name regex:gdn_forward_prep_bf16 --launch-count 1 --section WarpStateStats \
    --section SourceCounters --page source --print-source sass --csv build-gpu/bin/prime-bench kernels --device cuda \
    --types GDN --dtype bf16 --no-backward --repeats 1
  head -c 600 "$OUT/ncu_gdn_prep_source.txt"; echo
fi
echo "total: $(( $(date +%s) - start )) s"
