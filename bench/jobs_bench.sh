#!/usr/bin/env bash
# /predict latency on an idle server vs while a batch job runs, and the job's images/s
# (bench/jobs_bench.py).   BENCH_SECONDS=6 (hey duration per measurement)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
bench_hey
bench_env bench
bench_build --bin infera -p infera
python bench/jobs_bench.py "$@"
