#!/usr/bin/env bash
# Packs everything under an output folder into OUT/all.tgz, which sorts first among its files: the
# device runner brings back only a few files of a run, so the GPU scripts call this on exit (a
# script killed outright by the runner's limit never gets there: keep inside the deadline).
#   bash experiments/gpu/pack_out.sh OUT
set -uo pipefail
out=${1:?usage: pack_out.sh OUT}
[ -d "$out" ] || exit 0
archive=$(mktemp /tmp/prime-out-XXXXXX.tgz)
tar czf "$archive" -C "$out" --exclude ./all.tgz .
status=$?
# tar's 1: a file changed while it was read (a log still written): the archive holds what was there.
if [ $status -le 1 ]; then mv "$archive" "$out/all.tgz"; else rm -f "$archive"; exit $status; fi
size=$(stat -c %s "$out/all.tgz")
[ "$size" -le $(( 16 * 1024 * 1024 )) ] || echo "pack_out: all.tgz is $(( size >> 20 )) MiB, over the runner's 16 MiB a file"
