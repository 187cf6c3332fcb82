#!/usr/bin/env bash
# GKA trainable at scale, on one GPU: the [gka] and [gpu] tests (a [gpu] test that finds no CUDA
# device fails here), then align steps of a Qwen3-8B-shaped 1:3 GKA hybrid (synthetic weights,
# seq 4096, bf16 autocast) with and without --recompute, printing each run's peak device memory
# and tokens/s. Logs and metrics go to $OUT.
#   bash experiments/gka_scale/run_gpu.sh
# Needs .deps (./setup.sh --gather-deps), .gpu/shared (a copy of ../shared/data's small files, as
# for experiments/gpu/run_on_gpu.sh) and .gpu/priming/gutenberg.valid.gpt2.tok (as for
# experiments/priming_first/run_gpu.sh) carried along. STEPS (default 4): steps per run.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/prime-gka-scale-out}
mkdir -p "$OUT"
trap 'bash experiments/gpu/pack_out.sh "$OUT"' EXIT  # all.tgz: every file, for the runner's few
[ -d ../shared ] || { mkdir -p ../shared && cp -r .gpu/shared/* ../shared/; }
export CMAKE_PREFIX_PATH=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
export TORCH_CUDA_ARCH_LIST=9.0a
bin=build-gpu/bin
if [ ! -x $bin/prime-train ] || [ ! -x $bin/prime_tests ]; then
  generator=""; command -v ninja >/dev/null && generator="-GNinja"
  cmake -S . -B build-gpu $generator -DCMAKE_BUILD_TYPE=Release -DPRIME_CUDA=ON \
    > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
  start=$(date +%s)
  cmake --build build-gpu -j"$(nproc)" --target prime_tests prime-train > "$OUT/build.log" 2>&1 ||
    { grep -B2 -A10 -m5 error "$OUT/build.log"; exit 1; }
  echo "build: $(( $(date +%s) - start )) s"
fi

# 1. Tests: GKA (CPU and CUDA) and every [gpu] test.
export PRIME_REQUIRE_CUDA=1
for tag in "[gka]" "[gpu]"; do
  name=${tag//[\[\]]/}
  $bin/prime_tests "$tag" > "$OUT/tests_$name.log" 2>&1
  echo "prime_tests $tag: exit $?, $(grep -E '^(All tests passed|test cases:)' "$OUT/tests_$name.log" | tail -1)"
done
grep -E "^\[gka\]\[gpu\]|chunk solve|fp32-solve|bytes kept" "$OUT/tests_gka.log"

# 2. 8B-shape align steps on a GPT-2-tokenized shard (the speed and memory of a step do not
# depend on the text; the synthetic 8B vocabulary covers its ids).
steps=${STEPS:-4}
data=.gpu/priming/gutenberg.valid.gpt2.tok
[ -s "$data" ] || { echo "missing $data (see experiments/priming_first/run_gpu.sh)"; exit 1; }
for recompute in "" "--recompute"; do
  name=gka_1to3_align${recompute:+_recompute}
  rm -rf "/tmp/$name" "$OUT/$name.jsonl"
  start=$(date +%s)
  $bin/prime-train --model synthetic:qwen3-8b+convert:GKA:1:3 --teacher synthetic:qwen3-8b --stage align \
    --data "$data" --seq-len 4096 --batch-tokens 4K --tokens $(( steps * 4096 )) --lr 1e-4 --warmup 1 \
    --schedule constant --device cuda --dtype bf16 --log-every 1 --save-every 1000000 $recompute \
    --metrics "$OUT/$name.jsonl" --out "/tmp/$name" > "$OUT/$name.log" 2>&1
  code=$?
  echo "GKA 1:3 align ${recompute:-(no --recompute)}: exit $code after $(( $(date +%s) - start )) s"
  python3 - "$OUT/$name.jsonl" <<'PY'
import json, os, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()] if os.path.exists(sys.argv[1]) else []
rows = [r for r in rows if 'tokens_per_s' in r]
for r in rows:
    print("  step %s loss %.4f tok/s %.0f peak %.1f GB" % (r.get('step'), r.get('loss', float('nan')),
          r.get('tokens_per_s', 0), r.get('peak_memory_gb', float('nan'))))
if not rows: print("  no step finished")
PY
  [ $code -eq 0 ] || tail -5 "$OUT/$name.log"
  rm -rf "/tmp/$name"  # an 8B checkpoint would fill the disk
done
