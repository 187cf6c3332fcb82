#!/usr/bin/env bash
# One call that checks the kernel pieces built without a GPU (one build, then each piece's tests and
# A/B timings against the form before it). Its first run, on an H100, is in
# experiments/gpu/results/first_gpu_h100 (each piece since then the default; the A/B timings still set
# each form explicitly, so a rerun, on the H200 say, repeats the comparison):
#   1. GDN's fused walk on the warpgroup MMAs (PRIME_GDN_FORWARD_WALK=wgmma): the [wgmma] products,
#      the GDN bf16 tests; the fused and wgmma walks at (4,8192,32,128);
#   2. GKA's reverse sweep on bf16x3 products (PRIME_GKA_BACKWARD_PRODUCTS=bf16x3): its tests (the fp32
#      bound of float64); GKA's fp32 fwd+bwd at (1,4096,32,128) with either sweep;
#   3. GDN trained on its bf16 forward (PRIME_SSM_CORE=bf16, bf16 q, k, v under autograd) with its
#      backward's products on bf16 operands (chunk_gemm's Bf16; q, k, v read as bf16, the rows kernel's
#      test bit for bit), and its fused reverse walk
#      (PRIME_GDN_BACKWARD_WALK=fused); built after that run: T formed again in one kernel
#      (gdn_backward_inverse_kernel), the layout copies as 8-byte words, bf16 gradients written by the
#      rows kernel (their tests, and every bf16 training case): the GDN training and chunk_gemm tests; GDN's fwd+bwd with
#      --dtype bf16 (bf16 and fp32 products, either walk) and fp32;
# then ncu's kernel times of one GDN bf16 training pass, memcheck and racecheck on each piece's small
# shape, then a second round of timings. Each piece's own script goes further
# (experiments/gdn_bf16_walk/run_wgmma_gpu.sh, experiments/gdn_bf16_backward/run_gpu.sh). Steps run
# while the time left allows (DEADLINE_S, default 570). Results under $OUT, all.tgz among them.
#   bash experiments/gpu/run_first_gpu.sh     (carry .deps)
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
deadline=$(( start + ${DEADLINE_S:-570} ))
source experiments/gpu/steps.sh  # left, run, sanitize, begin_out
OUT=${OUT:-/tmp/prime-first-gpu-out}
begin_out
bash experiments/gpu/build_filtered.sh "$OUT" \
  '/lib/|/search/|/kernels/|/apps/prime-bench|/tests/reference/|/tests/test_(kernels_(gdn|gka|gka_bf16|gka_forward_bf16|wgmma|wgmma_layout|chunk_gemm)|gdn_chunk_backward)[.]cpp' \
  prime_tests prime-bench || exit 1
export PRIME_REQUIRE_CUDA=1
summary() { [ -f "$OUT/$1.txt" ] && grep -E "$2" "$OUT/$1.txt" | tail -"${3:-12}"; }
run 60 wgmma_products build-gpu/bin/prime_tests "[wgmma]"
summary wgmma_products "FAILED|passed|failed" 4
run 150 gdn_tests build-gpu/bin/prime_tests "GDN*,PRIME_SSM_CORE=bf16: fp32 calls*,chunk gemm*"
summary gdn_tests "wgmma|trained on the bf16|FAILED|passed|failed" 20
run 150 gka_tests build-gpu/bin/prime_tests "GKA bf16 forward*,GKA solve backward kernel*,GKA solve products*"
summary gka_tests "bf16x3|FAILED|passed|failed" 24
bench() {  # bench NAME VARIABLE=VALUE [env VARIABLE=VALUE] PRIME-BENCH-KERNELS-ARGS...
  local name=$1 setting=$2 more=()
  shift 2
  if [ "$1" = env ]; then more=("$2"); shift 2; fi
  run 40 "$name" env "$setting" "${more[@]}" build-gpu/bin/prime-bench kernels --device cuda --repeats 5 "$@" &&
    grep -E '^(GDN|GKA) +\(' "$OUT/$name.txt" | head -1
}
ab_round() {  # ab_round ROUND: one A/B timing of each piece
  local round=$1
  for walk in fused wgmma; do
    bench gdn_walk_${walk}_$round PRIME_GDN_FORWARD_WALK=$walk --types GDN --dtype bf16 --no-backward
  done
  for products in tf32x3 bf16x3; do  # the reverse sweep's products, at the 8B align step's core shape
    bench gka_sweep_${products}_$round PRIME_GKA_BACKWARD_PRODUCTS=$products --types GKA --batch 1 --tokens 4096
  done
  local dtype products walk
  for setting in bf16:bf16:split bf16:bf16:fused bf16:fp32:split fp32:fp32:split; do  # --dtype:products:walk
    IFS=: read -r dtype products walk <<< "$setting"
    bench gdn_train_${dtype}_products_${products}_walk_${walk}_$round PRIME_GDN_BACKWARD_PRODUCTS=$products \
      env PRIME_GDN_BACKWARD_WALK=$walk --types GDN --dtype $dtype
  done
}
ab_round 1
# Where GDN's bf16 training pass goes, kernel by kernel (the defaults: the fused reverse walk).
run 60 ncu_gdn_bf16_training ncu --profile-from-start off --metrics gpu__time_duration.sum \
    build-gpu/bin/prime-bench kernels --device cuda --types GDN --dtype bf16 --profile &&
  python3 experiments/gpu/ncu_kernel_summary.py "$OUT/ncu_gdn_bf16_training.txt" \
    "GDN bf16 training pass (4,8192,32,128), under ncu" | tee "$OUT/ncu_gdn_bf16_training_summary.txt" | head -12
sanitize 100 sanitizer_gdn_wgmma "GDN bf16 fused forward: the walk on the warpgroup MMAs*"
sanitize 100 sanitizer_gka_sweep_bf16x3 "GKA solve backward kernel: small chunks*"
sanitize 100 sanitizer_gdn_bf16_training "GDN trained on the bf16 forward: a small shape*"
ab_round 2
echo "total: $(( $(date +%s) - start )) s"
