"""The service infera replaces, for the /predict benchmark: FastAPI + Pillow + onnxruntime,
doing the same job as infera's /predict (decode the upload, grayscale, fit to 28x28, run the
CNN, softmax, answer {predicted_class, predicted_label, confidence, probabilities}).

    uvicorn --app-dir bench fastapi_reference:app --workers 2 --port 9000
    MODEL_DIR=examples/model_repository/fashion_mnist (default)

Written the way such services usually are: one onnxruntime session per worker process,
Pillow for decoding, numpy for the rest.
"""
import io
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException, Request
from PIL import Image, UnidentifiedImageError

MODEL_DIR = Path(os.environ.get("MODEL_DIR", Path(__file__).resolve().parents[1] / "examples/model_repository/fashion_mnist"))
LABELS = (MODEL_DIR / "labels.txt").read_text().splitlines()
options = ort.SessionOptions()
options.intra_op_num_threads = int(os.environ.get("ORT_THREADS", "1"))
session = ort.InferenceSession(str(MODEL_DIR / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"])
INPUT = session.get_inputs()[0].name

app = FastAPI()


def preprocess(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data)).convert("L")
    if img.size != (28, 28):
        img.thumbnail((28, 28), Image.BILINEAR)
        canvas = Image.new("L", (28, 28))
        canvas.paste(img, ((28 - img.width) // 2, (28 - img.height) // 2))
        img = canvas
    return np.asarray(img, dtype=np.float32)[None, None]


@app.post("/predict")
async def predict(request: Request):
    data = await request.body()
    try:
        x = preprocess(data)
    except (UnidentifiedImageError, OSError) as e:
        raise HTTPException(400, f"cannot read the image: {e}")
    logits = session.run(None, {INPUT: x})[0][0]
    e = np.exp(logits - logits.max())
    p = e / e.sum()
    best = int(p.argmax())
    return {
        "predicted_class": best,
        "predicted_label": LABELS[best],
        "confidence": float(p[best]),
        "probabilities": {label: float(v) for label, v in zip(LABELS, p)},
    }
