#!/usr/bin/env bash
# One training step of Qwen3-8B-shaped hybrids on one GPU (prime-bench train: synthetic weights,
# bf16 autocast, seq 4096): step time, tokens/s, MFU, peak memory and the share of the step spent
# in the replaced layers' mixers, for GDN, GKA and Mamba-2 at 1:3, with and without --recompute,
# each timed with prime's CUDA kernels and with the torch-ops forms on the same models
# (--compare-kernels), then one step of each attributed per kernel by ncu. Tables go to $OUT.
#   bash experiments/train_bench/run_gpu.sh
# Needs .deps (./setup.sh --gather-deps) carried along. TYPES (default "GDN GKA M2"), RECOMPUTE
# (default "no yes"), REPEATS (default 3).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/prime-train-bench-out}
mkdir -p "$OUT"
trap 'bash experiments/gpu/pack_out.sh "$OUT"' EXIT  # all.tgz: every file, for the runner's few
export CMAKE_PREFIX_PATH=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
export TORCH_CUDA_ARCH_LIST=9.0a
bin=build-gpu/bin
if [ ! -x $bin/prime-bench ]; then
  generator=""; command -v ninja >/dev/null && generator="-GNinja"
  cmake -S . -B build-gpu $generator -DCMAKE_BUILD_TYPE=Release -DPRIME_CUDA=ON \
    > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
  cmake --build build-gpu -j"$(nproc)" --target prime-bench > "$OUT/build.log" 2>&1 ||
    { grep -B2 -A10 -m5 error "$OUT/build.log"; exit 1; }
fi
for layer in ${TYPES:-GDN GKA M2}; do
  for recompute in ${RECOMPUTE:-no yes}; do
    flag=""; [ "$recompute" = yes ] && flag=--recompute
    name=train_${layer}_1to3${flag:+_recompute}
    $bin/prime-bench train --model synthetic:qwen3-8b+convert:$layer:1:3 --teacher synthetic:qwen3-8b \
      --stage align --seq-len 4096 --batch 1 --device cuda --dtype bf16 --repeats ${REPEATS:-3} --compare-kernels $flag \
      > "$OUT/$name.txt" 2>&1
    echo "== $layer 1:3 align ${flag:-(no --recompute)}: exit $?"; cat "$OUT/$name.txt"
  done
done
# One step of each type attributed per kernel (8 layers of the 8B shape, 1:3), where ncu is installed.
if command -v ncu > /dev/null; then
  for layer in ${TYPES:-GDN GKA M2}; do
    ncu --profile-from-start off --metrics gpu__time_duration.sum --print-summary per-kernel $bin/prime-bench train \
      --model "synthetic:qwen3-8b@layers=8+convert:$layer:1:3" --teacher "synthetic:qwen3-8b@layers=8" --stage align \
      --seq-len 4096 --batch 1 --device cuda --dtype bf16 --profile > "$OUT/ncu_train_step_$layer.txt" 2>&1
    echo "== ncu of one $layer 1:3 step: exit $?"
  done
fi
