#!/usr/bin/env bash
# Soak test (not in CI): a million requests, then 1,000 load/unload cycles, with the server's
# RSS sampled throughout. Results go to docs/benchmarks.md by hand.
#   bench/soak.sh [--requests N] [--cycles N]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-env.sh test
cuda_lib=$(python -c 'import nvidia.cuda_runtime as m; print(list(m.__path__)[0] + "/lib")')
export LD_LIBRARY_PATH="$cuda_lib:${LD_LIBRARY_PATH:-}"
cargo build --release --bin infera 2>&1 | tail -1
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac
export INFERA_BIN="$target/release/infera"
python bench/soak.py "$@"
