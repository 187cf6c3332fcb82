#!/usr/bin/env bash
# The kernels on one GPU, in one call: build, the [kernels] tests (outputs poisoned, float64 and
# torch-ops references), compute-sanitizer on the kernel tests, `prime-bench kernels`, the 8B
# decode step with and without the kernels, and the public anchors (fla, mamba_ssm, hybrid-model-factory) timed on
# the same GPU. Results under $OUT. (All of it takes longer than one 10-minute device call: run
# it in parts on a warm machine, or on your own GPU.)
#   bash experiments/kernels/run_gpu.sh       (carry .deps, and third_party_fetched for the anchors:
#   experiments/kernels/time_anchors.py says what it holds, never committed)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/prime-kernels-out}
mkdir -p "$OUT"
trap 'bash experiments/gpu/pack_out.sh "$OUT"' EXIT  # all.tgz: every file, for the runner's few
export CMAKE_PREFIX_PATH=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
export TORCH_CUDA_ARCH_LIST=9.0a
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/machine.txt" 2>&1
if [ ! -x build-gpu/bin/prime_tests ] || [ ! -x build-gpu/bin/prime-bench ]; then
  generator=""; command -v ninja >/dev/null && generator="-GNinja"
  cmake -S . -B build-gpu $generator -DCMAKE_BUILD_TYPE=Release -DPRIME_CUDA=ON > "$OUT/configure.log" 2>&1 ||
    { tail -30 "$OUT/configure.log"; exit 1; }
  start=$(date +%s)
  cmake --build build-gpu -j"$(nproc)" --target prime_tests prime-bench > "$OUT/build.log" 2>&1 ||
    { grep -B2 -A12 -m5 -E "error|Error" "$OUT/build.log"; exit 1; }
  echo "build: $(( $(date +%s) - start )) s"
fi
export PRIME_REQUIRE_CUDA=1
timeout 300 build-gpu/bin/prime_tests "[kernels],[prefill],[moe][gpu],[documents]" > "$OUT/kernels_tests.txt" 2>&1
echo "kernel tests: exit $?"; grep -E "^\[kernels|FAILED|passed|failed" "$OUT/kernels_tests.txt" | head -60
for tool in memcheck racecheck; do
  timeout 200 compute-sanitizer --tool $tool build-gpu/bin/prime_tests "GDN kernels*,short conv kernel: prefill*,GKA solve kernel: one small chunk*,GKA bf16 forward: one small sequence*,wgmma: the warpgroup*,GDN decode kernel*,Mamba-2 decode kernel*,attention decode kernel: only where*,attention decode kernel: a CUDA graph*,RoPE kernel: misaligned*,add_rms_norm kernel*,kv cache step kernel: equals*,linear_decode kernel: a CUDA graph*,short conv kernel with document starts*,GKA solve backward kernel: small chunks*,SSD chunk kernels: small shapes for the sanitizer*" \
    > "$OUT/$tool.txt" 2>&1
  echo "$tool: exit $?, $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/$tool.txt" | tail -1)"
done
timeout 240 build-gpu/bin/prime-bench kernels --device cuda --repeats 5 > "$OUT/kernels_bench.txt" 2>&1
echo "prime-bench kernels: exit $?"; cat "$OUT/kernels_bench.txt"
# GKA's solve on the earlier wmma kernels (gka_solve v2/v3.1), beside v4's mma kernels above.
PRIME_GKA_SOLVE_WMMA=1 PRIME_GKA_BACKWARD_WMMA=1 timeout 120 build-gpu/bin/prime-bench kernels --device cuda \
  --types GKA --repeats 5 > "$OUT/kernels_bench_gka_wmma.txt" 2>&1
echo "prime-bench kernels, GKA on the wmma kernels: exit $?"; head -3 "$OUT/kernels_bench_gka_wmma.txt"
# Chunked prefill of the 8B Transformer (8K chunks) with flash attention for the chunks (auto) and
# with the masked SDPA form and no kernels (torch).
for policy in auto torch; do
  PRIME_KERNELS=$policy timeout 200 build-gpu/bin/prime-bench decode --device cuda --dtype bf16 \
    --model synthetic:qwen3-8b --batch 1 --prompt 32768 --new-tokens 4 --mode eager > "$OUT/prefill_32k_$policy.txt" 2>&1
  echo "prefill 32K, PRIME_KERNELS=$policy: exit $?"; tail -1 "$OUT/prefill_32k_$policy.txt"
done
# The whole decode step of the 8B shape with every kernel and with none, then each model at the
# largest batch that fits at 32K.
models="--model synthetic:qwen3-8b --model synthetic:qwen3-8b+convert:GDN:1:1"
for policy in torch auto; do
  PRIME_KERNELS=$policy timeout 200 build-gpu/bin/prime-bench decode --device cuda --dtype bf16 $models \
    --batch 1,64 --prompt 4096 --new-tokens 32 --mode graph --context synthetic > "$OUT/decode_4k_$policy.txt" 2>&1
  echo "decode, PRIME_KERNELS=$policy: exit $?"; tail -4 "$OUT/decode_4k_$policy.txt"
done
timeout 200 build-gpu/bin/prime-bench decode --device cuda --dtype bf16 $models --fit-batch --prompt 32768 \
  --new-tokens 16 --mode graph --context synthetic > "$OUT/decode_32k_fit.txt" 2>&1
echo "decode --fit-batch: exit $?"; tail -2 "$OUT/decode_32k_fit.txt"
if [ -d third_party_fetched/fla ]; then
  timeout 240 python3 experiments/kernels/time_anchors.py > "$OUT/anchors.txt" 2>&1
  echo "anchor: exit $?"; tail -6 "$OUT/anchors.txt"
fi
