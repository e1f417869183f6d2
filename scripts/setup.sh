#!/usr/bin/env bash
# Create .venv (if missing) and install rnnlm with the given extras, e.g. `scripts/setup.sh test`.
# torch is pinned to 2.13.0: on this project's machines that resolves to a local CPU build. Elsewhere, point pip
# at PyTorch's CPU wheels first: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu scripts/setup.sh
# The install is editable, so only a change to pyproject.toml or this script needs pip again: a stamp in .venv
# records what was installed from which versions of both, and a later run with nothing changed returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
extras=${1:-}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=.venv/.rnnlm-installed
inputs=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && grep -qx "$inputs ${extras:-base}" "$stamp" \
        || { [ -z "$extras" ] && [ -f "$stamp" ] && grep -q "^$inputs " "$stamp"; }; then
    exit 0  # already installed from these inputs (any extras include the base install)
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0" numpy
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
grep -s "^$inputs " "$stamp" > "$stamp.new" || true
echo "$inputs ${extras:-base}" >> "$stamp.new"
mv "$stamp.new" "$stamp"
