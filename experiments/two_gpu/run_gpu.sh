#!/usr/bin/env bash
# Two GPUs of one host (device kind nvidia-h200-x2), in one call:
#  1. data-parallel align, 1 rank vs 2 ranks (torchrun, NCCL) with the same global batch, on a
#     small Qwen3-shaped GDN 1:1 hybrid: both loss curves (loss_curves.csv) and tokens/s;
#  2. the same scaling at the Qwen3-8B shape (synthetic weights, GDN 1:3, seq 4096, --recompute);
#  3. prime-search with 1 worker and with 2 workers (one per GPU) on a small sweep: wall times and
#     trials per GPU, each trial exactly once.
# Tables and logs go to $OUT; summary.txt holds the figures. NVLink multicast stays off.
#   bash experiments/two_gpu/run_gpu.sh            (carry .deps and .gpu; needs
#   .gpu/priming/gutenberg.train.gpt2.tok, made as experiments/priming_first/run_gpu.sh says)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/prime-two-gpu-out}
mkdir -p "$OUT"
trap 'bash experiments/gpu/pack_out.sh "$OUT"' EXIT  # all.tgz: every file, for the runner's few
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export CMAKE_PREFIX_PATH=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
export TORCH_CUDA_ARCH_LIST=9.0a
python3 -c 'import torch; print("GPUs", torch.cuda.device_count())' | tee "$OUT/summary.txt"
bin=build-gpu/bin
work=${WORK:-/tmp/two-gpu}
rm -rf "$work"; mkdir -p "$work"
data=.gpu/priming/gutenberg.train.gpt2.tok
if [ ! -x $bin/prime-train ] || [ ! -x $bin/prime-search ]; then
  generator=""; command -v ninja >/dev/null && generator="-GNinja"
  cmake -S . -B build-gpu $generator -DCMAKE_BUILD_TYPE=Release -DPRIME_CUDA=ON > "$OUT/configure.log" 2>&1 ||
    { tail -30 "$OUT/configure.log"; exit 1; }
  start=$(date +%s)
  cmake --build build-gpu -j"$(nproc)" --target prime-train prime-search prime-db > "$OUT/build.log" 2>&1 ||
    { grep -B2 -A10 -m5 error "$OUT/build.log"; exit 1; }
  echo "build: $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
fi
torchrun_bin=$(python3 -c 'import shutil;print(shutil.which("torchrun") or "")')
[ -n "$torchrun_bin" ] || torchrun_bin="python3 -m torch.distributed.run"

# align RUN_NAME RANKS EXTRA_FLAGS...: one align run, 1 rank plain or N ranks under torchrun.
align() {
  local name=$1 ranks=$2; shift 2
  local launcher=""
  [ "$ranks" -gt 1 ] && launcher="$torchrun_bin --no-python --standalone --nproc-per-node $ranks"
  $launcher $bin/prime-train --stage align --align-layers mixer --data $data --lr 1e-3 --warmup 2 \
    --schedule constant --seed 1 --device cuda --dtype bf16 --log-every 1 --out $work/$name "$@" \
    > "$OUT/$name.log" 2>&1
  echo "$name: exit $?" | tee -a "$OUT/summary.txt"
}
# Mean tokens/s of a run's steps after the first 3 (start-up), from metrics.jsonl.
rate() {
  python3 - "$work/$1/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l]
rows = [r for r in rows if 'tokens_per_s' in r][3:]
print("%.0f" % (sum(r["tokens_per_s"] for r in rows) / max(len(rows), 1)))
PY
}

# 1. Small model: same global batch (64K tokens per step), 1 rank vs 2 ranks.
small='synthetic:qwen3-0.6b@layers=6,hidden=512,heads=8,kv_heads=4,head_dim=64,intermediate=1536,vocab=50304,max_positions=4096,seed=1'
align small_1rank 1 --model "$small+convert:GDN:1:1" --teacher "$small" --tokens 2M --batch-tokens 64K --seq-len 1024
align small_2ranks 2 --model "$small+convert:GDN:1:1" --teacher "$small" --tokens 2M --batch-tokens 64K --seq-len 1024
python3 - "$work/small_1rank/metrics.jsonl" "$work/small_2ranks/metrics.jsonl" "$OUT/loss_curves.csv" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
def losses(path):
    return {r["step"]: r["loss"] for r in (json.loads(l) for l in open(path)) if "loss" in r and "step" in r}
one, two = losses(sys.argv[1]), losses(sys.argv[2])
steps = sorted(set(one) & set(two))
with open(sys.argv[3], "w") as out:
    out.write("step,loss_1rank,loss_2ranks\n")
    for s in steps: out.write("%d,%.6f,%.6f\n" % (s, one[s], two[s]))
worst = max(abs(one[s] - two[s]) / abs(one[s]) for s in steps) if steps else float("nan")
print("small: %d common steps, worst relative loss difference 1 vs 2 ranks %.2e" % (len(steps), worst))
PY
r1=$(rate small_1rank); r2=$(rate small_2ranks)
echo "small: tokens/s 1 rank $r1, 2 ranks $r2, scaling efficiency $(python3 -c "print('%.3f' % ($r2 / (2 * $r1)))")" | tee -a "$OUT/summary.txt"

# 2. The Qwen3-8B shape: a few steps of 32K tokens (4K per micro-batch) per rank-count.
big=synthetic:qwen3-8b
align big_1rank 1 --model "$big+convert:GDN:1:3" --teacher $big --tokens 256K --batch-tokens 32K --micro-batch-tokens 4K --seq-len 4096 --recompute
align big_2ranks 2 --model "$big+convert:GDN:1:3" --teacher $big --tokens 256K --batch-tokens 32K --micro-batch-tokens 4K --seq-len 4096 --recompute
b1=$(rate big_1rank); b2=$(rate big_2ranks)
echo "8B shape: tokens/s 1 rank $b1, 2 ranks $b2, scaling efficiency $(python3 -c "print('%.3f' % ($b2 / (2 * $b1)))")" | tee -a "$OUT/summary.txt"

# 3. A 6-trial sweep (GDN / GKA / M2 x 1:1, 1:3) with 1 worker, then with 2 (one per GPU).
python3 - "$small" "$data" "$work/sweep.json" <<'PY'
import json, sys
spec = json.load(open("templates/sweeps/demo-cpu.json"))
spec.update({"study": "two-gpu", "source": sys.argv[1], "teacher": "same",
             "data": {"train": sys.argv[2], "val": sys.argv[2]}})
spec.pop("pretrain", None)
for stage in spec["stages"]: stage["tokens"] = "4M"
spec["train"].update({"seq_len": 1024, "batch_tokens": "64K", "device": "cuda", "dtype": "bf16", "eval_every": 0,
                      "val_tokens": "256K"})
spec["eval"] = {"ppl": {"max_tokens": "256K"}, "decode": {"batch": 16, "prompt": 1024, "tokens": 64}}
json.dump(spec, open(sys.argv[3], "w"), indent=1)
PY
for workers in 1 2; do
  start=$(date +%s)
  $bin/prime-search --spec $work/sweep.json --store $work/sweep_$workers.db --workers $workers \
    > "$OUT/sweep_$workers.log" 2>&1
  echo "sweep, $workers worker(s): exit $?, $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
  $bin/prime-db --store $work/sweep_$workers.db trials --study two-gpu > "$OUT/sweep_${workers}_trials.txt" 2>&1
  # Trials per worker process (one per GPU): the trials table's last column is host:pid.
  echo "  trials per worker: $(awk 'NR > 1 && $4 == "COMPLETE" {print $NF}' "$OUT/sweep_${workers}_trials.txt" |
    sort | uniq -c | awk '{printf "%s ", $1}')" | tee -a "$OUT/summary.txt"
done
tail -40 "$OUT/summary.txt"
