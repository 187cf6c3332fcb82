#!/usr/bin/env bash
# The layer-selection study at CPU scale (about 15 minutes on 2 busy cores): a tiny Qwen3-style teacher
# (6 layers, hidden 64, the 1,000-token test tokenizer) trained next-token on Gutenberg, every
# scorer on it, all 15 placements of 2 attention layers among 6 primed as GDN hybrids, and the
# validation table. Same pipeline as run_gpu.sh (run_study.sh), smaller everywhere.
#   bash experiments/layer_selection/run_cpu.sh      (build/bin must hold the binaries)
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT=${OUT:-experiments/layer_selection/results/cpu} WORK=${WORK:-/tmp/layer-selection-cpu}
export BIN=build/bin DEVICE=cpu DTYPE=fp32 SEQ=128 LAYER=GDN KEEP=2
mkdir -p "$OUT" "$WORK"
tokenizer=tests/fixtures/tokenizer/tiny.tokenizer.json
for split in valid test; do  # Gutenberg's valid split trains this teacher; its test split validates
  [ -f "$WORK/$split.tok" ] || $BIN/prime-data tokenize ../shared/data/corpus/gutenberg.$split.txt.xz --tokenizer $tokenizer \
    --out "$WORK/$split.tok" > /dev/null || exit 1
done
export TRAIN=$WORK/valid.tok VAL=$WORK/test.tok
export TEACHER_SPEC='synthetic:qwen3-0.6b@layers=6,hidden=64,heads=4,kv_heads=2,head_dim=16,intermediate=192,vocab=1024,max_positions=1024,seed=1'
export TEACHER_TOKENS=${TEACHER_TOKENS:-192K} TEACHER_BATCH=8K TEACHER_LR=3e-3 TEACHER_SECONDS=${TEACHER_SECONDS:-420}
export STAGE_TOKENS=${STAGE_TOKENS:-8K} STAGE_BATCH=4K VAL_TOKENS=8192 PARALLEL=2
export SELECT_ARGS="--window 32 --seq-len 128 --sequences 8 --batch 8"
export ALIGN_STEPS=20 RESTORE_ALIGN_STEPS=10 RESTORE_STEPS=5
bash experiments/layer_selection/run_study.sh
