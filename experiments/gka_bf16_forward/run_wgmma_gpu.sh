#!/usr/bin/env bash
# GKA's bf16 forward with its solve on the warpgroup MMAs (PRIME_GKA_FORWARD_ITERATE=wgmma,
# kernels/README.md gka_solve v7) on one Hopper GPU, in one call (~4 min after the build): the
# warpgroup products against float64 ([wgmma]), every GKA bf16 forward test (the wgmma form held to
# the float64 bound and run small under memcheck and racecheck), then `prime-bench kernels` on GKA's
# bf16 forward at (4,8192,32,128) and (4,8192,64,64), the register form and the wgmma form
# alternating twice in one binary, and the per-chunk kernel of each under ncu. Results under $OUT.
#   bash experiments/gka_bf16_forward/run_wgmma_gpu.sh [BIN]   (BIN: the folder with prime_tests and
#   prime-bench; default build-gpu/bin, built by experiments/gpu/run_on_gpu.sh build)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/prime-gka-wgmma-out}
BIN=${1:-build-gpu/bin}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/machine.txt" 2>&1
export PRIME_REQUIRE_CUDA=1
timeout 120 "$BIN/prime_tests" "[wgmma]" > "$OUT/wgmma_tests.txt" 2>&1
echo "[wgmma]: exit $?"; grep -E "^\[kernels|FAILED|passed|failed|with expansion|<=" "$OUT/wgmma_tests.txt" | head -30
timeout 200 "$BIN/prime_tests" "GKA bf16 forward*" > "$OUT/gka_bf16_forward_tests.txt" 2>&1
echo "GKA bf16 forward tests: exit $?"
grep -E "^\[kernels|FAILED|passed|failed|with expansion|<=" "$OUT/gka_bf16_forward_tests.txt" | head -60
for tool in memcheck racecheck; do
  timeout 150 compute-sanitizer --tool $tool "$BIN/prime_tests" "wgmma: the warpgroup*,GKA bf16 forward: one small sequence*" \
    > "$OUT/sanitizer_$tool.txt" 2>&1
  echo "$tool: exit $?, $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitizer_$tool.txt" | tail -1)"
done
for round in 1 2; do
  for form in registers wgmma; do
    PRIME_GKA_FORWARD_ITERATE=$form timeout 100 "$BIN/prime-bench" kernels --device cuda --types GKA --dtype bf16 \
      --no-backward --repeats 5 > "$OUT/kernels_bench_gka_bf16_${form}_$round.txt" 2>&1
    echo "$form, round $round: exit $?, $(grep -E '^GKA' "$OUT/kernels_bench_gka_bf16_${form}_$round.txt")"
    PRIME_GKA_FORWARD_ITERATE=$form timeout 100 "$BIN/prime-bench" kernels --device cuda --types GKA --dtype bf16 \
      --no-backward --repeats 5 --heads 64 --head-dim 64 > "$OUT/kernels_bench_gka_bf16_d64_${form}_$round.txt" 2>&1
    echo "$form D=64, round $round: exit $?, $(grep -E '^GKA' "$OUT/kernels_bench_gka_bf16_d64_${form}_$round.txt")"
  done
done
# The per-chunk kernel alone under ncu (one launch, ncu's locked clock; v6's register form took 15.35
# ms this way: kernels/README.md), both forms, with the issue and tensor-pipe figures.
if command -v ncu > /dev/null; then
  for form in registers wgmma; do
    PRIME_GKA_FORWARD_ITERATE=$form timeout 200 ncu --kernel-name regex:gka_forward_bf16_kernel --launch-count 1 \
      --section SpeedOfLight --section ComputeWorkloadAnalysis --section Occupancy \
      "$BIN/prime-bench" kernels --device cuda --types GKA --dtype bf16 --no-backward --repeats 1 \
      > "$OUT/ncu_gka_bf16_forward_$form.txt" 2>&1
    echo "ncu, $form: exit $?, $(grep -E 'Duration' "$OUT/ncu_gka_bf16_forward_$form.txt" | head -1)"
  done
fi
