"""Native image preprocessing as a model (backend "image_preprocess"), over tritonclient BYTES inputs."""
import struct
import threading
import zlib

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def png_gray(pixels):
    """A minimal 8-bit grayscale PNG encoder, so the test needs no imaging library."""
    h, w = pixels.shape
    raw = b"".join(b"\0" + pixels[y].astype(np.uint8).tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def images_input(mod, blobs):
    arr = np.array([[b] for b in blobs], dtype=np.object_)
    inp = mod.InferInput("IMAGE", [len(blobs), 1], "BYTES")
    inp.set_data_from_numpy(arr)
    return inp


@pytest.mark.parametrize("mod,attr", [(httpclient, "http"), (grpcclient, "grpc")])
def test_png_bytes_become_the_exact_pixels(server, mod, attr):
    c = mod.InferenceServerClient(getattr(server, attr))
    rng = np.random.default_rng(0)
    pics = [rng.integers(0, 256, size=(28, 28)) for _ in range(3)]
    r = c.infer("fashion_preprocess", [images_input(mod, [png_gray(p) for p in pics])])
    got = r.as_numpy("PIXELS")
    assert got.shape == (3, 1, 28, 28) and got.dtype == np.float32
    np.testing.assert_array_equal(got[:, 0], np.stack(pics).astype(np.float32))


def test_larger_images_are_fitted_to_28x28(server):
    c = httpclient.InferenceServerClient(server.http)
    pic = np.full((40, 80), 255)
    got = c.infer("fashion_preprocess", [images_input(httpclient, [png_gray(pic)])]).as_numpy("PIXELS")
    assert got.shape == (1, 1, 28, 28)
    assert got[0, 0, 0, 0] == 0 and got[0, 0, 14, 14] == 255  # letterboxed: padding above, image in the middle


@pytest.mark.parametrize("blob,needle", [
    (b"", "empty image"),
    (b"definitely not an image", "supported format"),
    (png_gray(np.zeros((28, 28)))[:60], "decode"),
])
def test_bad_images_are_400_and_the_server_stays_up(server, blob, needle):
    c = httpclient.InferenceServerClient(server.http)
    with pytest.raises(InferenceServerException) as e:
        c.infer("fashion_preprocess", [images_input(httpclient, [blob])])
    assert e.value.status() == "400" and needle in e.value.message(), e.value.message()
    assert c.is_server_ready()


def test_a_bad_image_does_not_fail_requests_batched_with_it(server):
    import http.client
    import json
    good = png_gray(np.full((28, 28), 7))
    results = {}

    def send(k, blob):
        data = struct.pack("<I", len(blob)) + blob
        head = json.dumps({"inputs": [{"name": "IMAGE", "shape": [1, 1], "datatype": "BYTES",
                                       "parameters": {"binary_data_size": len(data)}}]}).encode()
        conn = http.client.HTTPConnection(server.http, timeout=30)
        conn.request("POST", "/v2/models/fashion_preprocess/infer", head + data,
                     {"Inference-Header-Content-Length": str(len(head))})
        r = conn.getresponse()
        results[k] = (r.status, r.read())
        conn.close()

    threads = [threading.Thread(target=send, args=(k, b"junk" if k % 4 == 0 else good)) for k in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, (status, body) in results.items():
        if k % 4 == 0:
            assert status == 400 and b"supported format" in body, body
        else:
            assert status == 200, body
            assert json.loads(body)["outputs"][0]["data"][0] == 7


@pytest.mark.parametrize("mod,attr", [(httpclient, "http"), (grpcclient, "grpc")])
def test_ensemble_image_to_class_scores(server, mod, attr):
    import reference
    c = mod.InferenceServerClient(getattr(server, attr))
    x = reference.fashion_batch(4, seed=21)
    blobs = [png_gray(img[0]) for img in x]
    r = c.infer("fashion_mnist_image", [images_input(mod, blobs)])
    want = reference.run("fashion_mnist", {"input": x})["logits"]
    np.testing.assert_allclose(r.as_numpy("CLASS_SCORES"), want, atol=1e-5)
    top = c.infer("fashion_mnist_image", [images_input(mod, blobs)],
                  outputs=[mod.InferRequestedOutput("CLASS_SCORES", class_count=2)]).as_numpy("CLASS_SCORES")
    labels = (reference.FIXTURES / "fashion_mnist" / "labels.txt").read_text().splitlines()
    for row, w in zip(top, want):
        score, idx, label = row[0].decode().split(":", 2)
        assert int(idx) == int(np.argmax(w)) and label == labels[int(idx)]
    # The native postprocessing step: softmax probabilities, top 3 with names, argmax label.
    e = np.exp(want - want.max(1, keepdims=True))
    probs = e / e.sum(1, keepdims=True)
    np.testing.assert_allclose(r.as_numpy("PROBABILITIES"), probs, atol=1e-6)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :3]
    np.testing.assert_allclose(r.as_numpy("TOP_SCORES"), np.take_along_axis(probs, order, 1), atol=1e-6)
    assert [[s.decode() for s in row] for row in r.as_numpy("TOP_LABELS")] == \
        [[labels[i] for i in row] for row in order]
    assert [row[0].decode() for row in r.as_numpy("LABEL")] == [labels[i] for i in want.argmax(1)]


def test_postprocess_model_alone(server):
    c = grpcclient.InferenceServerClient(server.grpc)
    logits = np.array([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]], dtype=np.float32)
    inp = grpcclient.InferInput("LOGITS", [1, 10], "FP32")
    inp.set_data_from_numpy(logits)
    r = c.infer("fashion_postprocess", [inp])
    assert list(r.as_numpy("TOP_CLASSES")[0]) == [9, 8, 7]
    assert r.as_numpy("LABEL")[0][0] == b"Ankle boot"
    assert abs(r.as_numpy("PROBABILITIES").sum() - 1) < 1e-6
    bad = grpcclient.InferInput("LOGITS", [1, 10], "INT32")
    bad.set_data_from_numpy(logits.astype(np.int32))
    with pytest.raises(InferenceServerException) as e:
        c.infer("fashion_postprocess", [bad])
    assert "INT32" in e.value.message()


def test_ensemble_metadata_config_and_step_statistics(server):
    c = httpclient.InferenceServerClient(server.http)
    meta = c.get_model_metadata("fashion_mnist_image")
    assert meta["platform"] == "ensemble"
    assert meta["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1, 1]}]
    cfg = c.get_model_config("fashion_mnist_image")
    assert [s["model_name"] for s in cfg["ensemble_scheduling"]["step"]] == ["fashion_preprocess", "fashion_mnist", "fashion_postprocess"]
    before = c.get_inference_statistics("fashion_preprocess")["model_stats"][0]["inference_count"]
    c.infer("fashion_mnist_image", [images_input(httpclient, [png_gray(np.zeros((28, 28)))])])
    assert c.get_inference_statistics("fashion_preprocess")["model_stats"][0]["inference_count"] == before + 1
    assert c.get_inference_statistics("fashion_mnist_image")["model_stats"][0]["inference_stats"]["success"]["count"] >= 1
    with pytest.raises(InferenceServerException) as e:
        c.infer("fashion_mnist_image", [images_input(httpclient, [b"junk"])])
    assert e.value.status() == "400" and "step 'fashion_preprocess'" in e.value.message()
