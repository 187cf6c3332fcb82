#!/usr/bin/env bash
# Installs everything prime needs on a fresh Debian machine (idempotent), then configures and
# builds into ./build. Safe to run again: each step is skipped when already satisfied.
#   ./setup.sh            install + build
#   PRIME_SKIP_BUILD=1    install only
#   ./setup.sh --gather-deps   also copy the Debian-provided headers/libraries into .deps/ (git-
#                              ignored) so a machine without them (the GPU machine) can build
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '[setup] %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. Debian packages.
packages=(build-essential cmake nlohmann-json3-dev libeigen3-dev libcli11-dev catch2 libsqlite3-dev
          libpcre2-dev libutf8proc-dev libgloo-dev libopenblas0-pthread xz-utils ccache python3-pip
          libpq-dev postgresql gnuplot-nox)
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
# python3-pip is only needed when no python3 with pip is on PATH (e.g. pyenv provides one).
if python3 -m pip --version >/dev/null 2>&1; then
  missing=("${missing[@]/python3-pip}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. LibTorch from the PyPI torch wheel (its share/cmake/Torch). The same wheel family is on the
#    GPU machine, so one CMake setup builds both.
TORCH_VERSION=${PRIME_TORCH_VERSION:-2.11.0}
have_torch=$(python3 -c "import torch;print(torch.__version__.split('+')[0])" 2>/dev/null || true)
if [ "$have_torch" != "$TORCH_VERSION" ]; then
  log "installing torch==$TORCH_VERSION from PyPI (first time only; ~3 GB with its CUDA libraries)"
  python3 -m pip install -q --disable-pip-version-check "torch==$TORCH_VERSION"
fi
TORCH_CMAKE=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')

# 2b. For machines without the -dev packages: a self-contained copy under .deps/.
if [ "${1:-}" = "--gather-deps" ]; then
  log "gathering headers and libraries into .deps/"
  rm -rf .deps && mkdir -p .deps/include .deps/lib/cmake
  cp -r /usr/include/nlohmann /usr/include/CLI /usr/include/catch2 /usr/include/eigen3 /usr/include/gloo .deps/include/
  cp /usr/include/pcre2.h /usr/include/utf8proc.h /usr/include/sqlite3.h /usr/include/sqlite3ext.h .deps/include/
  cp -a /usr/lib/x86_64-linux-gnu/libpcre2-8.so* /usr/lib/x86_64-linux-gnu/libutf8proc.so* \
        /usr/lib/x86_64-linux-gnu/libsqlite3.so* .deps/lib/
  cp -r /usr/lib/cmake/Catch2 .deps/lib/cmake/
  cp /usr/lib/libCatch2WithMain.a .deps/lib/ 2>/dev/null || true
  du -sh .deps
fi

# 3. Configure and build (ccache keeps rebuilds cheap; PCH needs these sloppiness settings).
[ "${PRIME_SKIP_BUILD:-0}" = 1 ] && exit 0
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
export CCACHE_BASEDIR="$PWD"
jobs=${PRIME_JOBS:-$(nproc)}
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_CMAKE" -DPRIME_SOURCE_FILTER= \
  >build.configure.log 2>&1 || { cat build.configure.log; exit 1; }
log "building (-j$jobs)"
if ! cmake --build build -j"$jobs" >build.log 2>&1; then
  grep -E -B2 -A12 'error|Error' build.log | head -120
  log "build failed: full log in build.log"
  exit 1
fi
log "done: binaries in build/bin"
