"""KServe v2 over gRPC with tritonclient.grpc (sync, streaming and asyncio)."""
import asyncio
import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient

import reference


@pytest.fixture(scope="module")
def client(server):
    c = grpcclient.InferenceServerClient(server.grpc)
    yield c
    c.close()


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "infera" and "statistics" in meta["extensions"]
    assert client.is_model_ready("iris") and not client.is_model_ready("iris", "4")
    m = client.get_model_metadata("fashion_mnist", as_json=True)
    assert m["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": ["-1", "1", "28", "28"]}
    cfg = client.get_model_config("fashion_mnist", as_json=True)["config"]
    assert cfg["max_batch_size"] == 64 and cfg["input"][0]["name"] == "input"
    assert "dynamic_batching" in cfg


def test_cnn_matches_onnxruntime(client):
    x = reference.fashion_batch(7, seed=5)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = client.infer("fashion_mnist", [inp], outputs=[grpcclient.InferRequestedOutput("logits")], request_id="g1")
    np.testing.assert_allclose(r.as_numpy("logits"), reference.run("fashion_mnist", {"input": x})["logits"], atol=1e-5, rtol=1e-5)
    assert r.get_response().id == "g1"


def test_random_forest_and_add_sub(client):
    x = reference.iris_batch(16, seed=2)
    inp = grpcclient.InferInput("float_input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = client.infer("iris", [inp])
    want = reference.run("iris", {"float_input": x})
    np.testing.assert_array_equal(r.as_numpy("label").reshape(-1), want["label"])
    np.testing.assert_allclose(r.as_numpy("probabilities"), want["probabilities"], atol=1e-5)
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    i0 = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
    i0.set_data_from_numpy(a)
    i1 = grpcclient.InferInput("INPUT1", [1, 16], "INT32")
    i1.set_data_from_numpy(a * 2)
    r = client.infer("simple", [i0, i1])
    np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a * 3)
    np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), -a)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compression(client, algorithm):
    x = reference.fashion_batch(2, seed=8)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = client.infer("fashion_mnist", [inp], compression_algorithm=algorithm)
    np.testing.assert_allclose(r.as_numpy("logits"), reference.run("fashion_mnist", {"input": x})["logits"], atol=1e-5)


def test_classification(client):
    x = reference.iris_batch(2, seed=1)
    inp = grpcclient.InferInput("float_input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = client.infer("iris", [inp], outputs=[grpcclient.InferRequestedOutput("probabilities", class_count=1)])
    top = r.as_numpy("probabilities")
    assert top.shape == (2, 1)
    assert top[0][0].decode().split(":")[2] in {"setosa", "versicolor", "virginica"}


def test_statistics(client):
    s = client.get_inference_statistics("fashion_mnist", as_json=True)["model_stats"][0]
    assert s["name"] == "fashion_mnist" and int(s["inference_count"]) > 0
    assert "compute_infer" in s["inference_stats"]


def test_stream_infer(client):
    results = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        sent = {}
        for k in range(10):
            a = np.full((1, 16), k, dtype=np.int32)
            i0 = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
            i0.set_data_from_numpy(a)
            i1 = grpcclient.InferInput("INPUT1", [1, 16], "INT32")
            i1.set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
            client.async_stream_infer("simple", [i0, i1], request_id=str(k))
            sent[str(k)] = k
        bad = grpcclient.InferInput("WRONG", [1, 16], "INT32")
        bad.set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
        client.async_stream_infer("simple", [bad], request_id="bad")
        got, errors = {}, []
        for _ in range(11):
            result, error = results.get(timeout=10)
            if error is not None:
                errors.append(error)
            else:
                got[result.get_response().id] = result.as_numpy("OUTPUT0")
        assert len(errors) == 1 and "WRONG" in errors[0].message()
        for rid, k in sent.items():
            np.testing.assert_array_equal(got[rid], np.full((1, 16), k + 1))
    finally:
        client.stop_stream()


def test_asyncio_client(server):
    async def main():
        c = aiogrpcclient.InferenceServerClient(server.grpc)
        try:
            assert await c.is_server_ready()
            x = reference.fashion_batch(1, seed=9)
            jobs = []
            for _ in range(6):
                inp = aiogrpcclient.InferInput("input", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                jobs.append(c.infer("fashion_mnist", [inp]))
            want = reference.run("fashion_mnist", {"input": x})["logits"]
            for r in await asyncio.gather(*jobs):
                np.testing.assert_allclose(r.as_numpy("logits"), want, atol=1e-5)
        finally:
            await c.close()

    asyncio.run(main())
