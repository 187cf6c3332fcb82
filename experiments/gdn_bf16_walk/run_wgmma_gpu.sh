#!/usr/bin/env bash
# GDN's fused walk on the warpgroup MMAs (PRIME_GDN_FORWARD_WALK=wgmma) on one Hopper GPU in one call:
# builds build-gpu (sm_90a; carry .deps), runs the [wgmma] products and the GDN bf16 tests (the
# wgmma walk's own test among them) with PRIME_REQUIRE_CUDA=1, memcheck and racecheck over the wgmma
# walk's test, then `prime-bench kernels --types GDN --dtype bf16` with the fused (mma.sync) and the
# wgmma walk alternating twice at (4,8192,32,128), (2,8192,32,128) and (1,4096,32,128), and both walk
# kernels under ncu at (4,8192,32,128). Steps run while the time left allows (DEADLINE_S, default
# 560). Results under $OUT, all.tgz among them.
#   bash experiments/gdn_bf16_walk/run_wgmma_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
deadline=$(( start + ${DEADLINE_S:-560} ))
source experiments/gpu/steps.sh  # left, run, sanitize, begin_out
OUT=${OUT:-/tmp/prime-gdn-wgmma-out}
begin_out
bash experiments/gdn_bf16_walk/build_gpu.sh "$OUT" || exit 1
export PRIME_REQUIRE_CUDA=1
run 60 wgmma_products build-gpu/bin/prime_tests "[wgmma]"
grep -E "vs float64|FAILED|passed|failed" "$OUT/wgmma_products.txt" | tail -16
run 120 gdn_bf16_tests build-gpu/bin/prime_tests "GDN bf16*,*PRIME_SSM_CORE*"
grep -E "wgmma|FAILED|passed|failed" "$OUT/gdn_bf16_tests.txt" | tail -20
sanitize 120 sanitizer "GDN bf16 fused forward: the walk on the warpgroup MMAs*"
for round in 1 2; do
  for B_T in 4,8192 2,8192 1,4096; do
    for walk in fused wgmma; do
      name=kernels_bench_gdn_bf16_b${B_T%,*}_t${B_T#*,}_${walk}_$round
      PRIME_GDN_FORWARD_WALK=$walk run 25 "$name" build-gpu/bin/prime-bench kernels --device cuda --types GDN \
        --dtype bf16 --no-backward --repeats 5 --batch "${B_T%,*}" --tokens "${B_T#*,}" &&
        grep -E '^GDN +\(' "$OUT/$name.txt" | head -1
    done
  done
done
if command -v ncu > /dev/null; then
  for walk in fused wgmma; do
    PRIME_GDN_FORWARD_WALK=$walk run 60 ncu_gdn_walk_$walk ncu --kernel-name regex:gdn_forward_walk --launch-count 1 \
      --section SpeedOfLight --section WarpStateStats \
      --metrics sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active \
      build-gpu/bin/prime-bench kernels --device cuda --types GDN --dtype bf16 --no-backward --repeats 1 \
      --batch 4 --tokens 8192
    grep -E "Duration|hmma|Warp Cycles Per Issued" "$OUT/ncu_gdn_walk_$walk.txt" | head -4
  done
fi
echo "total: $(( $(date +%s) - start )) s"
