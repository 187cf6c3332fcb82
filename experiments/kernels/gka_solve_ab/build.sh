#!/usr/bin/env bash
# Builds the A/B harness (sm_90a) against the kernels of one source tree:
#   experiments/kernels/gka_solve_ab/build.sh OUT [TREE]
# TREE (default: this checkout) is any checkout whose kernels/ to build, e.g. `git worktree add
# /tmp/before HEAD~1`; the rest (lib/util) comes from this checkout. Needs nvcc and the torch wheel.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
out=$1
tree=${2:-$root}
torch=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')
nvcc -O3 -std=c++17 -arch=sm_90a --expt-relaxed-constexpr -lineinfo -D_GLIBCXX_USE_CXX11_ABI=1 \
  -I"$tree" -I"$root" -I"$root/lib" -isystem "$torch/include" -isystem "$torch/include/torch/csrc/api/include" \
  "$here/main.cu" "$here/forward.cu" "$here/backward.cu" -o "$out" \
  -L"$torch/lib" -lc10 -lc10_cuda -ltorch_cpu -ltorch_cuda -Xlinker -rpath="$torch/lib"
