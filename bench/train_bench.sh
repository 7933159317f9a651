#!/usr/bin/env bash
# Seconds per epoch of the baseline recipe (configs/fashion_mnist.toml, augmentation off),
# infera's trainer (burn flex) beside PyTorch (Debian's python3-torch) on the same machine, in
# alternating rounds so both see the same noise. Prints the ratio infera / PyTorch.
#
#   bench/train_bench.sh            # 2 rounds x 2 epochs each
#   ROUNDS=3 EPOCHS=1 bench/train_bench.sh
#   BASELINE_TRAINER=/path/to/older/infera-trainer bench/train_bench.sh   # a third column: another
#                                   # build (e.g. an older commit) in the same rounds
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
EPOCHS=${EPOCHS:-2}
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
target=${CARGO_TARGET_DIR:-target}
# The same build as scripts/test.sh, so the artifacts are shared.
cargo build --release -q --bin infera --bin infera-trainer
trainer="$target/release/infera-trainer"
out=$(mktemp -d)
/usr/bin/python3 -c 'import torch' 2>/dev/null || { echo "needs Debian's python3-torch (apt-get install python3-torch)"; exit 1; }
for round in $(seq "$ROUNDS"); do
  /usr/bin/python3 bench/train_torch.py "$DATA" "$EPOCHS" | tee -a "$out/torch.jsonl"
  "$trainer" train --no-progress --runs-dir "$out/runs" --run-id "bench-$round" \
      train.epochs="$EPOCHS" train.early_stopping_patience=0 data.test_limit=1000 \
      augment.hflip=0 augment.shift_pixels=0 augment.rotate_degrees=0 augment.brightness=0 \
      | grep '^epoch' | tee -a "$out/infera.log"
  if [ -n "${BASELINE_TRAINER:-}" ]; then
    "$BASELINE_TRAINER" train --no-progress --runs-dir "$out/runs" --run-id "baseline-$round" \
        train.epochs="$EPOCHS" train.early_stopping_patience=0 data.test_limit=1000 \
        augment.hflip=0 augment.shift_pixels=0 augment.rotate_degrees=0 augment.brightness=0 \
        | grep '^epoch' | tee -a "$out/baseline.log"
  fi
done
python3 - "$out" <<'PY'
import json, re, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
torch = [json.loads(l)["seconds"] for l in (out / "torch.jsonl").read_text().splitlines()]
infera = [float(m.group(1)) for m in re.finditer(r"\s([0-9.]+)s", (out / "infera.log").read_text())]
t, i = statistics.median(torch), statistics.median(infera)
print(f"pytorch  s/epoch: median {t:.1f} (all: {', '.join(f'{x:.1f}' for x in torch)})")
print(f"infera   s/epoch: median {i:.1f} (all: {', '.join(f'{x:.1f}' for x in infera)})")
print(f"ratio infera/pytorch: {i / t:.2f}x (target <= 1.5x)")
baseline = out / "baseline.log"
if baseline.exists():
    b = statistics.median(float(m.group(1)) for m in re.finditer(r"\s([0-9.]+)s", baseline.read_text()))
    print(f"baseline s/epoch: median {b:.1f}; baseline/pytorch {b / t:.2f}x; infera/baseline {i / b:.2f}x")
PY
rm -rf "$out"
