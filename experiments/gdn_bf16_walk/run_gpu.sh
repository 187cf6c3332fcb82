#!/usr/bin/env bash
# GDN's bf16 forward with the fused walk (the scan and the output in one kernel,
# kernels/gdn_chunk/gdn_forward_bf16_walk_kernels.cu) against the split walk, on one GPU in one call:
# builds prime_tests and prime-bench into build-gpu (sm_90a; carry .deps), runs every GDN bf16 test
# under each walk (PRIME_GDN_FORWARD_WALK, poisoned outputs, float64 bounds), memcheck and racecheck
# on the packed-documents test (both walks; it was the fused walk alone when results/ was taken), `prime-bench kernels --types GDN --dtype bf16` at
# (4,8192,32,128) and (4,8192,64,64) with the two walks alternating twice in one binary, then the
# walk kernel under ncu. Steps run while the time left allows (DEADLINE_S, default 560). Results
# under $OUT, all.tgz among them.
#   bash experiments/gdn_bf16_walk/run_gpu.sh [--no-build]
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
deadline=$(( start + ${DEADLINE_S:-560} ))
source experiments/gpu/steps.sh  # left, run, sanitize, begin_out
OUT=${OUT:-/tmp/prime-gdn-walk-out}
begin_out
if [ "${1:-}" != --no-build ]; then
  bash experiments/gdn_bf16_walk/build_gpu.sh "$OUT" || exit 1
fi
export PRIME_REQUIRE_CUDA=1
for walk in fused split; do
  PRIME_GDN_FORWARD_WALK=$walk run 90 gdn_bf16_tests_$walk build-gpu/bin/prime_tests "GDN bf16*,*PRIME_SSM_CORE*"
  grep -E "FAILED|passed|failed|vs float64|fused vs split" "$OUT/gdn_bf16_tests_$walk.txt" | head -30
done
bench() {  # bench ROUND WALK D
  local extra=() name=kernels_bench_gdn_bf16_d$3_$2_$1
  [ "$3" = 64 ] && extra=(--heads 64 --head-dim 64)
  PRIME_GDN_FORWARD_WALK=$2 run 40 "$name" build-gpu/bin/prime-bench kernels --device cuda --types GDN --dtype bf16 \
    --no-backward --repeats 5 "${extra[@]}" && grep -E '^GDN' "$OUT/$name.txt"
}
for round in 1 2; do
  for D in 128 64; do
    for walk in split fused; do bench $round $walk $D; done
  done
done
sanitize 100 sanitizer_fused "GDN bf16 fused forward over packed documents*"
if command -v ncu > /dev/null; then
  run 80 ncu_gdn_walk ncu --kernel-name regex:gdn_forward_walk_bf16_kernel --launch-count 1 --section SpeedOfLight \
    --section Occupancy --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \
    --section ComputeWorkloadAnalysis build-gpu/bin/prime-bench kernels --device cuda --types GDN --dtype bf16 \
    --no-backward --repeats 1
  grep -E "Duration|Issue Slots Busy|Warp Cycles Per Issued|Achieved Occupancy|L2 Cache Throughput|DRAM Throughput" \
    "$OUT/ncu_gdn_walk.txt" | head -8
fi
echo "total: $(( $(date +%s) - start )) s"
