#!/usr/bin/env bash
# GDN trained on its bf16 forward (kernels/README.md gdn_chunk, "Training on the bf16 forward") on one
# GPU in one call: builds build-gpu (carry .deps), runs the GDN tests with PRIME_REQUIRE_CUDA=1 (the
# bf16 training path's gradients against float64 among them), memcheck on the small training shape,
# `prime-bench kernels --types GDN` fwd and fwd+bwd with --dtype bf16 and fp32 alternating twice at
# (4,8192,32,128) (bf16 with its backward's products on bf16 and on fp32 operands, and with its fused
# reverse walk, PRIME_GDN_BACKWARD_WALK=fused), ncu's per-kernel times of one bf16 fwd+bwd with either
# walk, then the 8B-shape GDN 1:3 align step with and without
# PRIME_SSM_CORE=bf16 (with either walk) alternating (step time, MFU, peak memory). Steps run while the time left allows (DEADLINE_S, default
# 570). Results under $OUT, all.tgz among them.
#   bash experiments/gdn_bf16_backward/run_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
deadline=$(( start + ${DEADLINE_S:-570} ))
source experiments/gpu/steps.sh  # left, run, begin_out
OUT=${OUT:-/tmp/prime-gdn-bf16-backward-out}
begin_out
bash experiments/gpu/build_filtered.sh "$OUT" \
  '/lib/|/search/|/kernels/|/apps/prime-bench|/tests/reference/|/tests/test_(kernels_gdn|gdn_chunk_backward|kernels_model|kernels_chunk_gemm)[.]cpp' \
  prime_tests prime-bench || exit 1
export PRIME_REQUIRE_CUDA=1
run 240 gdn_tests build-gpu/bin/prime_tests "GDN*,PRIME_SSM_CORE=bf16: fp32 calls*,kernels in the model*,chunk gemm*"
grep -E "trained on the bf16|PRIME_SSM_CORE|FAILED|passed|failed" "$OUT/gdn_tests.txt" | tail -20
run 120 sanitizer_memcheck compute-sanitizer --tool memcheck build-gpu/bin/prime_tests \
  "GDN trained on the fused forward: a small shape*,GDN trained on the bf16 forward: a small shape*"
grep -E "ERROR SUMMARY" "$OUT/sanitizer_memcheck.txt"
for round in 1 2; do
  for setting in bf16:bf16:split bf16:bf16:fused bf16:fp32:split fp32:fp32:split; do  # --dtype:products:walk
    IFS=: read -r dtype products walk <<< "$setting"
    name=kernels_bench_gdn_${dtype}_products_${products}_walk_${walk}_$round
    PRIME_GDN_BACKWARD_PRODUCTS=$products PRIME_GDN_BACKWARD_WALK=$walk run 60 "$name" build-gpu/bin/prime-bench \
      kernels --device cuda --types GDN --dtype $dtype --repeats 5 && grep -E '^GDN +\(' "$OUT/$name.txt" | head -1
  done
done
if command -v ncu > /dev/null; then  # where one bf16 fwd+bwd's kernel time goes, per walk
  for walk in split fused; do
    PRIME_GDN_BACKWARD_WALK=$walk run 90 ncu_gdn_bf16_fwd_bwd_walk_$walk ncu --profile-from-start off \
      --metrics gpu__time_duration.sum --print-summary per-kernel build-gpu/bin/prime-bench kernels --device cuda \
      --types GDN --dtype bf16 --profile
  done
fi
for round in 1 2; do
  for setting in bf16:split bf16:fused fp32:split; do  # PRIME_SSM_CORE : PRIME_GDN_BACKWARD_WALK
    core=${setting%:*} walk=${setting#*:}
    name=train_GDN_1to3_core_${core}_walk_${walk}_$round
    PRIME_SSM_CORE=$core PRIME_GDN_BACKWARD_WALK=$walk run 120 "$name" build-gpu/bin/prime-bench train \
      --model synthetic:qwen3-8b+convert:GDN:1:3 --teacher synthetic:qwen3-8b --stage align --seq-len 4096 \
      --batch 1 --device cuda --dtype bf16 --repeats 2 &&
      grep -iE 'step|MFU|peak' "$OUT/$name.txt" | head -4
  done
done
echo "total: $(( $(date +%s) - start )) s"
