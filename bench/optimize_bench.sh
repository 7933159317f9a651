#!/usr/bin/env bash
# The shipped CNN, FP32 against its INT8 versions (static QDQ per tensor and per channel,
# dynamic, and ONNX Runtime's own Python quantizer on the same calibration images) and the
# 30% structured-pruned model, compared by `infera report` in one run (interleaved rounds) at
# 1 and 2 ONNX Runtime threads. Writes the tables to $OUT (default a temp dir).
#
#   bench/optimize_bench.sh
#   ROUNDS=5 ROUND_MS=2000 bench/optimize_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
ROUND_MS=${ROUND_MS:-1000}
OUT=${OUT:-$(mktemp -d)}
target=${CARGO_TARGET_DIR:-target}
cargo build --release -q --bin infera --bin infera-trainer
source scripts/python-env.sh serve
infera="$target/release/infera"
fp32=examples/model_repository/fashion_mnist/1/model.onnx
mkdir -p "$OUT"
"$infera" optimize quantize --model "$fp32" --output "$OUT/static.onnx" --json > "$OUT/static.json"
"$infera" optimize quantize --model "$fp32" --output "$OUT/per_channel.onnx" --per-channel --json > "$OUT/per_channel.json"
"$infera" optimize quantize --model "$fp32" --output "$OUT/dynamic.onnx" --mode dynamic --json > "$OUT/dynamic.json"
models=(--model "$fp32" --model "$OUT/static.onnx" --model "$OUT/per_channel.onnx" --model "$OUT/dynamic.onnx")

# ONNX Runtime's Python quantizer (same 512 calibration images, QDQ, per tensor) for reference.
QVENV=${QVENV:-$HOME/.cache/infera/venv-quant}
[ -x "$QVENV/bin/python" ] || { python3 -m venv "$QVENV" && "$QVENV/bin/pip" install -q onnxruntime==1.31.1 onnx==1.23.2 numpy==2.4.6; }
"$QVENV/bin/python" - "$fp32" "$OUT/ort_python.onnx" <<'PY'
import gzip, struct, sys
import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
with gzip.open("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz") as f:
    d = f.read()
x = np.frombuffer(d, np.uint8, offset=16).reshape(-1, 1, 28, 28)[:512].astype(np.float32)
class Reader(CalibrationDataReader):
    def __init__(self): self.it = iter({"input": x[i:i + 64]} for i in range(0, 512, 64))
    def get_next(self): return next(self.it, None)
quantize_static(sys.argv[1], sys.argv[2], Reader(), quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
PY
models+=(--model "$OUT/ort_python.onnx")

# The pruned model, when the checkpoint is there (takes one fine-tuning epoch, ~1 min).
if [ -f examples/checkpoints/fashion_mnist/model.safetensors ] && [ ! -f "$OUT/repo/fashion_mnist_pruned/1/model.onnx" ]; then
  "$target/release/infera-trainer" prune --checkpoint examples/checkpoints/fashion_mnist --amount 0.3 --structured \
      --finetune-epochs 1 --runs-dir "$OUT/runs" --run-id p30 --no-progress \
      --model-repository "$OUT/repo" --name fashion_mnist_pruned > "$OUT/prune.log"
fi
[ -f "$OUT/repo/fashion_mnist_pruned/1/model.onnx" ] && models+=(--model "$OUT/repo/fashion_mnist_pruned/1/model.onnx")

for threads in 1 2; do
  "$infera" report "${models[@]}" --threads "$threads" --rounds "$ROUNDS" --round-ms "$ROUND_MS" \
      --format markdown --output "$OUT/report-t$threads.json" | tee "$OUT/report-t$threads.md"
done
echo "results in $OUT"
