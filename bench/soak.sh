#!/usr/bin/env bash
# Soak test (not in CI): a million requests, then 1,000 load/unload cycles, with the server's
# RSS sampled throughout. Results go to docs/benchmarks.md by hand.
#   bench/soak.sh [--requests N] [--cycles N]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
bench_env test
bench_build --bin infera
python bench/soak.py "$@"
