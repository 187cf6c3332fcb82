#!/usr/bin/env bash
# GDN's bf16 forward with prep's and output's chunk rows fetched by cp.async while the gates are summed
# (rows_cp_async.patch), against the tree as it is (synchronous row loads), on one GPU in one call:
# measured alone before the TF32 chunk inverse landed (1.04-1.05x, kernels/README.md), never with it.
# Needs build-gpu built from this tree (experiments/gpu/run_on_gpu.sh build, in the same call or an
# earlier one on the same machine). Keeps the tree's prime-bench, applies the patch, rebuilds the two
# binaries (one kernels file), runs every GDN bf16 test on the patched build (poisoned outputs,
# float64 bounds) and memcheck / racecheck on packed documents, then times both builds alternating
# twice, `prime-bench kernels --types GDN --dtype bf16` at (4,8192,32,128). The patch is taken back out
# at the end (build-gpu then holds the patched binaries: rebuild before other work). Results under $OUT.
#   bash experiments/gdn_bf16_inverse/run_rows_cp_async_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/prime-gdn-rows-out}
mkdir -p "$OUT"
if [ ! -x build-gpu/bin/prime-bench ]; then
  echo "build-gpu/bin/prime-bench missing: run experiments/gpu/run_on_gpu.sh build"; exit 1
fi
patch_file=experiments/gdn_bf16_inverse/rows_cp_async.patch
patch -p1 --dry-run -s < "$patch_file" > /dev/null || { echo "$patch_file does not apply to this tree"; exit 1; }
kept=$(mktemp -d)
cp build-gpu/bin/prime-bench "$kept/prime-bench"
patch -p1 -s < "$patch_file"
trap 'patch -p1 -R -s < "$patch_file"' EXIT
start=$(date +%s)
cmake --build build-gpu -j"$(nproc)" --target prime-bench prime_tests > "$OUT/build_rows_cp_async.log" 2>&1 ||
  { grep -B2 -A10 -m5 error "$OUT/build_rows_cp_async.log"; exit 1; }
echo "patched build: $(( $(date +%s) - start )) s"
export PRIME_REQUIRE_CUDA=1
timeout 200 build-gpu/bin/prime_tests "GDN bf16*,*PRIME_SSM_CORE*" > "$OUT/gdn_bf16_tests_rows_cp_async.txt" 2>&1
echo "GDN bf16 tests (patched): exit $?, $(tail -2 "$OUT/gdn_bf16_tests_rows_cp_async.txt" | head -1)"
for tool in memcheck racecheck; do
  timeout 150 compute-sanitizer --tool $tool build-gpu/bin/prime_tests "GDN bf16 fused forward over packed documents*" \
    > "$OUT/sanitizer_rows_cp_async_$tool.txt" 2>&1
  echo "$tool: exit $?, $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitizer_rows_cp_async_$tool.txt" | tail -1)"
done
for round in 1 2; do
  for build in main rows_cp_async; do
    bin=build-gpu/bin/prime-bench
    [ "$build" = main ] && bin="$kept/prime-bench"
    timeout 100 "$bin" kernels --device cuda --types GDN --dtype bf16 --no-backward --repeats 5 \
      > "$OUT/kernels_bench_gdn_bf16_${build}_$round.txt" 2>&1
    echo "$build, round $round: exit $?, $(grep -E '^GDN' "$OUT/kernels_bench_gdn_bf16_${build}_$round.txt")"
  done
done
