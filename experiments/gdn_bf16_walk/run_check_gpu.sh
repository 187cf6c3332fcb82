#!/usr/bin/env bash
# GDN's bf16 forward as the tree builds it, on one GPU in one call: builds build-gpu (sm_90a; carry
# .deps), runs every GDN bf16 test, memcheck and racecheck over the packed-documents test (both
# walks), then `prime-bench kernels --types GDN --dtype bf16` with the split and the fused walk
# alternating at (4,8192,32,128), (4,8192,64,64), (2,8192,32,128), (1,4096,32,128) and
# (1,32768,32,128). Steps run while the time left allows (DEADLINE_S, default 500). Results under
# $OUT, all.tgz among them.
#   bash experiments/gdn_bf16_walk/run_check_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
deadline=$(( start + ${DEADLINE_S:-500} ))
source experiments/gpu/steps.sh  # left, run, sanitize, begin_out
OUT=${OUT:-/tmp/prime-gdn-check-out}
begin_out
bash experiments/gdn_bf16_walk/build_gpu.sh "$OUT" || exit 1
export PRIME_REQUIRE_CUDA=1
run 90 gdn_bf16_tests build-gpu/bin/prime_tests "GDN bf16*,GDN fused*,*PRIME_SSM_CORE*"
tail -2 "$OUT/gdn_bf16_tests.txt" | head -1
sanitize 100 sanitizer "GDN bf16 fused forward over packed documents*"
for shape in 4,8192,32,128 4,8192,64,64 2,8192,32,128 1,4096,32,128 1,32768,32,128; do
  IFS=, read -r B T H D <<< "$shape"
  for walk in split fused; do
    name=kernels_bench_gdn_bf16_${B}_${T}_${H}_${D}_$walk
    PRIME_GDN_FORWARD_WALK=$walk run 25 "$name" build-gpu/bin/prime-bench kernels --device cuda --types GDN \
      --dtype bf16 --no-backward --repeats 5 --batch "$B" --tokens "$T" --heads "$H" --head-dim "$D" &&
      grep -E '^GDN +\(' "$OUT/$name.txt" | head -1
  done
done
echo "total: $(( $(date +%s) - start )) s"
