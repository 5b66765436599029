#!/usr/bin/env bash
# Differential conformance suite: kvstore against the real MXNet 1.9.1 (docs/conformance.md,
# "The differential suite"). Installs MXNet 1.9.1 into .venv (once), then runs 300 random traces
# (KVSTORE_CONFORMANCE_TRACES) of at least 30 ops each plus every worked example, and fails on
# any disagreement, printing the shrunk trace and both outputs; then every optimizer for 50 steps
# (tests/conformance/optimizers.rs). About two minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/conformance/setup_mxnet.sh
KVSTORE_REQUIRE_MXNET=1 KVSTORE_MXNET_PYTHON="$PWD/.venv/bin/python" \
  cargo test -p kvstore-tests --test conformance --test optimizers -- --nocapture
