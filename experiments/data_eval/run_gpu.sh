#!/usr/bin/env bash
# The data/eval figures on the GPU machine: perplexity and recall probes of a synthetic model on
# the WikiText-2 valid shard (GPT-2 tokenizer), and the decode benchmark (Qwen3-8B shape:
# Transformer vs 50% GDN vs 50% GKA hybrids made by prime-convert). Carry .deps (./setup.sh
# --gather-deps) and build-data/gpu-carry (the shard, made here with prime-data tokenize).
#   bash experiments/data_eval/run_gpu.sh build|ppl|convert|decode MODEL...
# Hybrids: either dirs from `convert` (/tmp/q8_GDN, /tmp/q8_GKA) or in-memory specs such as
# synthetic:qwen3-8b+convert:GDN:1:1.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/prime-data-eval-out}
mkdir -p "$OUT"
trap 'bash experiments/gpu/pack_out.sh "$OUT"' EXIT  # all.tgz: every file, for the runner's few
bin=build-gpu-data/bin
what=${1:-build}
shift || true
export CMAKE_PREFIX_PATH=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
export TORCH_CUDA_ARCH_LIST=9.0a
case "$what" in
build)
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; free -g | head -2; df -h /tmp | tail -1; } > "$OUT/machine.txt" 2>&1
  generator=""; command -v ninja >/dev/null && generator="-GNinja"
  cmake -S . -B build-gpu-data $generator -DCMAKE_BUILD_TYPE=Release -DPRIME_CUDA=OFF -DBUILD_TESTING=OFF \
    -DPRIME_SOURCE_FILTER='lib/(io|model|eval|data|convert)/|apps/prime-(data|eval|bench|convert)' \
    > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
  start=$(date +%s)
  cmake --build build-gpu-data -j"$(nproc)" > "$OUT/build.log" 2>&1 || { grep -B2 -A10 -m5 error "$OUT/build.log"; exit 1; }
  echo "build: $(( $(date +%s) - start )) s" ;;
ppl)
  shard=build-data/gpu-carry/wikitext2.valid.gpt2.tok
  for dtype in fp32 bf16; do
    $bin/prime-eval --model 'synthetic:qwen3-0.6b@layers=2,vocab=50257' --device cuda --dtype $dtype --ppl $shard \
      --ctx 1024 --stride 512 --batch 16 --recall --needle-lengths 1024,4096 --mqar-pairs 16,64,256 \
      --mqar-lengths 1024,4096 --trials 10 --json "$OUT/ppl_recall_$dtype.json" 2>&1 | tee "$OUT/ppl_recall_$dtype.txt"
  done ;;
convert)  # both hybrids at once, in the background of whatever runs next; logs in $OUT
  for layer in GDN GKA; do
    [ -d /tmp/q8_${layer} ] || $bin/prime-convert --source synthetic:qwen3-8b --layer $layer --ratio 1:1 --init random \
      --dtype bf16 --out /tmp/q8_${layer} --quiet > "$OUT/convert_$layer.log" 2>&1 &
  done
  wait ;;
decode)
  args=()
  for model in "$@"; do args+=(--model "$model"); done
  $bin/prime-bench decode "${args[@]}" --device cuda --dtype bf16 --batch ${BATCH:-1,16,64} \
    --prompt ${PROMPT:-4096,32768,131072} --new-tokens ${NEW:-32} --prefill-tokens 16384 --max-batch-tokens ${MAXTOK:-0} \
    --json "$OUT/decode${TAG:-}.json" 2>&1 | tee "$OUT/decode${TAG:-}.txt" ;;
esac
