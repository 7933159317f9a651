#!/usr/bin/env bash
# Images per second of `infera predict` over the 10,000 Fashion-MNIST test images as PNG files,
# beside the in-process ONNX Runtime batch-64 throughput of the same CNN (floor example, 2
# threads, same backend) measured in the same run. Three rounds, interleaved; prints Markdown.
# Two ratios: the whole command's wall time (process start, ONNX Runtime's start-up, model load,
# listing, decoding, inference, fsync'd output), and the rate infera predict prints (from the
# model being ready), which leaves out the start-up the floor also leaves out.
#   BENCH_BATCH=64 (--batch-size)  BENCH_WORKERS=4 (--workers)
#   BENCH_REPO=examples/model_repository (a copy with other instance counts, for comparisons)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-env.sh test
cargo build --release --bin infera -p infera --example floor -p infera-backend-ort 2>&1 | tail -1
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python - "$work/pngs" <<'PY'
import gzip, os, sys
import numpy as np
sys.path.insert(0, "tests/python")
from test_image_preprocess import png_gray
with gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz") as f:
    images = np.frombuffer(f.read()[16:], dtype=np.uint8).reshape(-1, 28, 28)
os.makedirs(sys.argv[1])
for i, img in enumerate(images):
    open(f"{sys.argv[1]}/{i:05d}.png", "wb").write(png_gray(img))
PY
echo "| round | infera predict images/s, whole command | the same, model loaded (as printed) | in-process batch-64 images/s | ratio, whole command | ratio, model loaded |"
echo "|---|---|---|---|---|---|"
for round in 1 2 3; do
  start=$(date +%s.%N)
  "$target/release/infera" predict --model-repository "${BENCH_REPO:-examples/model_repository}" --model fashion_mnist_image \
    --input "$work/pngs" --output "$work/p.csv" --batch-size "${BENCH_BATCH:-64}" --workers "${BENCH_WORKERS:-4}" \
    --overwrite 2>"$work/summary"
  end=$(date +%s.%N)
  # The summary line's own rate: from the model being ready to the output in place, so ONNX
  # Runtime's start-up and the session's creation are out of it, as they are out of the floor.
  loaded=$(sed -n 's/.*(\([0-9]*\) images\/s).*/\1/p' "$work/summary")
  floor=$("$target/release/examples/floor" examples/model_repository/fashion_mnist/1/model.onnx 4 2 | python -c 'import json,sys; print(json.load(sys.stdin)["throughput_batch64"])')
  python -c "r=10000/($end-$start); l=${loaded:-0}; print(f'| $round | {r:.0f} | {l} | {$floor:.0f} | {r/$floor:.2f} | {l/$floor:.2f} |')"
done
