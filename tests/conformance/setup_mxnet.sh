#!/usr/bin/env bash
# Installs MXNet 1.9.1 (CPU build from PyPI) into <repo>/.venv, the differential oracle used by
# tests/conformance/mxnet_replay.py. Idempotent: does nothing when .venv already imports mxnet 1.9.1.
# Usage: bash tests/conformance/setup_mxnet.sh   (from anywhere; the repository root is found from
# this script's location). Override the interpreter that creates the venv with PYTHON=...
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${repo_root}/.venv"
python="${PYTHON:-python3}"

has_mxnet() {
    [ -x "${venv}/bin/python" ] &&
        "${venv}/bin/python" -c 'import sys, mxnet; sys.exit(0 if mxnet.__version__ == "1.9.1" else 1)' \
            >/dev/null 2>&1
}

if has_mxnet; then
    echo "setup_mxnet: ${venv} already has mxnet 1.9.1"
    exit 0
fi

if [ ! -x "${venv}/bin/python" ]; then
    "${python}" -m venv "${venv}"
fi
"${venv}/bin/python" -m pip install --quiet --disable-pip-version-check "mxnet==1.9.1" "numpy<1.24"

if ! has_mxnet; then
    echo "setup_mxnet: mxnet 1.9.1 still does not import from ${venv}" >&2
    "${venv}/bin/python" -c 'import mxnet; print(mxnet.__version__)' >&2 || true
    exit 1
fi
echo "setup_mxnet: installed mxnet $("${venv}/bin/python" -c 'import mxnet; print(mxnet.__version__)') into ${venv}"
