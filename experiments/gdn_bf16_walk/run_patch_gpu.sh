#!/usr/bin/env bash
# GDN's bf16 forward as main builds it against main with one patch of this folder, on one GPU in one
# call: builds build-gpu (sm_90a; carry .deps), keeps that prime-bench, rebuilds it with the patch
# applied, runs GDN's bf16 and fp32 fused forward tests on it (the patch is then taken back), and
# times `prime-bench kernels --types GDN --dtype bf16` at (4,8192,32,128) and (1,4096,32,128), the
# two binaries alternating twice. Steps run while the time left allows (DEADLINE_S, default 400).
# Results under $OUT, all.tgz among them; the binaries are named main and the patch's name.
#   bash experiments/gdn_bf16_walk/run_patch_gpu.sh PATCH
# PATCH: diagonal_registers.patch (the chunk inverse's diagonal blocks with each lane's column of T
# in registers: no syncs, the same bits; measured, not kept: results/inverse, where the binaries were
# named registers and shuffles) or prep_column_factors.patch (prep scales T's columns by beta e^G and
# beta instead of K's and V's rows: two shared-memory passes fewer; not run yet) or
# prep_direct_stores.patch (prep writes W and U' from the registers, not through shared memory;
# not run yet) or prep_both.patch (the two prep patches together; not run yet).
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
deadline=$(( start + ${DEADLINE_S:-400} ))
source experiments/gpu/steps.sh  # left, run
name=${1:?usage: run_patch_gpu.sh PATCH (a .patch file of experiments/gdn_bf16_walk)}
name=${name%.patch}
patch=experiments/gdn_bf16_walk/$name.patch
[ -f "$patch" ] || { echo "no $patch"; exit 1; }
OUT=${OUT:-/tmp/prime-gdn-patch-out}
mkdir -p "$OUT"
trap 'bash experiments/gpu/pack_out.sh "$OUT"' EXIT  # all.tgz: every file, for the runner's few
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/machine.txt" 2>&1
bash experiments/gpu/build_filtered.sh "$OUT" \
  '/lib/|/search/|/kernels/|/apps/prime-bench|/tests/reference/|/tests/test_kernels_gdn[.]cpp' \
  prime_tests prime-bench || exit 1
export PRIME_REQUIRE_CUDA=1
kept=$(mktemp -d)
cp build-gpu/bin/prime-bench "$kept/prime-bench.main"
if patch -p1 -s < "$patch"; then
  t=$(date +%s)
  cmake --build build-gpu -j"$(nproc)" --target prime-bench prime_tests > "$OUT/build_$name.log" 2>&1 &&
    cp build-gpu/bin/prime-bench "$kept/prime-bench.$name"
  echo "rebuild with $patch: $(( $(date +%s) - t )) s"
  timeout 120 build-gpu/bin/prime_tests "GDN bf16*,GDN fused*,*PRIME_SSM_CORE*" > "$OUT/gdn_tests_$name.txt" 2>&1
  echo "GDN bf16 and fused forward tests: exit $?, $(tail -2 "$OUT/gdn_tests_$name.txt" | head -1)"
  grep -E "FAILED|vs float64 out" "$OUT/gdn_tests_$name.txt" | head -12
  patch -p1 -R -s < "$patch"
else
  echo "$patch does not apply"; exit 1
fi
for round in 1 2; do
  for B_T in 4,8192 1,4096; do
    for bin in "$kept"/prime-bench.*; do
      [ "$(left)" -lt 25 ] && { echo "skipped: $(left) s left"; continue; }
      out=kernels_bench_gdn_bf16_b${B_T%,*}_t${B_T#*,}_${bin##*/prime-bench.}_$round
      timeout 60 "$bin" kernels --device cuda --types GDN --dtype bf16 --no-backward --repeats 5 \
        --batch "${B_T%,*}" --tokens "${B_T#*,}" > "$OUT/$out.txt" 2>&1
      echo "$out: $(grep -E '^GDN +\(' "$OUT/$out.txt")"
    done
  done
done
echo "total: $(( $(date +%s) - start )) s"
