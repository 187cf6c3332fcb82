#!/usr/bin/env bash
# A candidate for the shapes where the split walk is still faster (few heads): the fused walk with
# two blocks of 8 warps per head at D = 128, 64 value columns each (fused64.patch: the walk kernel
# templated on its columns, PRIME_GDN_FORWARD_WALK=fused64; each block forms the chunk's scores).
# Not in the tree: this applies the patch (taken back on exit), builds build-gpu (sm_90a; carry
# .deps), runs every GDN bf16 test (the walks' agreement and packed-documents tests then cover
# fused64 too), memcheck and racecheck on the packed documents, and `prime-bench kernels --types
# GDN --dtype bf16` for the three walks alternating twice at (1,4096), (1,32768), (2,8192) and
# (4,8192) with 32 heads of 128. Steps run while the time left allows (DEADLINE_S, default 540).
#   bash experiments/gdn_bf16_walk/run_fused64_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
deadline=$(( start + ${DEADLINE_S:-540} ))
source experiments/gpu/steps.sh  # left, run, sanitize
OUT=${OUT:-/tmp/prime-gdn-fused64-out}
mkdir -p "$OUT"
patch=experiments/gdn_bf16_walk/fused64.patch
patch -p1 -s < "$patch" || { echo "$patch does not apply"; exit 1; }
trap 'patch -p1 -R -s < "$patch"; bash experiments/gpu/pack_out.sh "$OUT"' EXIT
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/machine.txt" 2>&1
bash experiments/gdn_bf16_walk/build_gpu.sh "$OUT" || exit 1
export PRIME_REQUIRE_CUDA=1
run 90 gdn_bf16_tests build-gpu/bin/prime_tests "GDN bf16*,*PRIME_SSM_CORE*"
grep -E "FAILED|passed|failed|fused64" "$OUT/gdn_bf16_tests.txt" | head -20
sanitize 100 sanitizer_fused64 "GDN bf16 fused forward over packed documents*"
for round in 1 2; do
  for B_T in 1,4096 1,32768 2,8192 4,8192; do
    for walk in split fused fused64; do
      name=kernels_bench_gdn_bf16_b${B_T%,*}_t${B_T#*,}_${walk}_$round
      PRIME_GDN_FORWARD_WALK=$walk run 30 "$name" build-gpu/bin/prime-bench kernels --device cuda --types GDN \
        --dtype bf16 --no-backward --repeats 5 --batch "${B_T%,*}" --tokens "${B_T#*,}" &&
        grep -E '^GDN +\(' "$OUT/$name.txt"
    done
  done
done
echo "total: $(( $(date +%s) - start )) s"
