#!/usr/bin/env bash
# What run_gpu.sh measures, on this machine's CPUs (2 cores, Gloo), in ~7 minutes:
#  1. data-parallel align, 1 rank vs 2 ranks under torchrun (Gloo) with the same global batch, one
#     intra-op thread per rank, on a small Qwen3-shaped GDN 1:1 hybrid and WikiText-2 tokens: both loss
#     curves (loss_curves_cpu.csv, the worst relative difference) and the scaling efficiency, tokens/s of
#     2 ranks / (2 x 1 rank); 1 rank with both cores' threads beside them;
#  2. the demo sweep (templates/sweeps/demo-cpu.json, 6 trials) with 1 worker and with 2: wall times
#     and trials per worker, each trial exactly once.
# Summary in $OUT/summary_cpu.txt.
#   bash experiments/two_gpu/run_cpu.sh     (after ./setup.sh)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-experiments/two_gpu/results}
work=${WORK:-/tmp/two-gpu-cpu}
mkdir -p "$OUT"; rm -rf "$work"; mkdir -p "$work"
summary="$OUT/summary_cpu.txt"
{ echo "$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"; } > "$summary"
bin=build/bin
torchrun_bin=$(python3 -c 'import shutil;print(shutil.which("torchrun") or "")')
[ -n "$torchrun_bin" ] || torchrun_bin="python3 -m torch.distributed.run"
$bin/prime-data tokenize ../shared/data/corpus/wikitext2.valid.txt.xz \
  --tokenizer ../shared/data/tokenizers/gpt2-bytelevel-bpe.tokenizer.json --out "$work/wt2.valid.tok" > /dev/null

# align NAME RANKS THREADS: one align run, 1 rank plain or N ranks under torchrun, THREADS intra-op threads each.
small='synthetic:qwen3-0.6b@layers=4,hidden=256,heads=4,kv_heads=2,head_dim=64,intermediate=768,vocab=50304'
small="$small,max_positions=1024,seed=1"
align() {
  local name=$1 ranks=$2 threads=$3 launcher=""
  [ "$ranks" -gt 1 ] && launcher="$torchrun_bin --no-python --standalone --nproc-per-node $ranks"
  OMP_NUM_THREADS=$threads $launcher $bin/prime-train --stage align --align-layers mixer \
    --model "$small+convert:GDN:1:1" --teacher "$small" --data "$work/wt2.valid.tok" --tokens 96K --batch-tokens 8K \
    --seq-len 256 --lr 1e-3 --warmup 2 --schedule constant --seed 1 --log-every 1 --out "$work/$name" \
    > "$OUT/${name}_cpu.log" 2>&1
  echo "$name: exit $?" >> "$summary"
}
align small_1rank 1 1
align small_2ranks 2 1
align small_1rank_2threads 1 2
python3 - "$work" "$OUT/loss_curves_cpu.csv" <<'PY' >> "$summary"
import json, sys
def steps(name):
    rows = [json.loads(l) for l in open(f"{sys.argv[1]}/{name}/metrics.jsonl")]
    return {r["step"]: r for r in rows if r.get("kind") == "step"}
one, two, both = steps("small_1rank"), steps("small_2ranks"), steps("small_1rank_2threads")
common = sorted(set(one) & set(two))
with open(sys.argv[2], "w") as out:
    out.write("step,loss_1rank,loss_2ranks\n")
    for s in common: out.write("%d,%.7f,%.7f\n" % (s, one[s]["loss"], two[s]["loss"]))
worst = max(abs(one[s]["loss"] - two[s]["loss"]) / abs(one[s]["loss"]) for s in common)
print("loss curves: %d common steps, worst relative difference 1 vs 2 ranks %.1e" % (len(common), worst))
rate = lambda run: sum(r["tokens_per_s"] for s, r in run.items() if s > 2) / len([s for s in run if s > 2])
r1, r2, r12 = rate(one), rate(two), rate(both)
print("tokens/s after 2 steps: 1 rank x 1 thread %.0f, 2 ranks x 1 thread %.0f, 1 rank x 2 threads %.0f"
      % (r1, r2, r12))
print("scaling efficiency 2 ranks / (2 x 1 rank): %.3f; 2 ranks / 1 rank on both cores: %.2fx"
      % (r2 / (2 * r1), r2 / r12))
PY

# The demo sweep with 1 worker, then 2: wall time and trials per worker (the trials table's last column).
for workers in 1 2; do
  start=$(date +%s)
  $bin/prime-search --spec templates/sweeps/demo-cpu.json --store "$work/sweep_$workers.db" --workers $workers \
    > "$OUT/sweep_${workers}_cpu.log" 2>&1
  echo "sweep, $workers worker(s): exit $?, $(( $(date +%s) - start )) s" >> "$summary"
  $bin/prime-db --store "$work/sweep_$workers.db" trials --study demo-cpu > "$OUT/sweep_${workers}_cpu_trials.txt" 2>&1
  echo "  complete trials per worker: $(awk 'NR > 1 && $4 == "COMPLETE" {print $NF}' \
    "$OUT/sweep_${workers}_cpu_trials.txt" | sort | uniq -c | awk '{printf "%s ", $1}')" >> "$summary"
done
cat "$summary"
