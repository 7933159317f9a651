"""KServe v2 over HTTP with Triton's own client (tritonclient.http), sync and async."""
import asyncio
import gzip
import http.client
import json
import zlib

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException

import reference


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(server.http)
    yield c
    c.close()


def raw(server, method, path, body=b"", headers=None):
    conn = http.client.HTTPConnection(server.http, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), data


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "infera"
    assert {"binary_tensor_data", "statistics", "model_configuration", "model_repository"} <= set(meta["extensions"])
    assert "system_shared_memory" not in meta["extensions"]


def test_model_metadata_and_config(client):
    assert client.is_model_ready("fashion_mnist")
    assert client.is_model_ready("fashion_mnist", "1")
    assert not client.is_model_ready("fashion_mnist", "9")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("fashion_mnist")
    assert meta["name"] == "fashion_mnist"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get_model_metadata("fashion_mnist", "1") == meta
    cfg = client.get_model_config("fashion_mnist")
    assert cfg["name"] == "fashion_mnist"
    assert cfg["max_batch_size"] == 64
    assert cfg["input"][0]["dims"] == ["1", "28", "28"]
    assert cfg["output"][0]["label_filename"] == "labels.txt"
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [16, 32, 64]
    assert cfg["instance_group"][0]["count"] == 2


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
def test_cnn_matches_onnxruntime(client, binary_in, binary_out):
    x = reference.fashion_batch(5, seed=1)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    out = httpclient.InferRequestedOutput("logits", binary_data=binary_out)
    r = client.infer("fashion_mnist", [inp], outputs=[out], request_id="req-7")
    got = r.as_numpy("logits")
    want = reference.run("fashion_mnist", {"input": x})["logits"]
    assert got.shape == (5, 10)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    assert r.get_response()["id"] == "req-7"
    assert r.get_response()["model_version"] == "1"


def test_random_forest_matches_onnxruntime(client):
    x = reference.iris_batch(32)
    inp = httpclient.InferInput("float_input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = client.infer("iris", [inp])
    want = reference.run("iris", {"float_input": x})
    np.testing.assert_array_equal(r.as_numpy("label").reshape(-1), want["label"])
    np.testing.assert_allclose(r.as_numpy("probabilities"), want["probabilities"], atol=1e-5)


def test_int32_add_sub_json_and_binary(client):
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.int32)
    for binary in (True, False):
        i0 = httpclient.InferInput("INPUT0", [2, 16], "INT32")
        i0.set_data_from_numpy(a, binary_data=binary)
        i1 = httpclient.InferInput("INPUT1", [2, 16], "INT32")
        i1.set_data_from_numpy(b, binary_data=not binary)
        outs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary),
                httpclient.InferRequestedOutput("OUTPUT1", binary_data=not binary)]
        r = client.infer("simple", [i0, i1], outputs=outs, model_version="1")
        np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), a - b)


def test_classification_extension(client):
    x = reference.fashion_batch(3, seed=2)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = httpclient.InferRequestedOutput("logits", class_count=3)
    r = client.infer("fashion_mnist", [inp], outputs=[out])
    got = r.as_numpy("logits")
    assert got.shape == (3, 3)
    logits = reference.run("fashion_mnist", {"input": x})["logits"]
    labels = (reference.FIXTURES / "fashion_mnist" / "labels.txt").read_text().splitlines()
    for row, want in zip(got, logits):
        idx = [int(e.decode().split(":")[1]) for e in row]
        assert idx == list(np.argsort(-want)[:3])
        assert row[0].decode().split(":", 2)[2] == labels[idx[0]]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_request_and_response_compression(client, algorithm):
    x = reference.fashion_batch(4, seed=3)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = client.infer("fashion_mnist", [inp], request_compression_algorithm=algorithm,
                     response_compression_algorithm=algorithm)
    np.testing.assert_allclose(r.as_numpy("logits"), reference.run("fashion_mnist", {"input": x})["logits"], atol=1e-5)


def test_response_is_really_compressed(server):
    rows = reference.iris_batch(64)
    body = json.dumps({"inputs": [{"name": "float_input", "shape": list(rows.shape), "datatype": "FP32",
                                   "data": rows.flatten().tolist()}]})
    status, headers, data = raw(server, "POST", "/v2/models/iris/infer", gzip.compress(body.encode()),
                                {"Content-Encoding": "gzip", "Accept-Encoding": "deflate"})
    assert status == 200
    assert headers.get("content-encoding") == "deflate"
    out = json.loads(zlib.decompress(data))
    assert out["outputs"][0]["shape"][0] == 64
    # A small answer fits one TCP segment anyway: sent as it is.
    small = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16},
                                   {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [2] * 16}]})
    status, headers, data = raw(server, "POST", "/v2/models/simple/infer", small.encode(),
                                {"Accept-Encoding": "deflate"})
    assert status == 200 and "content-encoding" not in headers
    assert json.loads(data)["outputs"][0]["data"] == [3] * 16


def test_statistics(client):
    x = reference.iris_batch(3)
    inp = httpclient.InferInput("float_input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    before = client.get_inference_statistics("iris")["model_stats"][0]
    client.infer("iris", [inp])
    stats = client.get_inference_statistics("iris", "1")["model_stats"][0]
    assert stats["name"] == "iris" and stats["version"] == "1"
    assert stats["inference_count"] == before["inference_count"] + 3
    assert stats["execution_count"] == before["execution_count"] + 1
    inf = stats["inference_stats"]
    for field in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss"):
        assert set(inf[field]) == {"count", "ns"}
    assert inf["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert inf["compute_infer"]["ns"] > 0
    assert any(b["batch_size"] == 3 for b in stats["batch_stats"])
    assert stats["last_inference"] > 0
    everything = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in everything} >= {"iris", "simple", "fashion_mnist"}


def test_async_client(server):
    async def main():
        c = aiohttpclient.InferenceServerClient(server.http)
        try:
            assert await c.is_server_live()
            meta = await c.get_model_metadata("simple")
            assert meta["name"] == "simple"
            a = np.ones((1, 16), dtype=np.int32)
            reqs = []
            for k in range(8):
                i0 = aiohttpclient.InferInput("INPUT0", [1, 16], "INT32")
                i0.set_data_from_numpy(a * k)
                i1 = aiohttpclient.InferInput("INPUT1", [1, 16], "INT32")
                i1.set_data_from_numpy(a)
                reqs.append(c.infer("simple", [i0, i1]))
            results = await asyncio.gather(*reqs)
            for k, r in enumerate(results):
                np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a * k + 1)
            assert (await c.get_inference_statistics("simple"))["model_stats"][0]["inference_count"] >= 8
        finally:
            await c.close()

    asyncio.run(main())


def test_metrics_endpoint(server, client):
    a = np.ones((1, 16), dtype=np.int32)
    i0 = httpclient.InferInput("INPUT0", [1, 16], "INT32")
    i0.set_data_from_numpy(a)
    i1 = httpclient.InferInput("INPUT1", [1, 16], "INT32")
    i1.set_data_from_numpy(a)
    client.infer("simple", [i0, i1])
    import urllib.request
    text = urllib.request.urlopen(server.metrics).read().decode()
    for name in ("nv_inference_request_success", "nv_inference_count", "nv_inference_exec_count",
                 "nv_inference_pending_request_count", "infera_queue_duration_seconds_bucket",
                 "infera_compute_duration_seconds_bucket", "infera_batch_size_bucket",
                 "process_resident_memory_bytes", "process_cpu_seconds_total"):
        assert name in text, name
    assert 'nv_inference_request_success{model="simple",version="1"}' in text
