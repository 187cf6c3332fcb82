#!/usr/bin/env bash
# GKA with the bf16 forward's default form (the warpgroup MMAs on Hopper) on one GPU, in one call:
# builds build-gpu with every GKA and wgmma test (sm_90a; carry .deps), runs them with
# PRIME_GKA_FORWARD_ITERATE unset (the layer, training, varlen and decode tests then take the wgmma
# form), then `prime-bench kernels --types GKA --dtype bf16` at (4,8192,32,128) and (4,8192,64,64),
# the default and the register form alternating twice in one binary. Results under $OUT.
#   bash experiments/gka_bf16_forward/run_default_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
OUT=${OUT:-/tmp/prime-gka-default-out}
mkdir -p "$OUT"
trap 'bash experiments/gpu/pack_out.sh "$OUT"' EXIT  # all.tgz: every file, for the runner's few
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/machine.txt" 2>&1
bash experiments/gpu/build_filtered.sh "$OUT" \
  '/lib/|/search/|/kernels/|/apps/prime-bench|/tests/reference/|/tests/test_(kernels_)?(gka|wgmma)[^/]*[.]cpp' \
  prime_tests prime-bench || exit 1
export PRIME_REQUIRE_CUDA=1
unset PRIME_GKA_FORWARD_ITERATE
timeout 240 build-gpu/bin/prime_tests "[gka],[wgmma]" > "$OUT/gka_tests_default.txt" 2>&1
tests=$?
echo "[gka],[wgmma] tests, default form: exit $tests"
grep -E "FAILED|passed|failed|with expansion" "$OUT/gka_tests_default.txt" | head -20
for round in 1 2; do
  for form in default registers; do
    for D in 128 64; do
      extra=(); [ $D = 64 ] && extra=(--heads 64 --head-dim 64)
      name=kernels_bench_gka_bf16_d${D}_${form}_$round
      if [ $form = default ]; then
        timeout 60 build-gpu/bin/prime-bench kernels --device cuda --types GKA --dtype bf16 --no-backward \
          --repeats 5 "${extra[@]}" > "$OUT/$name.txt" 2>&1
      else
        PRIME_GKA_FORWARD_ITERATE=$form timeout 60 build-gpu/bin/prime-bench kernels --device cuda --types GKA \
          --dtype bf16 --no-backward --repeats 5 "${extra[@]}" > "$OUT/$name.txt" 2>&1
      fi
      echo "$name: $(grep -E '^GKA +\(' "$OUT/$name.txt" | head -1)"
    done
  done
done
echo "total: $(( $(date +%s) - start )) s"
exit $tests
