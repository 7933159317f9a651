"""infera models in Ray Data: callable classes for ``Dataset.map_batches``.

    import ray, infera.ray
    ds = ray.data.read_binary_files("photos/", include_paths=True)
    preds = ds.map_batches(
        infera.ray.ImageClassifier,
        fn_constructor_kwargs={"model": "fashion_mnist_image"},
        concurrency=4,
        batch_size=64,
    )

Each actor loads the model once; its batches run on infera's scheduler in the actor's
process (Rust, no Python per image). The other columns (e.g. ``path``) are kept.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from ._model import Repository

Batch = Dict[str, np.ndarray]


def _columns(batch) -> Batch:
    # Ray gives dicts of NumPy arrays (batch_format="numpy", the default) or DataFrames.
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):
        return {c: batch[c].to_numpy() for c in batch.columns}
    return dict(batch)


class ImageClassifier:
    """Classifies the photos of a batch: a ``bytes`` column (``read_binary_files``) or a
    ``path`` column; adds ``predicted_class``, ``predicted_label``, ``confidence`` and
    ``prob_<label>`` columns (the ``/predict`` answer) and drops ``bytes``."""

    def __init__(self, model: str = "fashion_mnist_image", model_repository: Optional[str] = None):
        self.model = Repository(model_repository).model(model)

    def __call__(self, batch) -> Batch:
        cols = _columns(batch)
        if "bytes" in cols:
            images = [bytes(b) for b in cols.pop("bytes")]
        elif "path" in cols:
            images = [str(p) for p in cols["path"]]
        else:
            raise ValueError("the batch needs a 'bytes' column (read_binary_files) or a 'path' column")
        answers = self.model.predict_images(images)
        cols["predicted_class"] = np.array([a["predicted_class"] for a in answers], dtype=np.int64)
        cols["predicted_label"] = np.array([a["predicted_label"] for a in answers], dtype=object)
        cols["confidence"] = np.array([a["confidence"] for a in answers], dtype=np.float32)
        labels = list(answers[0]["probabilities"]) if answers else []
        for label in labels:
            cols[f"prob_{label}"] = np.array(
                [a["probabilities"][label] for a in answers], dtype=np.float32
            )
        return cols


class TensorModel:
    """Runs a model on tensor columns: ``inputs`` maps model input names to batch columns
    (default: the same names); every model output becomes a column of the same name."""

    def __init__(
        self,
        model: str,
        model_repository: Optional[str] = None,
        inputs: Optional[Dict[str, str]] = None,
    ):
        self.model = Repository(model_repository).model(model)
        self.inputs = inputs or {t.name: t.name for t in self.model.inputs}

    def __call__(self, batch) -> Batch:
        cols = _columns(batch)
        feed: Dict[str, Any] = {}
        for name, column in self.inputs.items():
            value = cols[column]
            if value.dtype == object:
                value = np.stack(list(value))
            feed[name] = value
        cols.update(self.model.infer(feed))
        return cols
