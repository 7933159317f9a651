"""Repository behaviour: load/unload, auto-complete without config.pbtxt, broken configs, shutdown."""
import shutil
import signal
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

import reference
from conftest import FIXTURES


def simple_inputs(mod=httpclient, batch=1):
    a = np.ones((batch, 16), dtype=np.int32)
    i0 = mod.InferInput("INPUT0", [batch, 16], "INT32")
    i0.set_data_from_numpy(a)
    i1 = mod.InferInput("INPUT1", [batch, 16], "INT32")
    i1.set_data_from_numpy(a)
    return [i0, i1]


def test_load_unload_http_and_grpc(make_server):
    s = make_server()
    c = httpclient.InferenceServerClient(s.http)
    g = grpcclient.InferenceServerClient(s.grpc)
    index = {m["name"]: m for m in c.get_model_repository_index()}
    assert index["simple"]["state"] == "READY"
    c.unload_model("simple")
    assert not c.is_model_ready("simple")
    with pytest.raises(InferenceServerException) as e:
        c.infer("simple", simple_inputs())
    assert "unknown model" in e.value.message()
    index = {m["name"]: m for m in c.get_model_repository_index()}
    assert index["simple"]["state"] == "UNAVAILABLE"
    assert [m["name"] for m in c.get_model_repository_index() if m.get("state") == "READY"] == ["fashion_mnist", "fashion_mnist_image", "fashion_postprocess", "fashion_preprocess", "iris"]
    c.load_model("simple")
    assert c.is_model_ready("simple")
    c.infer("simple", simple_inputs())
    g.unload_model("iris")
    assert not g.is_model_ready("iris")
    g.load_model("iris")
    assert g.is_model_ready("iris")
    names = {m.name for m in g.get_model_repository_index().models}
    assert names == {"fashion_mnist", "fashion_mnist_image", "fashion_postprocess", "fashion_preprocess", "iris", "simple"}
    with pytest.raises(InferenceServerException) as e:
        c.load_model("does_not_exist")
    assert "does_not_exist" in e.value.message()
    # Reload with a config override (as Triton's load API allows): batching off.
    c.load_model("simple", config='{"name":"simple","max_batch_size":0,"input":[{"name":"INPUT0","data_type":"TYPE_INT32","dims":[1,16]},{"name":"INPUT1","data_type":"TYPE_INT32","dims":[1,16]}],"output":[{"name":"OUTPUT0","data_type":"TYPE_INT32","dims":[1,16]},{"name":"OUTPUT1","data_type":"TYPE_INT32","dims":[1,16]}]}')
    assert c.get_model_config("simple")["max_batch_size"] == 0
    assert c.get_model_metadata("simple")["inputs"][0]["shape"] == [1, 16]
    c.infer("simple", simple_inputs())


def test_repository_without_config_files(make_server, tmp_path):
    repo = tmp_path / "noconfig"
    for m in ("fashion_mnist", "iris", "simple"):
        shutil.copytree(FIXTURES / m / "1", repo / m / "1")
    s = make_server(repo)
    c = httpclient.InferenceServerClient(s.http)
    cfg = c.get_model_config("fashion_mnist")
    assert cfg["max_batch_size"] == 4 and "dynamic_batching" in cfg
    assert cfg["input"][0] == {**cfg["input"][0], "name": "input", "data_type": "TYPE_FP32", "dims": ["1", "28", "28"]}
    assert cfg["platform"] == "onnxruntime_onnx" and cfg["backend"] == "onnxruntime"
    meta = c.get_model_metadata("iris")
    assert meta["inputs"][0]["shape"] == [-1, 4]
    assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}
    x = reference.fashion_batch(4)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_allclose(c.infer("fashion_mnist", [inp]).as_numpy("logits"),
                               reference.run("fashion_mnist", {"input": x})["logits"], atol=1e-5)


@pytest.mark.parametrize("config,field", [
    ('name: "broken"\nmax_batch_size: "eight"\n', "line 2"),
    ('name: "broken"\nmax_batch_size: 8\ninput [ { name: "nope" data_type: TYPE_FP32 dims: [ 4 ] } ]\n', "input[0].name"),
    ('name: "broken"\nmax_batch_size: 8\ninput [ { name: "float_input" data_type: TYPE_INT32 dims: [ 4 ] } ]\n', "input[0].data_type"),
    ('name: "broken"\nplatform: "tensorrt_plan"\n', "platform"),
    ('name: "other_name"\n', "name"),
    ('name: "broken"\nmax_batch_size: 4\ndynamic_batching { preferred_batch_size: [ 16 ] }\n', "dynamic_batching.preferred_batch_size"),
])
def test_broken_config_is_listed_unavailable_and_others_serve(make_server, tmp_path, config, field):
    repo = tmp_path / "repo"
    shutil.copytree(FIXTURES / "simple", repo / "simple")
    shutil.copytree(FIXTURES / "iris" / "1", repo / "broken" / "1")
    (repo / "broken" / "config.pbtxt").write_text(config)
    s = make_server(repo)
    c = httpclient.InferenceServerClient(s.http)
    index = {m["name"]: m for m in c.get_model_repository_index()}
    assert index["broken"]["state"] == "UNAVAILABLE"
    assert "model 'broken'" in index["broken"]["reason"] and field in index["broken"]["reason"], index["broken"]
    assert index["simple"]["state"] == "READY"
    c.infer("simple", simple_inputs())
    with pytest.raises(InferenceServerException) as e:
        c.get_model_metadata("broken")
    assert field in e.value.message()


def test_sigterm_drains_in_flight_requests(make_server):
    s = make_server()
    c = httpclient.InferenceServerClient(s.http, concurrency=8)
    x = reference.fashion_batch(64, seed=4)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    pending = [c.async_infer("fashion_mnist", [inp]) for _ in range(16)]
    time.sleep(0.05)
    s.proc.send_signal(signal.SIGTERM)
    results = [p.get_result() for p in pending]
    assert all(r.as_numpy("logits").shape == (64, 10) for r in results)
    assert s.proc.wait(20) == 0
    assert "draining" in s.logs()


def test_full_queue_answers_429_and_unavailable(make_server):
    import http.client
    import json
    s = make_server(None, "--max-queue-size", "1")
    x = reference.fashion_batch(64, seed=4).tobytes()
    head = json.dumps({"inputs": [{"name": "input", "shape": [64, 1, 28, 28], "datatype": "FP32",
                                   "parameters": {"binary_data_size": len(x)}}]}).encode()
    n = 48
    barrier = threading.Barrier(n)
    results = [None] * n

    def send(k):
        conn = http.client.HTTPConnection(s.http, timeout=30)
        conn.connect()
        barrier.wait()
        conn.request("POST", "/v2/models/fashion_mnist/infer", head + x,
                     {"Inference-Header-Content-Length": str(len(head))})
        r = conn.getresponse()
        results[k] = (r.status, r.getheader("Retry-After"), r.read())
        conn.close()

    threads = [threading.Thread(target=send, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = [r[0] for r in results]
    assert statuses.count(200) >= 1 and statuses.count(429) >= 1, statuses
    assert set(statuses) <= {200, 429}, statuses
    for status, retry, body in results:
        if status == 429:
            assert retry == "1" and "retry later" in json.loads(body)["error"]
    c = grpcclient.InferenceServerClient(s.grpc)
    assert c.is_server_ready()


def test_tract_backend_on_request_and_as_fallback(make_server, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(FIXTURES / "fashion_mnist", repo / "fashion_tract")
    cfg = (repo / "fashion_tract" / "config.pbtxt").read_text()
    cfg = cfg.replace('name: "fashion_mnist"', 'name: "fashion_tract"').replace('platform: "onnxruntime_onnx"', 'backend: "tract"')
    (repo / "fashion_tract" / "config.pbtxt").write_text(cfg)
    shutil.copytree(FIXTURES / "simple", repo / "simple")
    x = reference.fashion_batch(3, seed=11)
    want = reference.run("fashion_mnist", {"input": x})["logits"]

    def check(server, model):
        c = httpclient.InferenceServerClient(server.http)
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_allclose(c.infer(model, [inp]).as_numpy("logits"), want, atol=1e-3, rtol=1e-4)
        assert c.get_model_config(model)["max_batch_size"] == 64
        r = c.infer("simple", simple_inputs(batch=3))
        np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), np.full((3, 16), 2))

    s = make_server(repo)
    check(s, "fashion_tract")
    assert "model=fashion_tract backend=\"tract\"" in s.logs(), s.logs()
    s.stop()
    # No ONNX Runtime at all: every model falls back to tract, with a clear log line.
    s = make_server(repo, "--onnxruntime-lib", str(tmp_path / "missing" / "libonnxruntime.so"))
    check(s, "fashion_tract")
    assert "ONNX Runtime could not be loaded" in s.logs()
    assert "serving with tract" in s.logs()


def test_requests_of_clients_that_left_are_dropped_from_the_queue(make_server, tmp_path):
    import json
    import socket
    # The slower tract runtime and one instance keep the queue long while the clients leave.
    repo = tmp_path / "slow"
    shutil.copytree(FIXTURES / "fashion_mnist", repo / "fashion_mnist")
    cfg = (repo / "fashion_mnist" / "config.pbtxt").read_text()
    cfg = cfg.replace('platform: "onnxruntime_onnx"', 'backend: "tract"').replace("count: 2", "count: 1")
    (repo / "fashion_mnist" / "config.pbtxt").write_text(cfg)
    s = make_server(repo)
    x = np.zeros((64, 1, 28, 28), np.float32).tobytes()
    head = json.dumps({"inputs": [{"name": "input", "shape": [64, 1, 28, 28], "datatype": "FP32",
                                   "parameters": {"binary_data_size": len(x)}}]}).encode()
    req = (b"POST /v2/models/fashion_mnist/infer HTTP/1.1\r\nHost: infera\r\n"
           b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(head), len(head) + len(x))) + head + x
    socks = []
    for _ in range(200):
        c = socket.create_connection(("127.0.0.1", s.http_port))
        c.sendall(req)
        socks.append(c)
    for c in socks:
        c.close()
    time.sleep(2)
    stats = httpclient.InferenceServerClient(s.http).get_inference_statistics("fashion_mnist")["model_stats"][0]
    # 200 requests of 64 images were queued; most were never run because their clients left.
    assert stats["inference_count"] < 200 * 64 // 2, stats["inference_count"]
    assert httpclient.InferenceServerClient(s.http).is_server_ready()
