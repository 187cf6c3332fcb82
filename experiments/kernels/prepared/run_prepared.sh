#!/usr/bin/env bash
# One GPU call for the prepared GKA one-group changes, on the builds pack_builds.sh packed into .gpu/prebuilt.tar.xz
# (carry .deps/lib and .gpu), each part while the call's time allows (LIMIT_S, default 585 s from the start):
#  0. experiments/kernels/wgmma_rate.cu (.gpu/wgmma_rate, built here by nvcc as its header says; else built there):
#     the warpgroup MMAs' rate at the solve's shapes and their overlap with another block's FFMAs (a few seconds);
#  1. the tree and the CANDIDATES (default "foldall n128 fold128") alternating twice on GKA's bf16 forward;
#  2. `[gka],[wgmma]` and the sanitizer cases (memcheck, racecheck) on the fastest candidate (results in $OUT/w,
#     its name in $OUT/w/winner.txt);
#  3. OTHERS (default "fold both") and the tree once more, one round (results in $OUT/g);
#  4. the tree's own `[gka]` tests (results in $OUT/t);
#  5. the tree's GDN and Mamba-2 bf16 rows, the card's figures for the table (results in $OUT/r).
#   bash experiments/kernels/prepared/pack_builds.sh fold=gka_forward_one_epilogue_folded.diff \
#     both=gka_solve_one_early_h0_copies_async.diff foldall=gka_forward_one_epilogue_folded_all.diff \
#     n128=gka_solve_one_n128.diff fold128=gka_forward_one_folded_n128.diff
#   then on the GPU machine: bash experiments/kernels/prepared/run_prepared.sh
set -uo pipefail
cd "$(dirname "$0")/../../.."
start=$(date +%s)
left() { echo $(( ${LIMIT_S:-585} - ($(date +%s) - start) )); }
out=${OUT:-/tmp/prime-prepared-out}
candidates=${CANDIDATES:-foldall n128 fold128}
gka="--types GKA --dtype bf16 --no-backward"
sanitized="GKA bf16 forward: one small sequence for the sanitizer,GKA one-group solve: x within the bf16 form's bound of float64"
prebuilt() { bash experiments/gpu/run_prebuilt.sh; }
mkdir -p "$out"
probe=.gpu/wgmma_rate
[ -x $probe ] || { probe=/tmp/wgmma_rate; nvcc -O3 -std=c++17 -arch=sm_90a -I. experiments/kernels/wgmma_rate.cu -o $probe; }
timeout 60 $probe > "$out/wgmma_rate.txt" 2>&1; echo "wgmma_rate: exit $?"; cat "$out/wgmma_rate.txt"
OUT=$out BUILDS="tree $candidates" ROUNDS=2 BENCH=$gka DEADLINE_S=$(( $(left) < 200 ? $(left) : 200 )) prebuilt
# The candidate with the lowest mean forward time over its rounds (the GKA row's fwd ms).
winner=$(for name in $candidates; do
  cat "$out"/bench_"${name}"_*.txt 2>/dev/null | awk -v n="$name" '$1 == "GKA" && $2 ~ /^\(/ {s += $5; c++}
    END {if (c) printf "%s %.4f\n", n, s / c}'
done | sort -k2 -g | head -1 | cut -d' ' -f1)
winner=${winner:-${candidates%% *}}
mkdir -p "$out/w" && echo "$winner" > "$out/w/winner.txt" && echo "winner: $winner"
OUT=$out/w BUILDS="" ROUNDS=0 EXTRA_TESTS="[gka],[wgmma]" EXTRA_TESTS_BUILD=$winner SANITIZE=$sanitized \
  SANITIZE_BUILD=$winner DEADLINE_S=$(left) prebuilt
OUT=$out/g BUILDS="${OTHERS:-fold both} tree" ROUNDS=1 BENCH=$gka DEADLINE_S=$(left) prebuilt
OUT=$out/t TESTS="[gka]" BUILDS="" ROUNDS=0 DEADLINE_S=$(left) prebuilt
OUT=$out/r BUILDS=tree ROUNDS=1 BENCH="--types GDN,M2 --dtype bf16" DEADLINE_S=$(left) prebuilt
