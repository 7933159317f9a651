#!/usr/bin/env bash
# Runs bench/serve_bench.py with the pinned perf_analyzer and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-env.sh test
cuda_lib=$(python -c 'import nvidia.cuda_runtime as m; print(list(m.__path__)[0] + "/lib")')
export LD_LIBRARY_PATH="$cuda_lib:${LD_LIBRARY_PATH:-}"
cargo build --release --bin infera -p infera --example floor -p infera-backend-ort 2>&1 | tail -1
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac
export INFERA_BIN="$target/release/infera" INFERA_FLOOR_BIN="$target/release/examples/floor"
python bench/serve_bench.py "$@"
