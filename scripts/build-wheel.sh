#!/usr/bin/env bash
# Builds the `infera` wheel (maturin, from crates/infera-python) into a temporary folder and
# prints its path (build output goes to stderr).
#   usage: wheel=$(scripts/build-wheel.sh DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-env.sh test >&2
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/infera/target}
maturin build --release -m crates/infera-python/Cargo.toml -o "$1" --quiet >&2
ls "$1"/infera-*.whl
