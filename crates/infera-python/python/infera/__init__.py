"""infera: run ONNX models from a Triton-style model repository, in this process or as a server.

    import infera
    model = infera.Repository().model("fashion_mnist")          # the built-in examples
    scores = model.infer({"input": images})["logits"]          # NumPy in, NumPy out

- ``Repository(path)`` / ``repo.model(name)``: a model with ``inputs`` / ``outputs``,
  ``infer`` (NumPy arrays), ``predict_images`` (the server's ``/predict`` answer) and
  ``predict_folder`` (the crash-safe ``infera predict``).
- ``serve(...)``: the HTTP/gRPC server (KServe v2, Triton's clients work) in the background.
- ``InferaError`` and its subclasses carry the server's messages.
- ``infera.ray``: a callable class for Ray Data's ``map_batches``.

The models run in Rust on infera's scheduler, with ONNX Runtime from the ``onnxruntime``
wheel; the GIL is released while they run, so requests from several Python threads are
batched together.
"""

from __future__ import annotations

import os as _os

from ._runtime import find_onnxruntime as _find_onnxruntime

# ONNX Runtime's official builds send telemetry to Microsoft from Linux and macOS unless this is
# set before the library initializes (it reads it once). An explicit value, e.g. "0", is kept.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

if "ORT_DYLIB_PATH" not in _os.environ:
    _lib = _find_onnxruntime()
    if _lib:
        _os.environ["ORT_DYLIB_PATH"] = _lib

from . import _infera  # noqa: E402
from ._infera import (  # noqa: E402
    InferaError,
    InvalidInputError,
    NotFoundError,
    UnavailableError,
)
from ._model import Model, Repository, TensorInfo  # noqa: E402
from ._serve import Server, serve  # noqa: E402

__version__ = _infera.__version__

__all__ = [
    "InferaError",
    "InvalidInputError",
    "Model",
    "NotFoundError",
    "Repository",
    "Server",
    "TensorInfo",
    "UnavailableError",
    "serve",
]
