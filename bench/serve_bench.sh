#!/usr/bin/env bash
# Runs bench/serve_bench.py with the pinned perf_analyzer and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
bench_env test
bench_build --bin infera -p infera --example floor -p infera-backend-ort
bench_baseline
export INFERA_FLOOR_BIN="$target/release/examples/floor"
python bench/serve_bench.py "$@"
