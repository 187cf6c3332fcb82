#!/usr/bin/env bash
# Builds prime with CUDA on the GPU machine, runs the whole test suite there (the [gpu] tests
# execute instead of skipping) and the GPU benchmarks, writing logs and tables under $OUT.
# Needs .deps/ (./setup.sh --gather-deps) and .gpu/shared (a copy of ../shared/data's small
# files) carried along, since that machine has neither the Debian -dev packages nor ../shared.
#   bash experiments/gpu/run_on_gpu.sh [build|test|bench|decode|all]
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/prime-gpu-out}
mkdir -p "$OUT"
trap 'bash experiments/gpu/pack_out.sh "$OUT"' EXIT  # all.tgz: every file, for the runner's few
what=${1:-all}
[ -d ../shared ] || { mkdir -p ../shared && cp -r .gpu/shared/* ../shared/; }
export CMAKE_PREFIX_PATH=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
export TORCH_CUDA_ARCH_LIST=9.0a
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nvcc --version | tail -1;
  python3 -c 'import torch;print("torch", torch.__version__)'; } > "$OUT/machine.txt" 2>&1

if [ "$what" = build ] || [ "$what" = all ] || [ ! -x build-gpu/bin/prime_tests ]; then
  generator=""; command -v ninja >/dev/null && generator="-GNinja"
  cmake -S . -B build-gpu $generator -DCMAKE_BUILD_TYPE=Release -DPRIME_CUDA=ON -DPRIME_SOURCE_FILTER="${PRIME_SOURCE_FILTER:-}" \
    > "$OUT/configure.log" 2>&1 || { tail -40 "$OUT/configure.log"; exit 1; }
  start=$(date +%s)
  cmake --build build-gpu -j"$(nproc)" > "$OUT/build.log" 2>&1 || { grep -B2 -A10 -m5 error "$OUT/build.log"; exit 1; }
  echo "build: $(( $(date +%s) - start )) s"
fi
if [ "$what" = test ] || [ "$what" = all ]; then
  # Here a [gpu] test that finds no CUDA device fails instead of skipping.
  export PRIME_REQUIRE_CUDA=1
  start=$(date +%s)
  ctest --test-dir build-gpu -j8 --output-on-failure > "$OUT/ctest.log" 2>&1
  echo "ctest exit $?: $(( $(date +%s) - start )) s"; tail -5 "$OUT/ctest.log"
  build-gpu/bin/prime_tests "[gpu]" 2>&1 | grep -E "cuda|gpu|graph|FAILED|with expansion|<=|passed|failed" > "$OUT/gpu_tests.txt"
  tail -3 "$OUT/gpu_tests.txt"
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  # The mixers run their recurrences in fp32 whatever the weights' dtype, so the cores are timed in fp32.
  build-gpu/bin/prime-bench ssm --device cuda --dtype fp32 > "$OUT/ssm_fp32.txt" 2>&1; cat "$OUT/ssm_fp32.txt"
  # prime's CUDA kernels vs the torch-ops forms, side by side (kernels/README.md).
  build-gpu/bin/prime-bench kernels --device cuda --repeats 5 > "$OUT/kernels_bench.txt" 2>&1; cat "$OUT/kernels_bench.txt"
fi
if [ "$what" = decode ] || [ "$what" = all ]; then
  # Qwen3-8B shape, bf16: the Transformer vs 50% GDN and 50% GKA hybrids (prime-convert's hmf
  # init, built in memory), side by side in one run, each point in every decode mode.
  # DECODE_TAG names the output files, so several calls (4K, 32K, 128K) keep theirs.
  tag=${DECODE_TAG:-}
  build-gpu/bin/prime-bench decode --device cuda --dtype bf16 --model synthetic:qwen3-8b \
    --model synthetic:qwen3-8b+convert:GDN:1:1 --model synthetic:qwen3-8b+convert:GKA:1:1 \
    --batch ${DECODE_BATCHES:-1,16,64} --prompt ${DECODE_PROMPTS:-4096} --new-tokens ${DECODE_NEW:-32} \
    --mode ${DECODE_MODES:-eager,graph} --prefill-tokens 16384 --max-batch-tokens ${DECODE_MAX_BATCH_TOKENS:-0} \
    --json "$OUT/decode$tag.json" > "$OUT/decode$tag.txt" 2>&1; tail -40 "$OUT/decode$tag.txt"
fi
