#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py: step times of every method at the reference
# batch in fp32 / bf16 / fp16, stacked vs looped streams, peak GPU memory, evaluation
# time per case, and the command line end to end on CUDA with a resume), one JSON:
#   bash benchmarks/gpu_check.sh [OUT.json] [gpu_check.py options]
# on a machine with a CUDA build of torch and this package's dependencies importable
# (pip install -e .). About 3 minutes on an H200; stopped after LIMIT seconds (default
# 480), keeping the sections already written.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/gpu_check.json}
PYTHONUNBUFFERED=1 timeout "${LIMIT:-480}" "${PYTHON:-python3}" benchmarks/gpu_check.py --out "$OUT" "${@:2}"
