#!/usr/bin/env bash
# Python `model.infer` vs `onnxruntime.InferenceSession.run` on the CNN, same process:
#   bash bench/python_bench.sh
# Builds the wheel, installs it into its own virtualenv, prints the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-env.sh test
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
wheel=$(scripts/build-wheel.sh "$wheels")
venv=$HOME/.cache/infera/venv-wheel-bench
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall "$wheel"
cd bench && "$venv/bin/python" python_bench.py
