#!/usr/bin/env bash
# The tree against earlier versions of itself in one GPU call (carry .deps and .gpu): builds build-gpu
# (sm_90a) from the sources FILTER matches (by default GDN's and chunk_gemm's tests), runs TESTS (a
# prime_tests spec) and the sanitizers on SANITIZE, then for each patch in .gpu/versions/ (NAME.patch:
# from this tree back to an earlier version, e.g. `git diff HEAD REV -- kernels >
# .gpu/versions/NAME.patch`) rebuilds prime-bench with it applied and takes it back; then times BENCH
# (prime-bench kernels arguments) on each build, the builds alternating, ROUNDS times, and records
# ncu's kernel times of the tree's own build (NCU_TITLE; unset: none). Each timed run first puts its
# own libprime.so in build-gpu (prime-bench finds it there by its runpath). Steps run while the time
# left allows (DEADLINE_S, default 540; TESTS_NEED and PATCH_NEED, the seconds the tests and a patch's
# build need left, default 200 and 120). Results under $OUT, all.tgz among them.
#   TESTS=... SANITIZE=... BENCH="--types GDN --dtype bf16" bash experiments/gpu/run_versus_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
deadline=$(( start + ${DEADLINE_S:-540} ))
source experiments/gpu/steps.sh  # left, run, sanitize, begin_out
OUT=${OUT:-/tmp/prime-versus-gpu-out}
begin_out
shopt -s nullglob
patches=(.gpu/versions/*.patch)
# Every file a patch touches is rebuilt (a kept build folder may hold objects newer than this copy).
for patch in "${patches[@]}"; do sed -n 's|^+++ b/||p' "$patch"; done | sort -u | xargs -r touch
bash experiments/gpu/build_filtered.sh "$OUT" \
  "${FILTER:-/lib/|/search/|/kernels/|/apps/prime-bench|/tests/reference/|/tests/test_(kernels_(gdn|chunk_gemm)|gdn_chunk_backward)[.]cpp}" \
  prime_tests prime-bench || exit 1
export PRIME_REQUIRE_CUDA=1
[ -n "${TESTS:-}" ] && run "${TESTS_NEED:-200}" tests build-gpu/bin/prime_tests "$TESTS" &&
  grep -E "passed|failed" "$OUT/tests.txt" | tail -2
grep -E "FAILED|failed" "$OUT/tests.txt" 2>/dev/null | head -10
[ -n "${SANITIZE:-}" ] && sanitize 90 sanitizer "$SANITIZE"
kept=$(mktemp -d)
keep() { mkdir -p "$kept/$1" && cp build-gpu/bin/prime-bench build-gpu/libprime.so "$kept/$1/"; }
keep tree
built=(tree)
for patch in "${patches[@]}"; do
  name=$(basename "$patch" .patch)
  [ "$(left)" -lt "${PATCH_NEED:-120}" ] && { echo "$name: skipped, $(left) s left"; continue; }
  patch -p1 -s < "$patch" || { echo "$patch does not apply"; continue; }
  t=$(date +%s)
  if cmake --build build-gpu -j"$(nproc)" --target prime-bench > "$OUT/build_$name.log" 2>&1; then
    keep "$name" && built+=("$name") && echo "$name: built in $(( $(date +%s) - t )) s"
  else
    echo "$name: build failed"; grep -B2 -A10 -m3 error "$OUT/build_$name.log"
  fi
  patch -p1 -R -s < "$patch"
done
bench_of() {  # bench_of NAME OUTPUT: BENCH on that build
  cp "$kept/$1/libprime.so" build-gpu/libprime.so
  run 40 "$2" "$kept/$1/prime-bench" kernels --device cuda --repeats 5 ${BENCH:---types GDN --dtype bf16} &&
    grep -E '^(GDN|GKA|M2) +\(' "$OUT/$2.txt" | head -1
}
for round in $(seq 1 "${ROUNDS:-2}"); do
  for name in "${built[@]}"; do bench_of "$name" "bench_${name}_$round"; done
done
cp "$kept/tree/libprime.so" build-gpu/libprime.so
if [ -n "${NCU_TITLE:-}" ]; then
  run 60 ncu ncu --profile-from-start off --metrics gpu__time_duration.sum \
      build-gpu/bin/prime-bench kernels --device cuda ${BENCH:---types GDN --dtype bf16} --profile &&
    python3 experiments/gpu/ncu_kernel_summary.py "$OUT/ncu.txt" "$NCU_TITLE" | tee "$OUT/ncu_summary.txt" | head -14
fi
echo "total: $(( $(date +%s) - start )) s"
