#!/usr/bin/env bash
# Configures and builds build-gpu on the GPU machine (Release, CUDA on, the kernels for sm_90a
# alone) from only the sources FILTER matches (CMake's PRIME_SOURCE_FILTER; lib/util always), then
# TARGETS; the logs go to OUT/configure.log and OUT/build.log, the first errors to stdout. Needs
# .deps carried along.
#   bash experiments/gpu/build_filtered.sh OUT FILTER TARGET...
set -uo pipefail
out=${1:?usage: build_filtered.sh OUT FILTER TARGET...}
filter=${2:?usage: build_filtered.sh OUT FILTER TARGET...}
shift 2
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/../.."
start=$(date +%s)
export CMAKE_PREFIX_PATH=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)') TORCH_CUDA_ARCH_LIST=9.0a
cmake -S . -B build-gpu -GNinja -DCMAKE_BUILD_TYPE=Release -DPRIME_CUDA=ON -DPRIME_CUDA_ARCHITECTURES=90a-real \
  -DPRIME_SOURCE_FILTER="$filter" > "$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
cmake --build build-gpu -j"$(nproc)" --target "$@" > "$out/build.log" 2>&1 ||
  { grep -B2 -A10 -m5 error "$out/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
