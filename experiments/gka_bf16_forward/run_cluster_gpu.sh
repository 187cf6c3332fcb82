#!/usr/bin/env bash
# GKA's bf16 forward with its solve split over a cluster of two blocks (PRIME_GKA_FORWARD_ITERATE=
# cluster, kernels/README.md gka_solve v8) on one Hopper GPU, in one call: every GKA bf16 forward test
# (the cluster form's o against the one-block warpgroup form's, bit for bit, and against float64), then
# `prime-bench kernels` on GKA's bf16 forward at (4,8192,32,128) and (1,8192,32,128), the one-block
# form (wgmma) and the cluster form alternating in one binary, memcheck and racecheck on the small
# shapes, a second round of timings, and each form's per-chunk kernel under ncu (its occupancy: two
# blocks of the cluster form per SM is the point). Steps run while the time left allows (DEADLINE_S
# seconds from the start, default 570). Results under $OUT, all.tgz among them.
#   bash experiments/gka_bf16_forward/run_cluster_gpu.sh
#   (builds prime_tests and prime-bench into build-gpu first: sm_90a; carry .deps)
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
deadline=$(( start + ${DEADLINE_S:-570} ))
source experiments/gpu/steps.sh  # left, run, begin_out
OUT=${OUT:-/tmp/prime-gka-cluster-out}
BIN=build-gpu/bin
begin_out
bash experiments/gpu/build_filtered.sh "$OUT" \
  '/lib/|/search/|/kernels/|/apps/prime-bench|/tests/reference/|/tests/test_kernels_(gka_forward_bf16|wgmma_layout)[.]cpp' \
  prime_tests prime-bench || exit 1
export PRIME_REQUIRE_CUDA=1
show() {  # show NAME REGEX [LINES]: the matching lines of a step's output, where it ran
  [ -f "$OUT/$1.txt" ] && grep -E "$2" "$OUT/$1.txt" | head -"${3:-30}"
}
bench() {  # bench ROUND FORM BATCH
  local name=kernels_bench_gka_bf16_b$3_$2_$1
  PRIME_GKA_FORWARD_ITERATE=$2 run 40 "$name" "$BIN/prime-bench" kernels --device cuda --types GKA --dtype bf16 \
    --no-backward --repeats 5 --batch "$3" && grep -E '^GKA' "$OUT/$name.txt"
}
run 150 gka_bf16_forward_tests "$BIN/prime_tests" "GKA bf16 forward*"
show gka_bf16_forward_tests "^\[kernels|FAILED|passed|failed|with expansion|<=" 60
for batch in 4 1; do for form in wgmma cluster; do bench 1 $form $batch; done; done
for tool in memcheck racecheck; do
  run 120 sanitizer_$tool compute-sanitizer --tool $tool "$BIN/prime_tests" "GKA bf16 forward: one small sequence*"
  show sanitizer_$tool "ERROR SUMMARY|RACECHECK SUMMARY" 2
done
for batch in 4 1; do for form in wgmma cluster; do bench 2 $form $batch; done; done
if command -v ncu > /dev/null; then
  for form in wgmma cluster; do
    PRIME_GKA_FORWARD_ITERATE=$form run 90 ncu_gka_bf16_forward_$form ncu \
      --kernel-name regex:'gka_forward_bf16_(cluster_)?kernel' --launch-count 1 --section SpeedOfLight \
      --section Occupancy --section WarpStateStats --section LaunchStats \
      "$BIN/prime-bench" kernels --device cuda --types GKA --dtype bf16 --no-backward --repeats 1 &&
      show ncu_gka_bf16_forward_$form "Duration|Achieved Occupancy|Block Limit|Cluster|Warp Cycles Per Issued" 12
  done
fi
echo "total: $(( $(date +%s) - start )) s"
