#!/usr/bin/env bash
# /predict with a 28x28 PNG at concurrency 1..16: infera beside the FastAPI + onnxruntime
# reference (bench/fastapi_reference.py), in the same run, with the same load generator (hey).
#   BENCH_SECONDS=10 (per level)   BENCH_WORKERS=2 (uvicorn worker processes)
#   BENCH_BASELINE_REV=<git rev>   also runs an infera built from that revision (before/after)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
bench_hey
bench_env bench
bench_build --bin infera -p infera
bench_baseline
python bench/predict_bench.py "$@"
