"""TorchServe's management API with curl, as TorchServe users call it: register from the
model store and from an allowed URL (a local web server), describe, list, scale, set the
default version, unregister; a URL off the allow-list is refused; scaling down while
perf_analyzer sends requests fails nothing."""
import functools
import http.server
import io
import json
import subprocess
import tarfile
import threading
import time

import numpy as np
import pytest
import tritonclient.http as httpclient

import tiny_onnx
from conftest import free_port
from test_version_reload import Load, MODEL, make_repo, add_version, front_end_answers


def curl(method, url):
    p = subprocess.run(["curl", "-sS", "-X", method, "-w", "\n%{http_code}", url],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    body, code = p.stdout.rsplit("\n", 1)
    return int(code), json.loads(body) if body else None


def tar_gz(folder_name, onnx):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo(f"{folder_name}/1/model.onnx")
        info.size = len(onnx)
        t.addfile(info, io.BytesIO(onnx))
    return buf.getvalue()


@pytest.fixture
def web(tmp_path):
    """A web server on 127.0.0.1 serving model archives."""
    root = tmp_path / "web"
    root.mkdir()
    (root / "plus.tar.gz").write_bytes(tar_gz("plus", tiny_onnx.plus(5)))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_torchserve_management_with_curl(make_server, tmp_path, web):
    repo = make_repo(tmp_path)
    store = tmp_path / "store"
    (store / "doubler" / "1").mkdir(parents=True)
    (store / "doubler" / "1" / "model.onnx").write_bytes(tiny_onnx.scaled([2.0] * 4))
    port = free_port()
    s = make_server(repo, "--management-port", str(port), "--model-store", str(store),
                    "--allowed-urls", r"http://127\.0\.0\.1:\d+/plus\.tar\.gz")
    mgmt = f"http://127.0.0.1:{port}"

    # Register from the model store, synchronously: 200 and TorchServe's message.
    code, body = curl("POST", f"{mgmt}/models?url=doubler&initial_workers=2&synchronous=true")
    assert code == 200, body
    assert body == {"status": 'Model "doubler" Version: 1 registered with 2 initial workers'}
    client = httpclient.InferenceServerClient(s.http)
    assert client.is_model_ready("doubler")

    # Register from an allowed URL, in the background: 202, then ready.
    code, body = curl("POST", f"{mgmt}/models?url={web}/plus.tar.gz")
    assert (code, body) == (202, {"status": "Processing worker updates..."})
    for _ in range(100):
        if client.is_model_ready("plus"):
            break
        time.sleep(0.1)
    assert client.is_model_ready("plus")

    # Off the allow-list, or leaving the model store: refused, and nothing is fetched.
    for url in (f"{web}/plus.tar.gz?x=1", "http://169.254.169.254/latest/meta-data/", "../web"):
        code, body = curl("POST", f"{mgmt}/models?url={url}&model_name=x&synchronous=true")
        assert code == 403, (url, body)
        assert body["code"] == 403 and body["type"] and body["message"]
    code, body = curl("POST", f"{mgmt}/models?url=doubler&synchronous=true")
    assert code == 409 and body["type"] == "ConflictStatusException"
    code, body = curl("POST", f"{mgmt}/models")
    assert code == 400 and body == {"code": 400, "type": "BadRequestException",
                                    "message": "Parameter url is required."}

    # List and describe.
    code, body = curl("GET", f"{mgmt}/models?limit=2")
    assert code == 200
    assert [m["modelName"] for m in body["models"]] == ["doubler", "plus"]
    assert body["nextPageToken"] == "2"
    code, body = curl("GET", f"{mgmt}/models/doubler")
    assert code == 200 and isinstance(body, list) and len(body) == 1
    d = body[0]
    assert d["modelName"] == "doubler" and d["modelVersion"] == "1"
    assert d["minWorkers"] == 2 and len(d["workers"]) == 2
    assert {"id", "status", "memoryUsage", "gpu"} <= set(d["workers"][0])
    code, body = curl("GET", f"{mgmt}/models/nope")
    assert code == 404 and body["type"] == "ModelNotFoundException"

    # Scale, unregister.
    code, body = curl("PUT", f"{mgmt}/models/doubler?min_worker=3&synchronous=true")
    assert (code, body) == (200, {"status": "Workers scaled to 3 for model: doubler"})
    assert len(curl("GET", f"{mgmt}/models/doubler")[1][0]["workers"]) == 3
    code, body = curl("DELETE", f"{mgmt}/models/doubler")
    assert (code, body) == (200, {"status": 'Model "doubler" unregistered'})
    assert not client.is_model_ready("doubler")
    assert not (repo / "doubler").exists()

    # A second version of the tiny model; set-default pins version 1.
    add_version(repo, 2)  # the repository keeps the 2 newest versions loaded
    client.load_model(MODEL)
    code, body = curl("PUT", f"{mgmt}/models/{MODEL}/1/set-default")
    assert code == 200, body
    x = httpclient.InferInput("X", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    assert client.infer(MODEL, [x]).get_response()["model_version"] == "1"
    code, body = curl("GET", f"{mgmt}/models/{MODEL}/all")
    assert [v["modelVersion"] for v in body] == ["1", "2"]


def test_scaling_down_under_load_fails_nothing(make_server, tmp_path):
    repo = make_repo(tmp_path)
    port = free_port()
    s = make_server(repo, "--management-port", str(port))
    mgmt = f"http://127.0.0.1:{port}"
    code, body = curl("PUT", f"{mgmt}/models/{MODEL}?min_worker=4&synchronous=true")
    assert code == 200, body
    with Load(s) as load:
        for n in (3, 1, 4, 2, 1):
            code, body = curl("PUT", f"{mgmt}/models/{MODEL}?min_worker={n}&synchronous=true")
            assert (code, body) == (200, {"status": f"Workers scaled to {n} for model: {MODEL}"})
            time.sleep(1)
    assert load.runs and not load.problems, load.problems[:2]
    codes = front_end_answers(s)
    assert set(codes) <= {"200", "OK"}, codes
    assert len(curl("GET", f"{mgmt}/models/{MODEL}")[1][0]["workers"]) == 1
