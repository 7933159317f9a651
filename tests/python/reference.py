"""Reference outputs from Python's onnxruntime, to compare infera's against."""
from functools import lru_cache

import numpy as np
import onnxruntime as ort

from conftest import FIXTURES


@lru_cache(maxsize=None)
def session(model):
    return ort.InferenceSession(str(FIXTURES / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def run(model, feeds):
    s = session(model)
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, feeds)))


def fashion_batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 1, 28, 28)).astype(np.float32)


def iris_batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, 4)) * [4, 2.5, 6, 2.5] + [4.3, 2, 1, 0.1]).astype(np.float32)
