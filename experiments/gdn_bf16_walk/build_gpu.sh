#!/usr/bin/env bash
# Builds build-gpu on the GPU machine for this folder's scripts: prime_tests (GDN's and the warpgroup
# MMAs' kernel tests) and prime-bench from GDN's sources (experiments/gpu/build_filtered.sh; carry
# .deps), logs under OUT. A build folder kept from an earlier call may hold objects of a patched
# source whose copy here is older than them, so every file a patch of this folder touches is rebuilt.
#   bash experiments/gdn_bf16_walk/build_gpu.sh OUT
set -uo pipefail
out=${1:?usage: build_gpu.sh OUT}
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/../.."
sed -n 's|^+++ b/||p' experiments/gdn_bf16_walk/*.patch | sort -u | xargs -r touch
bash experiments/gpu/build_filtered.sh "$out" \
  '/lib/|/search/|/kernels/|/apps/prime-bench|/tests/reference/|/tests/test_kernels_(gdn|wgmma)[.]cpp' \
  prime_tests prime-bench
