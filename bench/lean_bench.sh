#!/usr/bin/env bash
# Runs bench/lean_bench.py: infera's HTTP CPU per request against the leanest axum server.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
bench_env test
bench_hey
bench_build --bin infera -p infera --example lean_http -p infera-http
bench_baseline
export INFERA_LEAN_BIN="$target/release/examples/lean_http"
python bench/lean_bench.py "$@"
