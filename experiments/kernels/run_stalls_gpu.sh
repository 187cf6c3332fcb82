#!/usr/bin/env bash
# Where the bf16 forwards of GKA and GDN wait, on one GPU, in one call: builds prime-bench into
# build-gpu (sm_90a; carry .deps), then ncu on one forward at (4,8192,32,128) each, bf16 q, k, v:
# GKA's per-chunk kernel in its default form (the warpgroup MMAs on Hopper; also at
# (4,8192,64,64)) and GDN's prep, scan and output kernels, with the speed of light, occupancy,
# warp-state (stall reasons), scheduler and memory sections; GKA's per-chunk kernel also with its
# source counters (the SASS lines its warps stall on most). Results under $OUT, all.tgz among them.
#   bash experiments/kernels/run_stalls_gpu.sh [--no-build]
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
OUT=${OUT:-/tmp/prime-stalls-out}
mkdir -p "$OUT"
trap 'bash experiments/gpu/pack_out.sh "$OUT"' EXIT  # all.tgz: every file, for the runner's few
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/machine.txt" 2>&1
command -v ncu > /dev/null || { echo "no ncu on this machine"; exit 1; }
if [ "${1:-}" != --no-build ]; then
  bash experiments/gpu/build_filtered.sh "$OUT" '/lib/|/search/|/kernels/|/apps/prime-bench' prime-bench || exit 1
fi
sections=(--section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats
          --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis)
# profile NAME KERNEL_REGEX EXTRA_NCU_ARGS... -- BENCH_ARGS...: one launch of the kernel under ncu.
profile() {
  local name=$1 kernel=$2; shift 2
  local ncu_args=() bench_args=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do ncu_args+=("$1"); shift; done
  shift
  bench_args=("$@")
  timeout 150 ncu --kernel-name "regex:$kernel" --launch-count 1 "${sections[@]}" "${ncu_args[@]}" \
    build-gpu/bin/prime-bench kernels --device cuda --dtype bf16 --no-backward --repeats 1 "${bench_args[@]}" \
    > "$OUT/$name.txt" 2>&1
  echo "$name: exit $?, $(grep -E '^ +Duration' "$OUT/$name.txt" | head -1 | tr -s ' ')"
}
profile ncu_gka_forward_d128 gka_forward_bf16_kernel --section SourceCounters -- --types GKA
profile ncu_gka_forward_d64 gka_forward_bf16_kernel -- --types GKA --heads 64 --head-dim 64
for part in prep scan output; do
  profile ncu_gdn_forward_$part "gdn_forward_${part}_bf16_kernel" -- --types GDN
done
# The stall reasons side by side: ncu's warp-state lines of each kernel.
for f in "$OUT"/ncu_*.txt; do
  echo "== $(basename "$f" .txt)"
  grep -E 'Duration|Achieved Occupancy|Warp Cycles Per Issued|Issue Slots Busy|Stall|stall' "$f" | head -14
done | tee "$OUT/summary.txt"
echo "total: $(( $(date +%s) - start )) s"
