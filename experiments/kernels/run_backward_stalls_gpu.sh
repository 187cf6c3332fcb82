#!/usr/bin/env bash
# Where the bf16 backwards of GDN and Mamba-2 SSD spend their time, on one GPU, in one call: builds
# prime-bench and prime_tests into build-gpu (sm_90a; carry .deps), then at (4,8192,32,128), bf16:
#   - ncu's kernel times of one fwd+bwd of each type (ncu_times_{GDN,M2}.txt, summed per kernel);
#   - the speed of light, occupancy, stall reasons, scheduler and memory sections, and the stall samples
#     by SASS line (experiments/gpu/ncu_source_summary.py), of GDN's fused reverse walk and of SSD's
#     gradient kernel and reverse walk (the walk's second launch of a fwd+bwd);
#   - racecheck on GDN's small training shape (the forward's warpgroup walk among its cases).
# Results under $OUT, all.tgz among them.
# SKIP_TIMES=1 leaves out the kernel times, SKIP_RACECHECK=1 the racecheck.
#   bash experiments/kernels/run_backward_stalls_gpu.sh [--no-build]
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
deadline=$(( start + ${DEADLINE_S:-560} ))
source experiments/gpu/steps.sh  # left, run, sanitize, begin_out
OUT=${OUT:-/tmp/prime-backward-stalls-out}
begin_out
command -v ncu > /dev/null || { echo "no ncu on this machine"; exit 1; }
if [ "${1:-}" != --no-build ]; then
  bash experiments/gpu/build_filtered.sh "$OUT" \
    '/lib/|/search/|/kernels/|/apps/prime-bench|/tests/reference/|/tests/test_kernels_gdn[.]cpp' \
    prime-bench prime_tests || exit 1
fi
export PRIME_REQUIRE_CUDA=1
types="GDN M2"
[ -n "${SKIP_TIMES:-}" ] && types=""
for type in $types; do
  run 60 "ncu_times_$type" ncu --profile-from-start off --metrics gpu__time_duration.sum \
      build-gpu/bin/prime-bench kernels --device cuda --dtype bf16 --types "$type" --profile &&
    python3 experiments/gpu/ncu_kernel_summary.py "$OUT/ncu_times_$type.txt" "$type bf16 fwd+bwd" |
      tee "$OUT/ncu_times_${type}_summary.txt" | head -16
done
sections=(--section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats
          --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section SourceCounters)
# stalls NAME KERNEL_REGEX SKIP TYPE: one launch of the kernel (after SKIP of them) in a fwd+bwd: its
# sections, then its stall samples by SASS line (NAME_source.txt, ncu_source_summary.py's digest).
stalls() {
  run 90 "$1_run" ncu --kernel-name "regex:$2" --launch-skip "$3" --launch-count 1 "${sections[@]}" -f \
      --export "$OUT/$1" build-gpu/bin/prime-bench kernels --device cuda --dtype bf16 --repeats 1 --types "$4"
  [ -f "$OUT/$1.ncu-rep" ] || return 1
  ncu --import "$OUT/$1.ncu-rep" --page details > "$OUT/$1.txt" 2>&1
  grep -E '^ +Duration' "$OUT/$1.txt" | head -1 | tr -s ' '
  ncu --import "$OUT/$1.ncu-rep" --page source --print-source sass --csv > "$OUT/$1_source.csv" 2>&1 &&
    python3 experiments/gpu/ncu_source_summary.py "$OUT/$1_source.csv" > "$OUT/$1_source.txt" 2>&1
  head -24 "$OUT/$1_source.txt"
  rm -f "$OUT/$1.ncu-rep" "$OUT/$1_source.csv"
}
stalls ncu_gdn_reverse_walk gdn_backward_walk_bf16_kernel 0 GDN
stalls ncu_ssd_grad ssd_backward_grad_bf16_kernel 0 M2
stalls ncu_ssd_reverse_walk ssd_walk_bf16_kernel 1 M2
for name in ncu_gdn_reverse_walk ncu_ssd_grad ncu_ssd_reverse_walk; do
  f=$OUT/$name.txt
  [ -f "$f" ] || continue
  echo "== $name"
  grep -E 'Duration|Achieved Occupancy|Warp Cycles Per Issued|Issue Slots Busy|Registers Per|Stall|stall' "$f" |
    head -16
done | tee "$OUT/summary.txt"
[ -n "${SKIP_RACECHECK:-}" ] ||
  run 150 racecheck_gdn_training compute-sanitizer --tool racecheck build-gpu/bin/prime_tests \
    "GDN trained on the bf16 forward: a small shape for the sanitizer"
grep -E "RACECHECK SUMMARY|passed|failed" "$OUT/racecheck_gdn_training.txt" 2>/dev/null | tail -2
echo "total: $(( $(date +%s) - start )) s"
