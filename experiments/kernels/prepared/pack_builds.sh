#!/usr/bin/env bash
# Builds the tree and, beside it, the library of each prepared diff named, and packs them for
# experiments/gpu/run_prebuilt.sh (.gpu/prebuilt.tar.xz): the tree's libprime.so, prime_tests and apps in tree/,
# each diff's libprime.so in a folder named after it (gka_solve_one_pairs.diff -> pairs/ with NAME=pairs given as
# NAME=FILE), libpq and its libraries in lib/. Run from a clean checkout with a configured CUDA build in build/;
# the checkout is clean again afterwards (each diff applied, built, and reversed).
#   bash experiments/kernels/prepared/pack_builds.sh fewer=gka_solve_one_fewer_instructions.diff \
#     pairs=gka_solve_one_pairs.diff
set -euo pipefail
cd "$(dirname "$0")/../../.."
[ -z "$(git status --porcelain --untracked-files=no)" ] || { echo "the checkout has changes: commit or stash them"; exit 1; }
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime CCACHE_BASEDIR=$PWD
stage=${STAGE:-/tmp/pb}
rm -rf "$stage" && mkdir -p "$stage/tree" "$stage/lib"
cmake --build build -j2 > "$stage/build_tree.log" 2>&1 || { tail -20 "$stage/build_tree.log"; exit 1; }
cp build/libprime.so build/bin/prime_tests build/bin/prime-* "$stage/tree/"
# libpq and what it needs that the GPU machine may lack.
ldd build/bin/prime_tests | awk '/libpq|libldap|liblber|libsasl2|libgssapi_krb5|libkrb5|libk5crypto|libkrb5support|libcom_err|libkeyutils|libsqlite3|libpcre2|libutf8proc/ {print $3}' |
  xargs -r -I{} cp -L {} "$stage/lib/"
for entry in "$@"; do
  name=${entry%%=*} diff=experiments/kernels/prepared/${entry#*=}
  git apply "$diff"
  status=0
  cmake --build build -j2 --target prime > "$stage/build_$name.log" 2>&1 || status=$?
  [ $status -eq 0 ] && mkdir -p "$stage/$name" && cp build/libprime.so "$stage/$name/"
  git apply -R "$diff"
  [ $status -eq 0 ] || { tail -20 "$stage/build_$name.log"; exit 1; }
done
cmake --build build -j2 > /dev/null 2>&1  # the tree's build back in build/
strip --strip-unneeded "$stage"/*/libprime.so "$stage"/tree/prime*
mkdir -p .gpu
folders=$(cd "$stage" && ls -d */ | tr -d / | tr "\n" " ")
# One dictionary over all the libraries: xz keeps one copy of what they share.
# shellcheck disable=SC2086  # folders is a list
tar cf - -C "$stage" $folders | xz -T1 --lzma2=preset=6,dict=384MiB > .gpu/prebuilt.tar.xz
echo "packed $folders: $(du -h .gpu/prebuilt.tar.xz | cut -f1)"
