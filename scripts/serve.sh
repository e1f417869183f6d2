#!/usr/bin/env bash
# Set everything up and serve the shipped default model (weights/rnn.safetensors) on http://127.0.0.1:8000.
# Extra arguments go to rnnlm-serve, e.g. `scripts/serve.sh --weights weights/gated.safetensors --port 9000`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/rnnlm-serve "$@"
