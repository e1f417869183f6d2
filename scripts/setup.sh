#!/usr/bin/env bash
# Create .venv (if missing) and install rnnlm with the given extras, e.g. `scripts/setup.sh test`.
# torch is pinned to 2.13.0: on this project's machines that resolves to a local CPU build. Elsewhere, point pip
# at PyTorch's CPU wheels first: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
extras=${1:-}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0" numpy
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
