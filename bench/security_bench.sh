#!/usr/bin/env bash
# The cost of auth + TLS: perf_analyzer against a plain server and a secured one (API key +
# TLS), in alternating rounds, HTTP and gRPC, concurrency 1 and 16. Not run in CI.
#   bench/security_bench.sh [--rounds N] [--window-ms MS]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-env.sh test
cuda_lib=$(python -c 'import nvidia.cuda_runtime as m; print(list(m.__path__)[0] + "/lib")')
export LD_LIBRARY_PATH="$cuda_lib:${LD_LIBRARY_PATH:-}"
cargo build --release --bin infera 2>&1 | tail -1
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac
export INFERA_BIN="$target/release/infera"
python bench/security_bench.py "$@"
