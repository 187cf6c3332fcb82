#!/usr/bin/env bash
# GDN's bf16 forward with changes kept here as patches, each variant against the tree as it is, on one
# GPU in one call (~2 minutes a variant after the build):
#   rows_cp_async.patch  prep's and output's chunk rows fetched by cp.async while the gates are summed
#                        (measured alone before the TF32 chunk inverse landed: 1.04-1.05x; never with it)
#   scan_prefetch.patch  the scan's next W and U' in second buffers, fetched a whole chunk step ahead
#                        (the scan waits on its loads: kernels/README.md)
# A variant is patch names joined by '+'. For each: apply, rebuild prime-bench and prime_tests (one
# kernels file), run every GDN bf16 test (poisoned outputs, float64 bounds) and memcheck / racecheck on
# packed documents, keep its prime-bench, take the patches back out. Then every variant's prime-bench
# and the tree's time `prime-bench kernels --types GDN --dtype bf16` at (4,8192,32,128), alternating
# twice. Needs build-gpu built from this tree (experiments/gpu/run_on_gpu.sh build); build-gpu then
# holds the last variant's binaries (rebuild before other work). Results under $OUT.
#   bash experiments/gdn_bf16_inverse/run_patches_gpu.sh [VARIANT ...]
#   (default: rows_cp_async scan_prefetch rows_cp_async+scan_prefetch)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/prime-gdn-patches-out}
mkdir -p "$OUT"
if [ ! -x build-gpu/bin/prime-bench ]; then
  echo "build-gpu/bin/prime-bench missing: run experiments/gpu/run_on_gpu.sh build"; exit 1
fi
command -v patch > /dev/null || { echo "no patch command on this machine"; exit 1; }
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(rows_cp_async scan_prefetch rows_cp_async+scan_prefetch)
dir=experiments/gdn_bf16_inverse
kept=$(mktemp -d)
cp build-gpu/bin/prime-bench "$kept/prime-bench.tree"
applied=()
take_back() {  # the applied patches out, last first
  for ((i = ${#applied[@]} - 1; i >= 0; i--)); do patch -p1 -R -s < "$dir/${applied[i]}.patch"; done
  applied=()
  find kernels -name '*.orig' -delete
}
trap 'take_back; bash experiments/gpu/pack_out.sh "$OUT"' EXIT  # all.tgz: every file, for the runner's few
export PRIME_REQUIRE_CUDA=1
for variant in "${variants[@]}"; do
  IFS=+ read -r -a names <<< "$variant"
  for name in "${names[@]}"; do
    patch -p1 -s < "$dir/$name.patch" || { echo "$name.patch does not apply"; take_back; continue 2; }
    applied+=("$name")
  done
  start=$(date +%s)
  if ! cmake --build build-gpu -j"$(nproc)" --target prime-bench prime_tests > "$OUT/build_$variant.log" 2>&1
  then
    grep -B2 -A10 -m5 error "$OUT/build_$variant.log"; take_back; continue
  fi
  echo "$variant: build $(( $(date +%s) - start )) s"
  timeout 200 build-gpu/bin/prime_tests "GDN bf16*,*PRIME_SSM_CORE*" > "$OUT/gdn_bf16_tests_$variant.txt" 2>&1
  echo "  GDN bf16 tests: exit $?, $(tail -2 "$OUT/gdn_bf16_tests_$variant.txt" | head -1)"
  for tool in memcheck racecheck; do
    timeout 150 compute-sanitizer --tool $tool build-gpu/bin/prime_tests \
      "GDN bf16 fused forward over packed documents*" > "$OUT/sanitizer_${variant}_$tool.txt" 2>&1
    rc=$?
    summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitizer_${variant}_$tool.txt" | tail -1)
    echo "  $tool: exit $rc, $summary"
  done
  cp build-gpu/bin/prime-bench "$kept/prime-bench.$variant"
  take_back
done
for round in 1 2; do
  for bin in "$kept"/prime-bench.*; do
    name=${bin##*/prime-bench.}
    timeout 100 "$bin" kernels --device cuda --types GDN --dtype bf16 --no-backward --repeats 5 \
      > "$OUT/kernels_bench_gdn_bf16_${name}_$round.txt" 2>&1
    echo "$name, round $round: exit $?, $(grep -E '^GDN' "$OUT/kernels_bench_gdn_bf16_${name}_$round.txt")"
  done
done
