# Sourced by the scripts: a virtualenv outside the clone with the pinned Python packages.
#   INFERA_VENV   where it lives (default ~/.cache/infera/venv)
#   $1            "serve" (ONNX Runtime only) or "test" (plus tritonclient, perf_analyzer, pytest)
set -euo pipefail
INFERA_VENV=${INFERA_VENV:-$HOME/.cache/infera/venv}
if [ ! -x "$INFERA_VENV/bin/python" ]; then
  python3 -m venv "$INFERA_VENV"
fi
req=$(dirname "${BASH_SOURCE[0]}")/requirements-$1.txt
stamp="$INFERA_VENV/.installed-$1-$(sha256sum "$req" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  "$INFERA_VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
  touch "$stamp"
fi
ORT_DYLIB_PATH=$(ls "$INFERA_VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n1)
export ORT_DYLIB_PATH
export PATH="$INFERA_VENV/bin:$PATH"
