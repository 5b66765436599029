#!/usr/bin/env bash
# Fetches NVRTC (CUDA 13.0's run-time compiler, a PyPI wheel; no GPU or CUDA install needed)
# into target/nvrtc and prints the folder that holds libnvrtc.so.13, for LD_LIBRARY_PATH: CI
# compiles the kernels with it.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=target/nvrtc
lib=$(find "$dest" -name 'libnvrtc.so.13' -printf '%h\n' 2>/dev/null | head -1 || true)
if [ -z "$lib" ]; then
  mkdir -p "$dest"
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --python-version 3.11 -d "$dest" "nvidia-cuda-nvrtc==13.0.*" >&2
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
    "$(ls "$dest"/nvidia_cuda_nvrtc-*.whl | head -1)" "$dest/x"
  lib=$(find "$dest" -name 'libnvrtc.so.13' -printf '%h\n' | head -1)
fi
echo "$(pwd)/$lib"
