#!/usr/bin/env bash
# The cost of auth + TLS: perf_analyzer against a plain server and a secured one (API key +
# TLS), in alternating rounds, HTTP and gRPC, concurrency 1 and 16. Not run in CI.
#   bench/security_bench.sh [--rounds N] [--window-ms MS]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
bench_env test
bench_build --bin infera
python bench/security_bench.py "$@"
