"""The 10,000 Fashion-MNIST test images as PNG files, sent through /predict and through the
fashion_mnist_image ensemble, give the model's accuracy on tensors (issue #4's acceptance check)."""
import gzip
import http.client
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

import reference
from test_image_preprocess import png_gray

DATA = Path("/usr/share/datasets/fashion-mnist")


def idx(path):
    with gzip.open(path, "rb") as f:
        magic, n = struct.unpack(">II", f.read(8))
        dims = [struct.unpack(">I", f.read(4))[0] for _ in range((magic & 0xFF) - 1)]
        return np.frombuffer(f.read(), dtype=np.uint8).reshape([n] + dims)


@pytest.fixture(scope="module")
def test_set():
    if not (DATA / "t10k-images-idx3-ubyte.gz").exists():
        pytest.fail("Fashion-MNIST is missing: apt-get install dataset-fashion-mnist (scripts/test.sh does)")
    images = idx(DATA / "t10k-images-idx3-ubyte.gz")
    labels = idx(DATA / "t10k-labels-idx1-ubyte.gz")
    x = images.astype(np.float32)[:, None]
    logits = np.concatenate([reference.run("fashion_mnist", {"input": x[i:i + 500]})["logits"]
                             for i in range(0, len(x), 500)])
    return [png_gray(img) for img in images], labels, logits.argmax(1)


def test_predict_endpoint_matches_tensor_accuracy(server, test_set):
    pngs, labels, tensor_pred = test_set

    def worker(chunk):
        conn = http.client.HTTPConnection(server.http, timeout=60)
        out = []
        for i in chunk:
            conn.request("POST", "/predict", pngs[i], {"Content-Type": "image/png"})
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200, body
            out.append((i, int(body.split(b'"predicted_class":', 1)[1].split(b",", 1)[0])))
        conn.close()
        return out

    chunks = np.array_split(np.arange(len(pngs)), 8)
    pred = np.empty(len(pngs), dtype=np.int64)
    with ThreadPoolExecutor(8) as pool:
        for part in pool.map(worker, chunks):
            for i, p in part:
                pred[i] = p
    acc_tensor = (tensor_pred == labels).mean()
    acc_png = (pred == labels).mean()
    assert abs(acc_png - acc_tensor) <= 0.001, (acc_png, acc_tensor)
    assert (pred == tensor_pred).mean() >= 0.999


def test_ensemble_matches_tensor_accuracy(server, test_set):
    pngs, labels, tensor_pred = test_set
    c = grpcclient.InferenceServerClient(server.grpc)
    pred = []
    for i in range(0, len(pngs), 64):
        batch = np.array([[p] for p in pngs[i:i + 64]], dtype=np.object_)
        inp = grpcclient.InferInput("IMAGE", list(batch.shape), "BYTES")
        inp.set_data_from_numpy(batch)
        pred.extend(c.infer("fashion_mnist_image", [inp]).as_numpy("CLASS_SCORES").argmax(1))
    pred = np.array(pred)
    assert abs((pred == labels).mean() - (tensor_pred == labels).mean()) <= 0.001
    assert (pred == tensor_pred).mean() >= 0.999
