#!/usr/bin/env bash
# Packs everything under an output folder into OUT/all.tgz, which sorts first among its files: the
# device runner brings back only a few files of a run, so the GPU scripts call this on exit.
#   bash experiments/gpu/pack_out.sh OUT
set -uo pipefail
out=${1:?usage: pack_out.sh OUT}
[ -d "$out" ] || exit 0
archive=$(mktemp /tmp/prime-out-XXXXXX.tgz)
tar czf "$archive" -C "$out" --exclude ./all.tgz . && mv "$archive" "$out/all.tgz"
