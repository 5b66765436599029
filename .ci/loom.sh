#!/usr/bin/env bash
# Loom model checking of the dependency engine (crates/kvstore-engine/tests/loom.rs): every
# interleaving of its workers and clients up to LOOM_MAX_PREEMPTIONS preemptions (default 2).
# A separate target dir keeps the --cfg loom build from invalidating the normal one.
# A few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
  cargo test --release -p kvstore-engine --test loom "$@"
