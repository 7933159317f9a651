#!/usr/bin/env bash
# Builds the `infera` wheel (maturin, from crates/infera-python), installs it into a fresh
# virtualenv with the test tools, and runs tests/python_package against it.
#   WHEEL_VENV   the virtualenv (default ~/.cache/infera/venv-wheel; recreated every run)
#   $@           passed to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python-env.sh test
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
wheel=$(scripts/build-wheel.sh "$wheels")
WHEEL_VENV=${WHEEL_VENV:-$HOME/.cache/infera/venv-wheel}
rm -rf "$WHEEL_VENV"
python3 -m venv "$WHEEL_VENV"
"$WHEEL_VENV/bin/python" -m pip install -q --disable-pip-version-check "$wheel" -r scripts/requirements-wheel-test.txt
cd tests/python_package
# Run from the test folder, so `import infera` is the installed wheel, not a source tree.
"$WHEEL_VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
