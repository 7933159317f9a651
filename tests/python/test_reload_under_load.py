"""A bad deploy cannot take production down: while 8 clients send requests to the CNN and to
the image ensemble that uses it, broken configs are pushed to the CNN 10 times and good
ones 10 times. Not one request fails."""
import json
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

import reference
from hostile import http
from test_image_preprocess import png_gray


def cnn(instances, delay_us=0, **changes):
    cfg = {
        "name": "fashion_mnist", "platform": "onnxruntime_onnx", "max_batch_size": 64,
        "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, 28, 28]}],
        "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10], "label_filename": "labels.txt"}],
        "dynamic_batching": {"max_queue_delay_microseconds": delay_us},
        "instance_group": [{"count": instances, "kind": "KIND_CPU"}],
    }
    cfg.update(changes)
    return json.dumps(cfg)


BROKEN = [
    cnn(1, output=[{"name": "logits", "data_type": "TYPE_FP32", "dims": [10], "label_filename": "../../../etc/passwd"}]),
    cnn(1_000_000),
    cnn(1, dynamic_batching={"priority_levels": "4294967296", "default_priority_level": "1"}),
    cnn(1, output=[{"name": "scores", "data_type": "TYPE_FP32", "dims": [10]}]),
    cnn(1, input=[{"name": "input", "data_type": "TYPE_FP32", "dims": [3, 28, 28]}]),
    cnn(1, default_model_filename="missing.onnx"),
    cnn(1, platform="pytorch_libtorch"),
    cnn(1, max_batch_size=-1),
    "{not json",
    cnn(1, output=[{"name": "logits", "data_type": "TYPE_INT64", "dims": [10]}]),
]


def test_config_pushes_under_load_fail_no_request(make_server):
    s = make_server()
    x = reference.fashion_batch(4)
    want = reference.run("fashion_mnist", {"input": x})["logits"]
    image = png_gray(np.full((28, 28), 90, dtype=np.uint8))
    stop = threading.Event()
    failures, done = [], [0]
    lock = threading.Lock()

    def tensor_client(i):
        mod = httpclient if i % 2 else grpcclient
        c = mod.InferenceServerClient(s.http if mod is httpclient else s.grpc)
        inp = mod.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        while not stop.is_set():
            try:
                got = c.infer("fashion_mnist", [inp]).as_numpy("logits")
                np.testing.assert_allclose(got, want, atol=1e-4)
            except Exception as e:  # noqa: BLE001 - every failure counts
                failures.append(f"fashion_mnist: {e}")
            with lock:
                done[0] += 1

    def image_client(i):
        c = httpclient.InferenceServerClient(s.http)
        inp = httpclient.InferInput("IMAGE", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[image]], dtype=object))
        while not stop.is_set():
            try:
                if i % 2:
                    status, _, body = http(s, "POST", "/predict", image, {"Content-Type": "image/png"})
                    assert status == 200, body
                else:
                    r = c.infer("fashion_mnist_image", [inp])
                    assert r.as_numpy("LABEL")[0][0]
            except Exception as e:  # noqa: BLE001
                failures.append(f"ensemble: {e}")
            with lock:
                done[0] += 1

    threads = [threading.Thread(target=tensor_client, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=image_client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    admin = httpclient.InferenceServerClient(s.http)
    refused, loaded = [], 0
    try:
        time.sleep(0.5)
        for round_ in range(10):
            try:
                admin.load_model("fashion_mnist", config=BROKEN[round_])
                refused.append(f"broken config {round_} was accepted")
            except Exception as e:  # noqa: BLE001
                assert "fashion_mnist" in str(e) or "config" in str(e), e
            index = {m["name"]: m for m in admin.get_model_repository_index()}
            assert index["fashion_mnist"]["state"] == "READY", index["fashion_mnist"]
            time.sleep(0.1)
            admin.load_model("fashion_mnist", config=cnn(1 + round_ % 2, delay_us=100 * round_))
            loaded += 1
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not refused, refused
    assert loaded == 10
    assert not failures, f"{len(failures)} of {done[0]} requests failed: {failures[:5]}"
    assert done[0] > 200, done[0]
    assert admin.get_model_config("fashion_mnist")["dynamic_batching"]["max_queue_delay_microseconds"] == "900"
