#!/usr/bin/env bash
# One prepared run on a GPU machine without a package index (../shared/gpu/README.md), in two parts that each fit
# in about five minutes: `training` (the model's CUDA tests, the trainer end to end, training throughput against
# cuDNN in fp32 and bf16, the final evaluation) and `engine` (the serving CUDA tests, the engine's benchmarks).
#     bash benchmarks/gpu_check.sh [training|engine|all]     (default: all)
# Beforehand, here: `bash ../shared/gpu/wheels.sh .gpu` and
# `mkdir -p .gpu/data && cp ../shared/data/tinyshakespeare.txt .gpu/data/`; carry `.gpu`. Writes its log to $OUT.
set -uo pipefail
part=${1:-all}
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD LD_LIBRARY_PATH=$PWD/.gpu/lib PATH=$PWD/.gpu/bin:$PATH PYTHONUNBUFFERED=1
corpus=.gpu/data/tinyshakespeare.txt
training() {
    echo "== model CUDA tests (the trainer end to end on weights/gated's configuration included)"
    RNNLM_TEST_CORPUS=$corpus timeout 150 python3 -m pytest -q -p no:cacheprovider -o filterwarnings=default \
        tests/model/test_cuda.py tests/model/test_graph_step.py 2>&1 | tail -25
    echo "== training throughput against torch.nn (cuDNN), fp32 and bf16"
    timeout 120 python3 benchmarks/train_throughput.py --device cuda --bf16 --batch-sizes 64 256 1024 --steps 12
    echo "== the final evaluation on the device"
    timeout 40 python3 benchmarks/final_evaluation.py --device cuda --corpus "$corpus" --burn-ins 0,64,128
}
engine() {
    echo "== serving CUDA tests"
    timeout 90 python3 -m pytest -q -p no:cacheprovider -o filterwarnings=default tests/app/test_cuda.py 2>&1 \
        | tail -15
    echo "== engine bookkeeping, H = 8"
    timeout 40 python3 benchmarks/engine_overhead.py --device cuda --rows 1 64 512 1024 --steps 100 --repeats 2 \
        --kinds greedy stops
    echo "== the shipped models' step, graph vs turn"
    timeout 40 python3 benchmarks/engine_overhead.py --device cuda --rows 1 64 1024 --steps 100 --repeats 2 \
        --kinds greedy --weights weights/rnn.safetensors
    timeout 40 python3 benchmarks/engine_overhead.py --device cuda --rows 1 64 1024 --steps 50 --repeats 2 \
        --kinds greedy --weights weights/gated.safetensors
    echo "== served, 1 HTTP worker"
    timeout 90 python3 benchmarks/load.py --device cuda --only default,gated --clients 1 64 512 --seconds 5 \
        --corpus "$corpus"
    echo "== served, 8 HTTP workers"
    timeout 45 python3 benchmarks/load.py --device cuda --only default --clients 512 --http-workers 8 --seconds 5 \
        --corpus "$corpus"
}
{
    nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv
    case $part in
        training) training ;;
        engine) engine ;;
        *) training; engine ;;
    esac
} 2>&1 | tee "$out/gpu_check.log"
