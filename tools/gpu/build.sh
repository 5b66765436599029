#!/usr/bin/env bash
# Builds every GPU check and benchmark on this (CPU) machine and stages them in .gpu/ for the
# GPU machine (which has no Rust toolchain): the device-op and device-store suites, the engine
# equivalence suite on the CUDA backend, the kernel compile test, the benchmark binary, the
# PyTorch baseline and tools/gpu/run.sh. Then, on the GPU machine: `bash .gpu/run.sh`.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/bin
export CARGO_PROFILE_RELEASE_DEBUG=0
tests() { # prints the paths of the test executables cargo builds
  cargo test --release "$@" --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] != ["bin"]:
        print(m["target"]["name"], m["executable"])'
}
cargo build --release -p kvstore-cuda --features cuda --bins
cp target/release/kvstore-gpu-bench .gpu/bin/
{ tests -p kvstore-cuda --features nccl --test device_ops --test compile
  tests -p kvstore-tests --features nccl --test equivalence --test device_store; } \
  | while read -r name path; do cp "$path" ".gpu/bin/$name"; done
strip .gpu/bin/* 2>/dev/null || true
cp tools/gpu/run.sh tools/gpu/torch_bench.py tools/gpu/paired_bench.py tools/gpu/report.py .gpu/
ls -la .gpu/bin
du -sh .gpu
