#!/usr/bin/env bash
# /predict with a 28x28 PNG at concurrency 1..16: infera beside the FastAPI + onnxruntime
# reference (bench/fastapi_reference.py), in the same run, with the same load generator (hey).
#   BENCH_SECONDS=10 (per level)   BENCH_WORKERS=2 (uvicorn worker processes)
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
python bench/predict_bench.py "$@"
