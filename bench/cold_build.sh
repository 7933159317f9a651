#!/usr/bin/env bash
# A newcomer's first command, timed: `scripts/serve.sh` on a fresh clone of this repository with
# an empty CARGO_HOME (every crate downloaded from crates.io) and an empty target dir, until the
# server says its models are ready. Prints the minutes and the binary's size.
#   BENCH_BASELINE_REV=<git rev>   also times that revision the same way, first (before/after)
# Uses ~2 GB under $TMPDIR; the ONNX Runtime virtualenv of scripts/python-env.sh is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d "${TMPDIR:-/tmp}/infera-cold.XXXXXX")
trap 'rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# time_cold REV LABEL: clone REV, serve it cold, print one result line.
time_cold() {
  local rev=$1 label=$2 dir="$work/$2"
  git clone -q "$root" "$dir/src"
  git -C "$dir/src" checkout -q "$rev"
  local http grpc metrics
  http=$(free_port) grpc=$(free_port) metrics=$(free_port)
  local start end
  start=$(date +%s.%N)
  (cd "$dir/src" && CARGO_HOME="$dir/cargo" CARGO_TARGET_DIR="$dir/target" \
     scripts/serve.sh --http-port "$http" --grpc-port "$grpc" --metrics-port "$metrics" \
     >"$dir/serve.log" 2>&1) &
  local pid=$!
  until curl -sf -o /dev/null "http://127.0.0.1:$http/v2/models/fashion_mnist_image/ready"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -20 "$dir/serve.log"; echo "$label: scripts/serve.sh exited" >&2; exit 1
    fi
    sleep 1
  done
  end=$(date +%s.%N)
  pkill -f "$dir/target/dist/infera serve" || pkill -f "$dir/target/release/infera serve" || true
  wait "$pid" 2>/dev/null || true
  local size
  size=$(stat -c %s "$dir"/target/*/infera | head -n1)
  printf '| %s (%s) | %.1f | %.1f |\n' "$label" "$(git -C "$dir/src" rev-parse --short HEAD)" \
    "$(echo "($end - $start) / 60" | bc -l)" "$(echo "$size / 1000000" | bc -l)" >>"$work/results"
  rm -rf "$dir/target" "$dir/cargo"
}

echo "| build | minutes until the models are ready | binary MB |" >"$work/results"
echo "|---|---|---|" >>"$work/results"
if [ -n "${BENCH_BASELINE_REV:-}" ]; then
  time_cold "$BENCH_BASELINE_REV" baseline
fi
time_cold HEAD this
cat "$work/results"
