#!/usr/bin/env bash
# The first priming study, on one GPU: train a small Qwen3-style teacher on Gutenberg (next-token,
# prime-train --stage pt), convert it to GDN and GKA hybrids at 1:1 and 1:3 (in memory), then
# align and distil each on 2% of the teacher's tokens, with validation perplexity of the teacher
# and of every hybrid after conversion and after each stage. Tables and logs go to $OUT.
#   bash experiments/priming_first/run_gpu.sh
# Needs .deps (./setup.sh --gather-deps) and .gpu/priming/gutenberg.{train,valid}.gpt2.tok
# (prime-data tokenize with ../shared/data/tokenizers/gpt2-bytelevel-bpe.tokenizer.json) carried.
# TEACHER_SECONDS bounds the teacher's training: the run is stopped then and its last checkpoint
# (written every 25 steps) is the teacher.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/prime-priming-out}
mkdir -p "$OUT"
trap 'bash experiments/gpu/pack_out.sh "$OUT"' EXIT  # all.tgz: every file, for the runner's few
export CMAKE_PREFIX_PATH=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
export TORCH_CUDA_ARCH_LIST=9.0a
data=.gpu/priming
work=${WORK:-/tmp/priming}
mkdir -p "$work"
bin=build-gpu/bin
if [ ! -x $bin/prime-train ] || [ ! -x $bin/prime-eval ]; then
  generator=""; command -v ninja >/dev/null && generator="-GNinja"
  cmake -S . -B build-gpu $generator -DCMAKE_BUILD_TYPE=Release -DPRIME_CUDA=ON \
    > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
  start=$(date +%s)
  cmake --build build-gpu -j"$(nproc)" --target prime-train prime-eval > "$OUT/build.log" 2>&1 ||
    { grep -B2 -A10 -m5 error "$OUT/build.log"; exit 1; }
  echo "build: $(( $(date +%s) - start )) s"
fi
teacher_spec='synthetic:qwen3-0.6b@layers=6,hidden=512,heads=8,kv_heads=4,head_dim=64,intermediate=1536,vocab=50304,max_positions=4096,seed=1'
seq=512
ppl() {  # ppl MODEL -> "ppl tokens"
  $bin/prime-eval --model "$1" --device cuda --dtype bf16 --ppl $data/gutenberg.valid.gpt2.tok --ctx $seq --stride 256 \
    --max-tokens ${VAL_TOKENS:-262144} --batch 32 --json "$2" > /dev/null 2>&1 &&
    python3 -c "import json,sys;d=json.load(open('$2'));p=d.get('ppl',d);print('%.3f'%p['ppl'])"
}
# 1. The teacher.
start=$(date +%s)
timeout ${TEACHER_SECONDS:-240} $bin/prime-train --model "$teacher_spec" --stage pt --data $data/gutenberg.train.gpt2.tok \
  --tokens ${TEACHER_TOKENS:-64M} --batch-tokens 64K --seq-len $seq --lr 2e-3 --warmup 100 --schedule cosine \
  --save-every 25 --keep 1 --device cuda --dtype bf16 --log-every 25 --out $work/teacher > "$OUT/teacher.log" 2>&1
echo "teacher: exit $? after $(( $(date +%s) - start )) s"; tail -2 "$OUT/teacher.log"
teacher=$work/teacher/final
teacher_tokens=$(python3 -c "import json;print(json.load(open('$teacher/trainer.json'))['tokens'])")
teacher_seconds=$(( $(date +%s) - start ))
echo "teacher: $teacher_tokens tokens, val ppl $(ppl $teacher $OUT/teacher_ppl.json)" | tee "$OUT/summary.txt"
# 2. Hybrids: 1% of the teacher's tokens for align, 1% for distill, all four at once on the GPU.
stage_tokens=$(( teacher_tokens / 100 / 8192 * 8192 ))
hybrid() {  # hybrid LAYER RATIO
  local name=$1_${2/:/to} dir=$work/$1_${2/:/to}
  local spec="$teacher+convert:$1:$2"
  local t0 t1 t2 p0 p1 p2
  p0=$(ppl "$spec" "$OUT/${name}_convert.json")
  t0=$(date +%s)
  $bin/prime-train --model "$spec" --teacher $teacher --stage align --align-layers mixer --data $data/gutenberg.train.gpt2.tok \
    --tokens $stage_tokens --batch-tokens 8K --seq-len $seq --lr 1e-3 --warmup 5 --schedule cosine --seed 1 \
    --device cuda --dtype bf16 --log-every 10 --out $dir/align > "$OUT/${name}_align.log" 2>&1 || { echo "$name align failed"; tail -3 "$OUT/${name}_align.log"; return; }
  t1=$(date +%s)
  p1=$(ppl $dir/align/final "$OUT/${name}_align.json")
  $bin/prime-train --model $dir/align/final --teacher $teacher --stage distill --data $data/gutenberg.train.gpt2.tok \
    --tokens $stage_tokens --batch-tokens 8K --seq-len $seq --lr 3e-4 --warmup 5 --schedule cosine --seed 2 \
    --device cuda --dtype bf16 --log-every 10 --out $dir/distill > "$OUT/${name}_distill.log" 2>&1 || { echo "$name distill failed"; tail -3 "$OUT/${name}_distill.log"; return; }
  t2=$(date +%s)
  p2=$(ppl $dir/distill/final "$OUT/${name}_distill.json")
  echo "$1 $2 | converted $p0 | align $p1 ($stage_tokens tokens, $((t1 - t0)) s) | distill $p2 ($stage_tokens tokens, $((t2 - t1)) s)"
}
for layer in GDN GKA; do
  for ratio in 1:1 1:3; do hybrid $layer $ratio > "$OUT/row_${layer}_${ratio/:/to}.txt" 2>&1 & done
done
wait
cat "$OUT"/row_*.txt | tee -a "$OUT/summary.txt"
echo "teacher training: $teacher_seconds s" >> "$OUT/summary.txt"
