#!/usr/bin/env bash
# MoE decode in CUDA graphs, on one GPU: the [moe] tests (the grouped expert GEMM vs the per-expert
# loop and fp64, a MoE model's graph replays vs eager decode and the full forward), the dense graph
# test (its MoE case: fp32 experts still refuse a graph), then Qwen3-30B-A3B's shape with synthetic
# weights in bf16, decode eager vs graph at B = 1 and 64 over a 4K synthetic context.
#   bash experiments/moe_graph/run_gpu.sh
# Needs what experiments/gpu/run_on_gpu.sh needs (.deps and .gpu/shared carried); MOE_SPEC picks
# another model (e.g. synthetic:qwen3-30b-a3b@layers=12 for a quicker run).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/prime-moe-out}
mkdir -p "$OUT"
trap 'bash experiments/gpu/pack_out.sh "$OUT"' EXIT  # all.tgz: every file, for the runner's few
OUT="$OUT" bash experiments/gpu/run_on_gpu.sh build || exit 1
# A [gpu] test that finds no CUDA device fails here instead of skipping.
export PRIME_REQUIRE_CUDA=1
build-gpu/bin/prime_tests "[moe]" > "$OUT/moe_tests.txt" 2>&1
echo "[moe] tests exit $?"; grep -E "MoE|FAILED|with expansion|<=|passed|failed" "$OUT/moe_tests.txt" | tail -20
build-gpu/bin/prime_tests "CUDA graph decode equals eager static steps and the full forward" > "$OUT/graph_test.txt" 2>&1
echo "graph decode test exit $?"; tail -2 "$OUT/graph_test.txt"
build-gpu/bin/prime-bench decode --device cuda --dtype bf16 --model "${MOE_SPEC:-synthetic:qwen3-30b-a3b}" \
  --batch 1,64 --prompt 4096 --new-tokens 16 --mode eager,graph --context synthetic \
  --json "$OUT/moe_decode.json" > "$OUT/moe_decode.txt" 2>&1
echo "decode bench exit $?"; tail -8 "$OUT/moe_decode.txt"
