#!/usr/bin/env bash
# /predict latency on an idle server vs while a batch job runs, and the job's images/s
# (bench/jobs_bench.py).   BENCH_SECONDS=6 (hey duration per measurement)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v hey >/dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get install -y -qq hey >/dev/null
fi
source scripts/python-env.sh bench
cargo build --release --bin infera -p infera 2>&1 | tail -1
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac
export INFERA_BIN="$target/release/infera"
python bench/jobs_bench.py "$@"
