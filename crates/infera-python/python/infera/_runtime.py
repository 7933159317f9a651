"""Where ONNX Runtime's shared library is: inside the ``onnxruntime`` wheel this package depends on."""

from __future__ import annotations

import glob
import importlib.util
import os


def find_onnxruntime() -> str | None:
    """The path of ``libonnxruntime`` in the installed ``onnxruntime`` package, or None."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for pattern in ("libonnxruntime.so*", "libonnxruntime*.dylib", "onnxruntime.dll"):
            found = sorted(glob.glob(os.path.join(folder, "capi", pattern)))
            if found:
                return found[0]
    return None
