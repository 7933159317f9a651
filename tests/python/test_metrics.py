"""The metrics people alert on, scraped from a server with every feature on (keys, jobs):
requests by endpoint, model and status at the API edge (HTTP and gRPC), predictions per class
and confidence, jobs; names a client makes up never become series; and docs/observability.md
lists exactly the metrics the server exports."""
import json
import re
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from conftest import ROOT, Server, copy_repo
from test_app_api import LABELS
from test_auth import bearer, keys_create, simple_inputs
from test_image_preprocess import png_gray


def request(s, method, path, key, body=None, headers=None):
    req = urllib.request.Request(f"http://{s.http}{path}", data=body, method=method,
                                 headers={**bearer(key), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def scrape(s, key):
    status, body = request(s, "GET", "/metrics", key)
    assert status == 200
    return body.decode()


def samples(text, name):
    """{frozenset(labels): value} of one metric's samples."""
    out = {}
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
            out[labels] = float(m.group(2))
    return out


def value(text, name, **labels):
    want = set(labels.items())
    return sum(v for k, v in samples(text, name).items() if want <= k)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("metrics")
    keys = base / "keys.toml"
    key = keys_create(keys, "ops", "operator", "--quota", "100000/day")
    photos = base / "photos"
    photos.mkdir()
    for i in range(4):
        (photos / f"{i}.png").write_bytes(png_gray(np.full((28, 28), 40 * i, dtype=np.uint8)))
    repo = copy_repo(base)
    cfg = repo / "simple" / "config.pbtxt"
    cfg.write_text(cfg.read_text() + "\nresponse_cache { enable: true }\n")
    # A route with a canary and a shadow, so the routing metrics have series.
    (repo / "routes.toml").write_text("""
[classifier]
variants = [{ name = "stable", model = "iris", weight = 0 }, { name = "next", model = "iris", weight = 0 }]
canary = { candidate = "next" }
shadow = { model = "iris", percent = 0 }
""")
    s = Server(repo, "--auth-keys", str(keys), "--data-dir", str(base / "data"),
               "--batch-input-root", str(base), "--cache-config", "local,size=65536")
    yield {"server": s, "key": key, "photos": photos}
    s.stop()


def test_requests_predictions_and_jobs_are_counted(world):
    s, key = world["server"], world["key"]
    png = (world["photos"] / "0.png").read_bytes()
    for _ in range(3):
        status, body = request(s, "POST", "/predict", key, png)
        assert status == 200, body
    label = json.loads(body)["predicted_label"]
    assert label in LABELS
    # A model nobody has: counted, but not under its made-up name.
    refused = request(s, "POST", "/v2/models/made-up-7f3a/infer", key, b"{}")[0]
    assert refused in (400, 404)
    assert request(s, "GET", "/v2/models/simple", "wrong-key")[0] == 401
    c = grpcclient.InferenceServerClient(s.grpc)
    c.infer("simple", simple_inputs(grpcclient), headers=bearer(key))
    status, body = request(s, "POST", "/api/inference/batch", key,
                           json.dumps({"model": "fashion_mnist_image", "inputs": [str(world["photos"])]}).encode(),
                           {"Content-Type": "application/json"})
    assert status == 202, body
    job = json.loads(body)["job_id"]
    deadline = time.time() + 60
    while json.loads(request(s, "GET", f"/api/inference/job/{job}", key)[1])["status"] != "succeeded":
        assert time.time() < deadline
        time.sleep(0.1)

    m = scrape(s, key)
    assert value(m, "infera_api_requests_total", protocol="http", endpoint="/predict",
                 model="fashion_mnist_image", code="200") == 3
    assert value(m, "infera_api_requests_total", protocol="http", code=str(refused),
                 endpoint="/v2/models/{model}/infer", model="") == 1
    assert "made-up-7f3a" not in m
    assert value(m, "infera_api_requests_total", protocol="http", code="401") == 1
    assert value(m, "infera_api_requests_total", protocol="grpc", endpoint="ModelInfer",
                 model="simple", code="OK") == 1
    assert value(m, "infera_api_request_duration_seconds_count", protocol="http", endpoint="/predict") == 3
    # Buckets that resolve a 300 ms objective.
    assert value(m, "infera_api_request_duration_seconds_bucket", endpoint="/predict", le="0.3") <= 3
    assert any(dict(k).get("le") == "0.3" for k in samples(m, "infera_api_request_duration_seconds_bucket"))
    # The three /predict calls and the job's four photos.
    assert value(m, "infera_predictions_total", model="fashion_mnist_image") == 7
    assert value(m, "infera_predictions_total", model="fashion_mnist_image", **{"class": label}) >= 3
    assert value(m, "infera_prediction_confidence_count", model="fashion_mnist_image") == 7
    assert value(m, "infera_job_images_total", outcome="succeeded") == 4
    assert value(m, "infera_jobs_ended_total", status="succeeded") == 1
    assert value(m, "infera_jobs", status="running") == 0
    assert samples(m, "infera_api_requests_in_flight")


def documented_metrics():
    text = (ROOT / "docs" / "observability.md").read_text()
    return set(re.findall(r"^\| `([a-z_]+)` \|", text, re.M))


def exported_metrics(text):
    return set(re.findall(r"^# TYPE (\w+) ", text, re.M))


def test_the_docs_list_exactly_the_exported_metrics(world):
    s, key = world["server"], world["key"]
    # A request the model refuses, so failures have a series too.
    bad = {"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]},
                      {"name": "INPUT1", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]}]}
    assert request(s, "POST", "/v2/models/simple/infer", key, json.dumps(bad).encode())[0] == 400
    # A cached model answering twice, so the cache counters have series.
    c = grpcclient.InferenceServerClient(s.grpc)
    for _ in range(2):
        c.infer("simple", simple_inputs(grpcclient), headers=bearer(key))
    exported = exported_metrics(scrape(s, key))
    documented = documented_metrics()
    assert exported == documented, (
        f"exported but not documented: {sorted(exported - documented)}; "
        f"documented but not exported: {sorted(documented - exported)}")


def test_made_up_paths_models_and_methods_do_not_grow_the_series(world):
    s, key = world["server"], world["key"]
    before = len(samples(scrape(s, key), "infera_api_requests_total"))
    import grpc
    channel = grpc.insecure_channel(s.grpc)
    for i in range(150):
        request(s, "GET", f"/v2/models/ghost{i}/versions/{i}/ready", key)
        request(s, "POST", f"/predictions/ghost{i}", key, b"x")
        request(s, "GET", f"/nothing/{i}", key)
        request(s, "POST", f"/predict?model=ghost{i}", key, b"x")
        call = channel.unary_unary(f"/inference.GRPCInferenceService/Ghost{i}")
        try:
            call(b"", metadata=list(bearer(key).items()), timeout=5)
        except grpc.RpcError:
            pass
    m = scrape(s, key)
    assert "ghost" not in m.lower()
    # A handful of new series (route templates by status), not hundreds.
    assert len(samples(m, "infera_api_requests_total")) - before < 15
