"""The app API (/predict, /predict/batch, /health, /stats) and TorchServe's /predictions and /ping."""
import base64
import http.client
import json
import uuid

import numpy as np
import pytest

import reference
from test_image_preprocess import png_gray

LABELS = (reference.FIXTURES / "fashion_mnist" / "labels.txt").read_text().splitlines()


def call(server, method, path, body=b"", headers=None):
    conn = http.client.HTTPConnection(server.http, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, json.loads(data) if data else None


def multipart(files):
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        parts.append((f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                      f"Content-Type: image/png\r\n\r\n").encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.fixture(scope="module")
def sample():
    x = reference.fashion_batch(3, seed=31)
    logits = reference.run("fashion_mnist", {"input": x})["logits"]
    return [png_gray(img[0]) for img in x], logits


def check_prediction(p, logits_row):
    want = int(np.argmax(logits_row))
    assert p["predicted_class"] == want and p["predicted_label"] == LABELS[want], p
    probs = p["probabilities"]
    assert list(probs) == LABELS
    assert abs(sum(probs.values()) - 1) < 1e-4
    e = np.exp(logits_row - logits_row.max())
    assert abs(p["confidence"] - float(e.max() / e.sum())) < 1e-4


def test_predict_raw_multipart_and_base64(server, sample):
    pngs, logits = sample
    st, p = call(server, "POST", "/predict", pngs[0], {"Content-Type": "image/png"})
    assert st == 200, p
    check_prediction(p, logits[0])
    assert p["model"] == "fashion_mnist_image"
    body, headers = multipart([("shirt.png", pngs[1])])
    st, p = call(server, "POST", "/predict?model=fashion_mnist_image", body, headers)
    assert st == 200, p
    check_prediction(p, logits[1])
    doc = json.dumps({"image": base64.b64encode(pngs[2]).decode()})
    st, p = call(server, "POST", "/predict", doc, {"Content-Type": "application/json"})
    assert st == 200, p
    check_prediction(p, logits[2])


def test_predict_batch_reports_each_file(server, sample):
    pngs, logits = sample
    body, headers = multipart([("a.png", pngs[0]), ("broken.png", b"not a png"), ("c.png", pngs[2])])
    st, out = call(server, "POST", "/predict/batch", body, headers)
    assert st == 200, out
    preds = out["predictions"]
    assert [p["filename"] for p in preds] == ["a.png", "broken.png", "c.png"]
    check_prediction(preds[0], logits[0])
    assert "supported format" in preds[1]["error"]
    check_prediction(preds[2], logits[2])


@pytest.mark.parametrize("path,body,headers,status,needle", [
    ("/predict", b"", {"Content-Type": "image/png"}, 400, "empty"),
    ("/predict", b"GIF89a-garbage", {"Content-Type": "image/gif"}, 400, "decode"),
    ("/predict", b"{\"image\": \"***\"}", {"Content-Type": "application/json"}, 400, "base64"),
    ("/predict", b"{}", {"Content-Type": "application/json"}, 400, "\"image\""),
    ("/predict?model=nope", b"x", {}, 404, "unknown model"),
    ("/predict?model=iris", b"x", {}, 400, "not encoded images"),
    ("/predict?model=fashion_preprocess", b"x", {}, 400, "not a vector of FP32 class scores"),
    ("/predict?model=simple", b"x", {}, 400, "one image (BYTES) input"),
])
def test_predict_errors(server, path, body, headers, status, needle):
    st, out = call(server, "POST", path, body, headers)
    assert st == status and needle in out["error"], out


def test_health_stats_and_torchserve(server, sample):
    pngs, logits = sample
    st, h = call(server, "GET", "/health")
    assert st == 200 and h["status"] == "ok"
    assert {m["name"] for m in h["models"]} >= {"fashion_mnist", "fashion_mnist_image"}
    assert call(server, "GET", "/ping") == (200, {"status": "Healthy"})
    st, top = call(server, "POST", "/predictions/fashion_mnist_image", pngs[0])
    assert st == 200 and len(top) == 5
    assert list(top)[0] == LABELS[int(np.argmax(logits[0]))]
    assert list(top.values()) == sorted(top.values(), reverse=True)
    st, top1 = call(server, "PUT", "/predictions/fashion_mnist_image/1", pngs[0])  # curl -T sends PUT
    assert st == 200 and top1 == top
    st, s = call(server, "GET", "/stats")
    assert st == 200 and s["requests"] >= 3 and s["errors"] >= 1
    assert s["latency_ms"]["p50"] > 0 and s["latency_ms"]["p95"] >= s["latency_ms"]["p50"]
    assert sum(s["predictions_per_class"].values()) >= 3


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "BMP", "GIF"])
def test_rgb_photos_of_other_sizes_are_categorized(server, fmt):
    """A 300x400 RGB photo (made with Pillow) goes through decode, gray, fit-to-28x28 and the CNN."""
    import io

    from PIL import Image, ImageDraw
    img = Image.new("RGB", (300, 400), (240, 240, 240))
    ImageDraw.Draw(img).rectangle((60, 40, 240, 360), fill=(30, 60, 150))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    st, p = call(server, "POST", "/predict", buf.getvalue(), {"Content-Type": f"image/{fmt.lower()}"})
    assert st == 200, p
    assert p["predicted_label"] in LABELS and 0 < p["confidence"] <= 1


def test_exif_orientation_is_applied(server):
    """A picture stored rotated with an EXIF orientation tag is turned upright before use."""
    import io

    import tritonclient.http as httpclient
    from PIL import Image
    x = np.zeros((28, 28), np.uint8)
    x[2:10, 3:25] = 255  # a bar near the top: upright vs rotated differ a lot
    upright = Image.fromarray(x, mode="L")
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(rotated, format="JPEG", quality=100, exif=exif)
    c = httpclient.InferenceServerClient(server.http)
    inp = httpclient.InferInput("IMAGE", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[rotated.getvalue()]], dtype=np.object_))
    pixels = c.infer("fashion_preprocess", [inp]).as_numpy("PIXELS")[0, 0]
    assert np.abs(pixels - x).mean() < 8, np.abs(pixels - x).mean()
    assert np.abs(pixels - np.rot90(x)).mean() > 40
