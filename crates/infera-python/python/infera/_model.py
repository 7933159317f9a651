"""Models in this process: NumPy arrays in and out of infera's scheduler and runtimes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence, Union

import numpy as np

from . import _infera
from ._infera import InvalidInputError

# KServe v2 / Triton data type names and their NumPy types.
_TO_NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
_FROM_NUMPY = {np.dtype(v).str: k for k, v in _TO_NUMPY.items()}

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class TensorInfo:
    """An input or output of a model: its name, KServe v2 data type and shape (-1: any size)."""

    name: str
    datatype: str
    shape: tuple

    @property
    def dtype(self):
        """The NumPy dtype (``object`` for BYTES)."""
        return np.dtype(_TO_NUMPY.get(self.datatype, object))


def _to_wire(name: str, value, expected: str | None):
    if expected == "BYTES" or (
        isinstance(value, np.ndarray) and value.dtype.kind in ("O", "S", "U")
    ) or isinstance(value, (list, tuple)) and value and isinstance(value[0], (bytes, str)):
        arr = np.asarray(value, dtype=object)
        items = [v.encode() if isinstance(v, str) else bytes(v) for v in arr.reshape(-1)]
        return (name, "BYTES", list(arr.shape), items)
    arr = np.asarray(value)
    if expected in _TO_NUMPY and arr.dtype != _TO_NUMPY[expected] and arr.dtype.kind in "biuf":
        raise InvalidInputError(
            f"input '{name}' is {arr.dtype}, but the model takes {expected} "
            f"({np.dtype(_TO_NUMPY[expected]).name}): convert it with .astype()"
        )
    key = arr.dtype.newbyteorder("<").str if arr.dtype.byteorder == ">" else arr.dtype.str
    datatype = _FROM_NUMPY.get(key)
    if datatype is None:
        raise InvalidInputError(f"input '{name}': NumPy type {arr.dtype} has no KServe v2 type")
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return (name, datatype, list(arr.shape), arr.tobytes())


def _from_wire(datatype: str, shape, data):
    if datatype == "BYTES":
        out = np.empty(len(data), dtype=object)
        out[:] = data
        return out.reshape(shape)
    return np.frombuffer(data, dtype=np.dtype(_TO_NUMPY[datatype]).newbyteorder("<")).reshape(shape)


class Model:
    """One model of a repository, loaded in this process (ensembles with their steps).

    ``infer`` takes and returns NumPy arrays; ``predict_images`` classifies encoded photos
    as the server's ``/predict`` does; ``predict_folder`` is ``infera predict``.
    """

    def __init__(self, repository: "Repository", name: str, version: int | None = None):
        self.repository = repository
        self.name = name
        self.version = version
        self._engine = _infera.open_model(
            name,
            None if repository.path is None else str(repository.path),
            repository.onnxruntime_lib,
        )
        meta = self._engine.metadata(name, version)
        self.versions = list(meta[1])
        self.platform = meta[2]
        self.inputs = [TensorInfo(n, d, tuple(s)) for n, d, s in meta[3]]
        self.outputs = [TensorInfo(n, d, tuple(s)) for n, d, s in meta[4]]

    def __repr__(self) -> str:
        ins = ", ".join(f"{t.name}: {t.datatype}{list(t.shape)}" for t in self.inputs)
        outs = ", ".join(f"{t.name}: {t.datatype}{list(t.shape)}" for t in self.outputs)
        return f"<infera.Model {self.name} ({self.platform}) inputs [{ins}] outputs [{outs}]>"

    def infer(
        self,
        inputs: Mapping[str, object],
        outputs: Sequence[str] | None = None,
    ) -> dict:
        """Runs the model on ``{input name: array}`` and returns ``{output name: array}``.

        Arrays keep the model's batch dimension (e.g. ``[N, 1, 28, 28]``). BYTES inputs are
        lists or object arrays of ``bytes``/``str``. ``outputs`` picks outputs (default: all).
        The GIL is released while the model runs.
        """
        if not isinstance(inputs, Mapping):
            raise InvalidInputError("inputs is a dict of {input name: numpy array}")
        expected = {t.name: t.datatype for t in self.inputs}
        wire = [_to_wire(str(k), v, expected.get(str(k))) for k, v in inputs.items()]
        result = self._engine.infer(
            self.name, wire, None if outputs is None else list(outputs), self.version
        )
        return {name: _from_wire(dt, shape, data) for name, dt, shape, data in result}

    def statistics(self) -> dict:
        """``inference_count`` (requests served) and ``execution_count`` (model runs; fewer
        than requests when the scheduler batched them), as Triton's statistics count them."""
        inferences, executions = self._engine.statistics(self.name)
        return {"inference_count": inferences, "execution_count": executions}

    def predict_images(self, images: Iterable[Union[bytes, PathLike]]) -> list:
        """Classifies photos (file paths or encoded bytes: PNG, JPEG, BMP, GIF, WebP).

        Returns one dict per image, as the server's ``/predict`` answers: ``predicted_class``,
        ``predicted_label``, ``confidence``, ``probabilities`` ({label: p}), ``model``,
        ``latency_ms``. The model must be an image classifier (e.g. ``fashion_mnist_image``).
        """
        data = []
        for img in images:
            if isinstance(img, (bytes, bytearray, memoryview)):
                data.append(bytes(img))
            else:
                with open(img, "rb") as f:
                    data.append(f.read())
        return self._engine.predict_images(self.name, data, self.version)

    def predict_folder(
        self,
        input: PathLike,
        output: PathLike,
        *,
        errors: PathLike | None = None,
        format: str = "csv",
        batch_size: int = 64,
        workers: int = 4,
        recursive: bool = False,
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        """Classifies every image under ``input`` into ``output`` (CSV or JSONL), crash-safe:
        exactly ``infera predict`` (``resume=True`` continues a run that was stopped)."""
        argv = ["infera", "predict", "--model", self.name, "--input", str(input)]
        argv += ["--output", str(output), "--format", format]
        argv += ["--batch-size", str(batch_size), "--workers", str(workers)]
        if self.repository.path is not None:
            argv += ["--model-repository", str(self.repository.path)]
        if errors is not None:
            argv += ["--errors", str(errors)]
        for flag, on in (("--recursive", recursive), ("--resume", resume), ("--overwrite", overwrite)):
            if on:
                argv.append(flag)
        _infera.run_command(argv)


class Repository:
    """A Triton-style model repository: ``<name>/config.pbtxt`` and ``<name>/<version>/model.onnx``.

    ``Repository()`` is the built-in example repository (Fashion-MNIST CNN and its image
    ensemble, the iris RandomForest, the INT32 ``simple`` model).
    """

    def __init__(self, path: PathLike | None = None, *, onnxruntime_lib: PathLike | None = None):
        self.path = None if path is None else Path(path)
        self.onnxruntime_lib = None if onnxruntime_lib is None else str(onnxruntime_lib)

    def __repr__(self) -> str:
        return f"<infera.Repository {self.path or '(built-in examples)'}>"

    def model(self, name: str, version: int | None = None) -> Model:
        """Loads ``name`` (with the models its ensemble uses); ``version`` None: the newest."""
        return Model(self, name, version)
