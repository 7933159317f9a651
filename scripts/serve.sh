#!/usr/bin/env bash
# Builds infera and serves a model repository (default: the built-in example repository).
# Installs ONNX Runtime from PyPI into ~/.cache/infera/venv on first use. Extra arguments go to
# `infera serve`, e.g. scripts/serve.sh --model-repository my_models --http-port 9000
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-env.sh serve
# The `dist` profile: release with whole-program LTO, as the container image is built.
cargo build --profile dist --bin infera
target=${CARGO_TARGET_DIR:-target}
exec "$target/dist/infera" serve "$@"
