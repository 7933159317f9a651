#!/usr/bin/env bash
# /predict p50/p95 of response-cache hits against misses, same server, same run. Not in CI.
#   bench/cache_bench.sh [--requests N] [--rounds N]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
bench_env test
bench_build --bin infera
python bench/cache_bench.py "$@"
