#!/usr/bin/env bash
# The GPU calls' tests and timings on binaries built here instead of on the GPU machine (whose filtered build
# takes ~2 minutes of each call's device time). This machine's build is a CUDA build against the same torch
# wheel (cu130) for sm_90a and sm_80, so its libprime.so, prime_tests and prime-bench run there as they are,
# found through LD_LIBRARY_PATH. Pack them first:
#   mkdir -p /tmp/pb/tree /tmp/pb/before
#   cp build/libprime.so build/bin/prime_tests build/bin/prime-* /tmp/pb/tree/   (the apps: the CLI tests run them)
#   (the build before a change: git stash, cmake --build build --target prime, cp build/libprime.so /tmp/pb/before/,
#   git stash pop, build again; ccache makes both builds seconds)
#   mkdir -p /tmp/pb/lib && cp -L "$(ldd build/bin/prime_tests | awk '/libpq/ {print $3}')" /tmp/pb/lib/
#   (and libpq's own libraries, which the GPU machine may lack too: ldap, lber, sasl2, gssapi_krb5, krb5, k5crypto,
#   krb5support, com_err, keyutils)
#   tar cf - -C /tmp/pb tree lib | xz -T2 -6 > .gpu/prebuilt.tar.xz    (~15 MB; ~27 MB with before/)
#   (any other folder holding a libprime.so, packed beside before/, is timed too; strip --strip-unneeded
#   the binaries first; with several libraries, `xz -T1 --lzma2=preset=6,dict=384MiB` keeps one copy of what they
#   share: three builds in ~18 MB, where -6 packs them in ~45 MB)
# The call's working tree (the tracked files, ~39 MB) and what it carries must stay under 64 MiB: carry
# .deps/lib (not all of .deps) and .gpu.
# Then on the GPU machine: TESTS (a prime_tests spec), BENCH (prime-bench kernels arguments), ROUNDS (the
# builds alternating), VARIANTS (NAME=VARIABLE=VALUE ...: the tree's build timed under those settings too, in
# the same rounds, or NAME@FOLDER=VARIABLE=VALUE another packed build's; BUILDS: the packed folders timed, default
# all), then the optional EXTRA_TESTS_ENV +
# EXTRA_TESTS (one more spec under one more environment setting, on the build EXTRA_TESTS_BUILD names: tree
# unless set, or another packed folder), SANITIZE (a spec under memcheck and racecheck, on SANITIZE_BUILD: tree
# unless set), NCU_TITLE (ncu's kernel times of
# the tree) and NCU_DETAIL (more ncu arguments for a closer look at some launches of the tree's bench, e.g.
# `--set full -k regex:chunk_gemm --launch-skip 8 --launch-count 1`), each step while DEADLINE_S (default
# 400) allows; before EXTRA_TESTS, DECODE_MODELS (prime-bench decode --model specs, space-separated: their
# graphed decode step timed on a synthetic context, DECODE_ARGS the shape, default `--batch 64 --prompt
# 4096`; DECODE_SETTINGS, VARIABLE=VALUE settings, or build:NAME for another packed build, timed too, alternating
# over DECODE_ROUNDS rounds) and
# DECODE_NCU (set: each of those models' one profiled step under ncu, summed by kernel; DECODE_NCU_DETAIL:
# more ncu arguments for a closer look at the first model's step; DECODE_STALLS, "REGEX [MODEL]": one launch of
# that kernel in the first model's step, or MODEL's, its sections and its stall samples by SASS line, digested by
# ncu_source_summary.py). Results under $OUT, all.tgz among them.
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
deadline=$(( start + ${DEADLINE_S:-400} ))
source experiments/gpu/steps.sh  # left, run, sanitize, begin_out
OUT=${OUT:-/tmp/prime-prebuilt-out}
begin_out
pb=/tmp/prime-prebuilt
mkdir -p "$pb" &&
  python3 -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" .gpu/prebuilt.tar.xz "$pb" ||
  { echo "no .gpu/prebuilt.tar.xz"; exit 1; }
torch_lib=$(python3 -c 'import os,torch;print(os.path.join(os.path.dirname(torch.__file__),"lib"))')
libs="$torch_lib:$PWD/.deps/lib:$pb/lib:/usr/local/cuda/lib64:/usr/local/cuda/lib"
# with BUILD COMMAND...: the env command that runs COMMAND with that build's libprime.so first on the library path.
with() {
  local build=$1; shift
  echo env LD_LIBRARY_PATH="$pb/$build:$libs" "$@"
}
$(with tree ldd "$pb/tree/prime_tests") | grep "not found" && exit 1
export PRIME_REQUIRE_CUDA=1
export PRIME_TEST_BIN_DIR="$pb/tree"  # the CLI tests' apps: where they were packed, not where they were built
# A library built in another checkout looks for its templates (model aliases) where that checkout was.
export PRIME_TEMPLATES=${PRIME_TEMPLATES:-$PWD/templates}
if [ -n "${TESTS:-}" ]; then
  run 60 tests $(with tree "$pb/tree/prime_tests") "$TESTS"
  grep -E "passed|failed" "$OUT/tests.txt" | tail -2
  grep -A8 "FAILED" "$OUT/tests.txt" | head -40
fi
builds=(tree)  # then every other packed libprime.so (before/, and any other folder holding one), alternating
for dir in "$pb"/*/; do
  name=$(basename "$dir")
  [ "$name" != tree ] && [ -f "$dir/libprime.so" ] && builds+=("$name")
done
# BUILDS: space-separated packed folders, the only ones timed (default: all of them, tree first).
if [ -n "${BUILDS+set}" ]; then read -r -a builds <<< "$BUILDS"; fi
# VARIANTS: space-separated NAME=VARIABLE=VALUE, the tree's build timed again under each setting in the same rounds;
# NAME@FOLDER=VARIABLE=VALUE times the build packed in FOLDER under it instead.
for variant in ${VARIANTS:-}; do builds+=("$variant"); done
for round in $(seq 1 "${ROUNDS:-2}"); do
  for build in "${builds[@]}"; do
    name=${build%%=*} lib=$build setting=()
    if [ "$name" != "$build" ]; then
      lib=tree setting=("${build#*=}")
      if [[ $name == *@* ]]; then lib=${name#*@} name=${name%%@*}; fi
    fi
    run 30 "bench_${name}_$round" $(with "$lib" env "${setting[@]}" "$pb/tree/prime-bench") kernels --device cuda \
        --repeats 5 ${BENCH:---types GDN --dtype bf16} &&
      grep -E '^(GDN|GKA|M2) +\(' "$OUT/bench_${name}_$round.txt" | head -1
  done
done
if [ -n "${DECODE_MODELS:-}" ]; then
  model_args=()
  for model in $DECODE_MODELS; do model_args+=(--model "$model"); done
  # shellcheck disable=SC2206  # DECODE_ARGS is a list of arguments
  decode_args=(--device cuda --dtype bf16 --context synthetic --mode graph ${DECODE_ARGS:---batch 64 --prompt 4096})
  # DECODE_SETTINGS: space-separated VARIABLE=VALUE, each timed too (the tree's build under it), in the same rounds.
  for round in $(seq 1 "${DECODE_ROUNDS:-1}"); do
    for setting in default ${DECODE_SETTINGS:-}; do
      name=decode_${round}_${setting%%=*} environment=() build=tree
      if [[ $setting == build:* ]]; then build=${setting#build:} name=decode_${round}_$build
      elif [ "$setting" != default ]; then environment=("$setting"); fi
      run 150 "$name" $(with "$build" env "${environment[@]}" "$pb/tree/prime-bench") decode "${model_args[@]}" \
          "${decode_args[@]}" && grep -E "^synthetic" "$OUT/$name.txt" | tail -n "$(echo $DECODE_MODELS | wc -w)"
    done
  done
  if [ -n "${DECODE_NCU_DETAIL:-}" ]; then  # more ncu arguments, on the first model's profiled step
    # shellcheck disable=SC2086  # DECODE_NCU_DETAIL is a list of arguments
    run 90 ncu_decode_detail $(with tree ncu) --profile-from-start off --graph-profiling node $DECODE_NCU_DETAIL \
        "$pb/tree/prime-bench" decode --model "${DECODE_MODELS%% *}" "${decode_args[@]}" --new-tokens 1 \
        --profile-step &&
      grep -E "^  [a-z_]+.*\(|Duration|Memory Throughput|DRAM Throughput|Registers|Achieved Occupancy|Warp Cycles Per Issued|Issue Slots Busy|Block Limit" \
        "$OUT/ncu_decode_detail.txt" | head -60
  fi
  if [ -n "${DECODE_STALLS:-}" ]; then  # "REGEX [MODEL]": one launch of a kernel in a model's profiled step
    read -r regex model <<< "$DECODE_STALLS"
    model=${model:-${DECODE_MODELS%% *}}
    run 120 ncu_stalls_run $(with tree ncu) --profile-from-start off --graph-profiling node \
        --kernel-name "regex:$regex" --launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
        --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section SourceCounters -f \
        --export "$OUT/ncu_stalls" "$pb/tree/prime-bench" decode --model "$model" "${decode_args[@]}" --new-tokens 1 \
        --profile-step
    if [ -f "$OUT/ncu_stalls.ncu-rep" ]; then
      ncu --import "$OUT/ncu_stalls.ncu-rep" --page details > "$OUT/ncu_stalls.txt" 2>&1
      grep -E "^  [a-z_]+.*\(|Duration|DRAM Throughput|Registers|Warp Cycles Per Issued|Issue Slots Busy|No Eligible" \
        "$OUT/ncu_stalls.txt" | head -12
      ncu --import "$OUT/ncu_stalls.ncu-rep" --page source --print-source sass --csv \
        > "$OUT/ncu_stalls_source.csv" 2>&1 &&
        python3 experiments/gpu/ncu_source_summary.py "$OUT/ncu_stalls_source.csv" > "$OUT/ncu_stalls_source.txt" 2>&1
      head -30 "$OUT/ncu_stalls_source.txt"
      rm -f "$OUT/ncu_stalls.ncu-rep" "$OUT/ncu_stalls_source.csv"
    fi
  fi
  if [ -n "${DECODE_NCU:-}" ]; then
    index=0
    for model in $DECODE_MODELS; do
      index=$(( index + 1 ))
      run 60 "ncu_decode_$index" $(with tree ncu) --profile-from-start off --graph-profiling node \
          --metrics gpu__time_duration.sum "$pb/tree/prime-bench" decode --model "$model" "${decode_args[@]}" \
          --new-tokens 1 --profile-step &&
        python3 experiments/gpu/ncu_kernel_summary.py "$OUT/ncu_decode_$index.txt" "$model" |
          tee "$OUT/ncu_decode_${index}_summary.txt" | head -16
    done
  fi
fi
if [ -n "${EXTRA_TESTS:-}" ]; then
  run 60 extra_tests $(with "${EXTRA_TESTS_BUILD:-tree}") ${EXTRA_TESTS_ENV:-} "$pb/tree/prime_tests" "$EXTRA_TESTS"
  grep -E "passed|failed|vs float64:" "$OUT/extra_tests.txt" | tail -4
fi
if [ -n "${SANITIZE:-}" ]; then
  for tool in memcheck racecheck; do
    run 45 "sanitizer_$tool" $(with "${SANITIZE_BUILD:-tree}" compute-sanitizer) --tool $tool "$pb/tree/prime_tests" "$SANITIZE"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitizer_$tool.txt" | tail -1
  done
fi
if [ -n "${NCU_TITLE:-}" ]; then
  run 45 ncu $(with tree ncu) --profile-from-start off --metrics gpu__time_duration.sum \
      "$pb/tree/prime-bench" kernels --device cuda ${BENCH:---types GDN --dtype bf16} --profile &&
    python3 experiments/gpu/ncu_kernel_summary.py "$OUT/ncu.txt" "$NCU_TITLE" | tee "$OUT/ncu_summary.txt" | head -12
fi
if [ -n "${NCU_DETAIL:-}" ]; then
  # shellcheck disable=SC2086  # NCU_DETAIL is a list of arguments
  run 60 ncu_detail $(with tree ncu) --profile-from-start off $NCU_DETAIL \
      "$pb/tree/prime-bench" kernels --device cuda ${BENCH:---types GDN --dtype bf16} --profile &&
    grep -E "^  [a-z_]+.*\(|Duration|Throughput|Registers|Achieved Occupancy|Theoretical Occupancy|Warp Cycles Per Issued" \
      "$OUT/ncu_detail.txt" | head -40
fi
echo "total: $(( $(date +%s) - start )) s"
