#!/usr/bin/env bash
# Reload time (load + warm-up + swap) of the example models on a running server. Not in CI.
#   bench/reload_bench.sh [--reloads N]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
bench_env test
bench_build --bin infera
python bench/reload_bench.py "$@"
