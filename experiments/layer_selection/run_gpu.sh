#!/usr/bin/env bash
# The layer-selection validation on one H200 (about 10 minutes): the priming study's teacher
# (experiments/priming_first: Qwen3-style, 6 layers, hidden 512, GPT-2 vocabulary, Gutenberg),
# trained for TEACHER_SECONDS; every prime-select scorer on it; all 15 placements of 2 attention
# layers among 6 (ratio 1:3) primed as GDN hybrids (align + distill, 256K tokens per stage, 5 at
# once on the GPU); rank correlations and the chosen hybrids'
# PPL in $OUT/table.md; then attention-locality on a Qwen3-8B-shaped synthetic model (bf16).
#   bash experiments/layer_selection/run_gpu.sh
# Needs .deps (./setup.sh --gather-deps) and .gpu/priming/gutenberg.{train,valid}.gpt2.tok
# carried, as experiments/priming_first/run_gpu.sh does. Outputs (few files): summary.txt,
# table.md, scores_*.csv, select_*.txt, hybrids.tsv, study.log, teacher.log, hybrid_logs.txt.
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT=${OUT:-/tmp/prime-select-out}
mkdir -p "$OUT"
trap 'bash experiments/gpu/pack_out.sh "$OUT"' EXIT  # all.tgz: every file, for the runner's few
export CMAKE_PREFIX_PATH=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
export TORCH_CUDA_ARCH_LIST=9.0a
export BIN=build-gpu/bin
if [ ! -x $BIN/prime-train ] || [ ! -x $BIN/prime-select ] || [ ! -x $BIN/prime-eval ]; then
  generator=""; command -v ninja >/dev/null && generator="-GNinja"
  cmake -S . -B build-gpu $generator -DCMAKE_BUILD_TYPE=Release -DPRIME_CUDA=ON \
    > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
  start=$(date +%s)
  cmake --build build-gpu -j"$(nproc)" --target prime-train prime-eval prime-select > "$OUT/build.log" 2>&1 ||
    { grep -B2 -A10 -m5 error "$OUT/build.log"; exit 1; }
  echo "build: $(( $(date +%s) - start )) s"
fi
export WORK=${WORK:-/tmp/layer-selection} DEVICE=cuda DTYPE=bf16 SEQ=512 LAYER=GDN KEEP=2
export TRAIN=.gpu/priming/gutenberg.train.gpt2.tok VAL=.gpu/priming/gutenberg.valid.gpt2.tok
export TEACHER_SPEC='synthetic:qwen3-0.6b@layers=6,hidden=512,heads=8,kv_heads=4,head_dim=64,intermediate=1536,vocab=50304,max_positions=4096,seed=1'
export TEACHER_TOKENS=${TEACHER_TOKENS:-32M} TEACHER_BATCH=64K TEACHER_LR=2e-3 TEACHER_SECONDS=${TEACHER_SECONDS:-150}
export STAGE_TOKENS=${STAGE_TOKENS:-256K} STAGE_BATCH=8K VAL_TOKENS=${VAL_TOKENS:-131072} PARALLEL=${PARALLEL:-5}
# The scorers run in fp32 (the training ones need it; the same for all keeps costs comparable).
export SELECT_ARGS="--window 128 --seq-len 512 --sequences 16 --batch 8 --dtype fp32"
export ALIGN_STEPS=200 RESTORE_ALIGN_STEPS=100 RESTORE_STEPS=30
bash experiments/layer_selection/run_study.sh > "$OUT/summary.txt" 2>&1
tail -25 "$OUT/summary.txt"
# attention-locality at the 8B shape (random weights: the time and memory are the point).
start=$(date +%s)
$BIN/prime-select --source synthetic:qwen3-8b --scorer attention-locality --data "$TRAIN" --window 1024 --seq-len 4096 \
  --sequences 4 --batch 1 --device cuda --dtype bf16 --ratios 1:1,1:3,1:7 > "$OUT/select_8b.txt" 2>&1
echo "8B attention-locality: exit $? in $(( $(date +%s) - start )) s wall (model generation included)" >> "$OUT/select_8b.txt"
tail -6 "$OUT/select_8b.txt"
