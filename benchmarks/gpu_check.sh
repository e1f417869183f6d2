#!/usr/bin/env bash
# One prepared run on a GPU machine without a package index (../shared/gpu/README.md): the CUDA tests, then the
# engine's benchmarks on the device. Beforehand, here: `bash ../shared/gpu/wheels.sh .gpu` and
# `mkdir -p .gpu/data && cp ../shared/data/tinyshakespeare.txt .gpu/data/`; carry `.gpu`. Writes its log to $OUT.
set -uo pipefail
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD LD_LIBRARY_PATH=$PWD/.gpu/lib PATH=$PWD/.gpu/bin:$PATH PYTHONUNBUFFERED=1
corpus=.gpu/data/tinyshakespeare.txt
{
    nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv
    echo "== CUDA tests"
    timeout 150 python3 -m pytest -q -p no:cacheprovider -o filterwarnings=default \
        tests/model/test_graph_step.py tests/model/test_cuda.py tests/app/test_cuda.py 2>&1 | tail -25
    echo "== engine bookkeeping, H = 8"
    timeout 60 python3 benchmarks/engine_overhead.py --device cuda --rows 1 64 512 1024 --steps 100 --repeats 2 \
        --kinds greedy stops
    echo "== the shipped models' step, graph vs turn"
    timeout 60 python3 benchmarks/engine_overhead.py --device cuda --rows 1 64 1024 --steps 100 --repeats 2 \
        --kinds greedy --weights weights/rnn.safetensors
    timeout 60 python3 benchmarks/engine_overhead.py --device cuda --rows 1 64 1024 --steps 50 --repeats 2 \
        --kinds greedy --weights weights/gated.safetensors
    echo "== served, 1 HTTP worker"
    timeout 120 python3 benchmarks/load.py --device cuda --only default,gated --clients 1 64 512 --seconds 5 \
        --corpus "$corpus"
    echo "== served, 8 HTTP workers"
    timeout 60 python3 benchmarks/load.py --device cuda --only default --clients 512 --http-workers 8 --seconds 5 \
        --corpus "$corpus"
} 2>&1 | tee "$out/gpu_check.log"
