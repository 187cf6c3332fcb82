#!/usr/bin/env bash
# GKA's bf16 forward with its solve on the warpgroup MMAs (PRIME_GKA_FORWARD_ITERATE=wgmma,
# kernels/README.md gka_solve v7) on one Hopper GPU, in one call: the warpgroup products against
# float64 ([wgmma]), every GKA bf16 forward test (the wgmma form held to the float64 bound), then
# `prime-bench kernels` on GKA's bf16 forward at (4,8192,32,128) and (4,8192,64,64), the register
# form and the wgmma form alternating in one binary, memcheck and racecheck on a small shape, a
# second round of timings, and the per-chunk kernel of each form under ncu. Steps run in that order
# while the time left allows (DEADLINE_S seconds from the start, default 570), so a short call still
# answers the first questions. Results under $OUT.
#   bash experiments/gka_bf16_forward/run_wgmma_gpu.sh [--build] [BIN]
#   --build: first build prime_tests and prime-bench into build-gpu (sm_90a, only what these need;
#   carry .deps); BIN: the folder with prime_tests and prime-bench, default build-gpu/bin.
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
deadline=$(( start + ${DEADLINE_S:-570} ))
source experiments/gpu/steps.sh  # left, run, begin_out
OUT=${OUT:-/tmp/prime-gka-wgmma-out}
build=0
[ "${1:-}" = --build ] && { build=1; shift; }
BIN=${1:-build-gpu/bin}
begin_out
if [ $build = 1 ]; then
  bash experiments/gpu/build_filtered.sh "$OUT" \
    '/lib/|/search/|/kernels/|/apps/prime-bench|/tests/reference/|/tests/test_kernels_(gka_forward_bf16|wgmma|wgmma_layout|gdn)[.]cpp' \
    prime_tests prime-bench || exit 1
fi
export PRIME_REQUIRE_CUDA=1
show() {  # show NAME REGEX [LINES]: the matching lines of a step's output, where it ran
  [ -f "$OUT/$1.txt" ] && grep -E "$2" "$OUT/$1.txt" | head -"${3:-30}"
}
bench() {  # bench ROUND FORM [D]
  local round=$1 form=$2 extra=() tag=""
  [ "${3:-128}" = 64 ] && { extra=(--heads 64 --head-dim 64); tag=_d64; }
  PRIME_GKA_FORWARD_ITERATE=$form run 40 "kernels_bench_gka_bf16${tag}_${form}_$round" "$BIN/prime-bench" kernels \
    --device cuda --types GKA --dtype bf16 --no-backward --repeats 5 "${extra[@]}" &&
    grep -E '^GKA' "$OUT/kernels_bench_gka_bf16${tag}_${form}_$round.txt"
}
run 60 wgmma_tests "$BIN/prime_tests" "[wgmma]"
show wgmma_tests "^\[kernels|FAILED|passed|failed|with expansion|<="
run 120 gka_bf16_forward_tests "$BIN/prime_tests" "GKA bf16 forward*"
show gka_bf16_forward_tests "^\[kernels|FAILED|passed|failed|with expansion|<=" 60
for form in registers wgmma; do bench 1 $form; done
for form in registers wgmma; do bench 1 $form 64; done
for tool in memcheck racecheck; do
  run 120 sanitizer_$tool compute-sanitizer --tool $tool "$BIN/prime_tests" \
    "wgmma: the warpgroup*,GKA bf16 forward: one small sequence*"
  show sanitizer_$tool "ERROR SUMMARY|RACECHECK SUMMARY" 2
done
for form in registers wgmma; do bench 2 $form; done
for form in registers wgmma; do bench 2 $form 64; done
# The per-chunk kernel alone under ncu (one launch, ncu's locked clock; v6's register form took 15.35
# ms this way: kernels/README.md), both forms, with the issue and tensor-pipe figures.
if command -v ncu > /dev/null; then
  for form in registers wgmma; do
    PRIME_GKA_FORWARD_ITERATE=$form run 90 ncu_gka_bf16_forward_$form ncu --kernel-name regex:gka_forward_bf16_kernel \
      --launch-count 1 --section SpeedOfLight --section ComputeWorkloadAnalysis --section Occupancy \
      "$BIN/prime-bench" kernels --device cuda --types GKA --dtype bf16 --no-backward --repeats 1 &&
      grep -E 'Duration' "$OUT/ncu_gka_bf16_forward_$form.txt" | head -1
  done
fi
echo "total: $(( $(date +%s) - start )) s"
