#!/usr/bin/env bash
# GDN's bf16 forward as main builds it against main with one or more patches of this folder, on one
# GPU in one call: builds build-gpu (sm_90a; carry .deps) and keeps its prime-bench with its
# libprime.so, then for each patch rebuilds with it applied, keeps that pair, runs GDN's bf16 and fp32
# fused forward tests on it and takes the patch back; then times `prime-bench kernels --types GDN
# --dtype bf16` at (4,8192,32,128) and (1,4096,32,128), the builds alternating twice. Each timed run
# first puts its own libprime.so in build-gpu (prime-bench finds the library there by its runpath, so
# a copied executable alone would load whichever library was built last). Steps run while the time
# left allows (DEADLINE_S, default 400); SHAPES (default "4,8192 1,4096": batch,tokens pairs) and
# TESTS (default the GDN bf16, fused forward and PRIME_SSM_CORE tests) narrow a short call. Results
# under $OUT, all.tgz among them; each build is named main or its patch's name. build-gpu ends with
# main's library.
#   bash experiments/gdn_bf16_walk/run_patch_gpu.sh PATCH...
# PATCH: walk_direct_stores.patch (the walks write O from the registers), walk_qs_early.patch (the
# fused walk forms Q S before its second barrier): both measured, not kept; fused64.patch (two
# 8-warp blocks per head; run_fused64_gpu.sh times its three walks); wgmma_wu_double_buffer.patch
# (the warpgroup walk double-buffers W and U' and fetches them a chunk ahead; measured, not kept, and
# written against the walk before its scores were split, so it no longer applies): time it with
# PRIME_GDN_FORWARD_WALK=wgmma set. The patches measured and kept are in the tree; REPORT.md has
# each one's prediction and result.
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
deadline=$(( start + ${DEADLINE_S:-400} ))
source experiments/gpu/steps.sh  # left, run, begin_out
[ $# -ge 1 ] || { echo "usage: run_patch_gpu.sh PATCH... (.patch files of experiments/gdn_bf16_walk)"; exit 1; }
names=()
for arg in "$@"; do
  name=${arg##*/}; name=${name%.patch}
  [ -f "experiments/gdn_bf16_walk/$name.patch" ] || { echo "no experiments/gdn_bf16_walk/$name.patch"; exit 1; }
  names+=("$name")
done
OUT=${OUT:-/tmp/prime-gdn-patch-out}
begin_out
bash experiments/gdn_bf16_walk/build_gpu.sh "$OUT" || exit 1
export PRIME_REQUIRE_CUDA=1
kept=$(mktemp -d)
keep() { mkdir -p "$kept/$1" && cp build-gpu/bin/prime-bench build-gpu/libprime.so "$kept/$1/"; }
keep main
built=(main)
for name in "${names[@]}"; do
  patch=experiments/gdn_bf16_walk/$name.patch
  patch -p1 -s < "$patch" || { echo "$patch does not apply"; continue; }
  t=$(date +%s)
  if cmake --build build-gpu -j"$(nproc)" --target prime-bench prime_tests > "$OUT/build_$name.log" 2>&1; then
    keep "$name" && built+=("$name")
    echo "rebuild with $patch: $(( $(date +%s) - t )) s"
    timeout 120 build-gpu/bin/prime_tests "${TESTS:-GDN bf16*,GDN fused*,*PRIME_SSM_CORE*}" > "$OUT/gdn_tests_$name.txt" 2>&1
    echo "$name: GDN bf16 and fused forward tests exit $?, $(tail -2 "$OUT/gdn_tests_$name.txt" | head -1)"
    grep -E "FAILED" "$OUT/gdn_tests_$name.txt" | head -5
  else
    echo "$name: build failed"; grep -B2 -A10 -m3 error "$OUT/build_$name.log"
  fi
  patch -p1 -R -s < "$patch"
done
for round in 1 2; do
  for B_T in ${SHAPES:-4,8192 1,4096}; do
    for name in "${built[@]}"; do
      [ "$(left)" -lt 25 ] && { echo "skipped: $(left) s left"; continue; }
      cp "$kept/$name/libprime.so" build-gpu/libprime.so
      out=kernels_bench_gdn_bf16_b${B_T%,*}_t${B_T#*,}_${name}_$round
      timeout 60 "$kept/$name/prime-bench" kernels --device cuda --types GDN --dtype bf16 --no-backward \
        --repeats 5 --batch "${B_T%,*}" --tokens "${B_T#*,}" > "$OUT/$out.txt" 2>&1
      echo "$out: $(grep -E '^GDN +\(' "$OUT/$out.txt" | head -1)"
    done
  done
done
cp "$kept/main/libprime.so" build-gpu/libprime.so
echo "total: $(( $(date +%s) - start )) s"
