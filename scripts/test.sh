#!/usr/bin/env bash
# The whole test suite: formatting, lints, Rust unit/property tests, then the Python
# acceptance tests (tritonclient, perf_analyzer) against the release binary, then the
# `infera` wheel's tests in a fresh virtualenv.
# Installs what it needs: Debian's libb64-0d (perf_analyzer) and a virtualenv with pinned packages.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages: libb64 for perf_analyzer, the Fashion-MNIST data set for the accuracy checks,
# chromium for the web page test, a font for the text in plots, Prometheus (and promtool) for the
# alert rules and the scrape test.
if ! ldconfig -p | grep -q libb64.so.0d || [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || ! command -v chromium >/dev/null \
   || [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || ! command -v promtool >/dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libb64-0d dataset-fashion-mnist chromium fonts-dejavu-core prometheus >/dev/null
fi
# MLflow (for the tracking test) lives in its own virtualenv: it pins much of what the test env pins.
MLFLOW_VENV=${MLFLOW_VENV:-$HOME/.cache/infera/venv-mlflow}
mlflow_stamp="$MLFLOW_VENV/.installed-$(sha256sum scripts/requirements-mlflow.txt | cut -c1-16)"
if [ ! -f "$mlflow_stamp" ]; then
  python3 -m venv "$MLFLOW_VENV"
  "$MLFLOW_VENV/bin/python" -m pip install -q --disable-pip-version-check -r scripts/requirements-mlflow.txt
  touch "$mlflow_stamp"
fi
export INFERA_MLFLOW="$MLFLOW_VENV/bin/mlflow"
source scripts/python-env.sh test
cuda_lib=$(python -c 'import nvidia.cuda_runtime as m; print(list(m.__path__)[0] + "/lib")')
export LD_LIBRARY_PATH="$cuda_lib:${LD_LIBRARY_PATH:-}"

echo "== cargo fmt / clippy"
cargo fmt --all -- --check
# The tests cover the opt-in tract runtime too (and one set of features builds everything once).
features=(--features infera/tract)
cargo clippy --release --workspace --all-targets "${features[@]}" -- -D warnings
echo "== cargo test"
cargo test --release --workspace "${features[@]}"
echo "== build"
cargo build --release --bin infera --bin infera-trainer "${features[@]}"
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac
export INFERA_BIN="$target/release/infera"
echo "== python acceptance tests"
python -m pytest tests/python -q -p no:cacheprovider "$@"
echo "== python package (wheel in a fresh virtualenv, Ray)"
scripts/python-package.sh
