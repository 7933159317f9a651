"""API keys with the real clients: tritonclient HTTP and gRPC, curl-style requests, jobs.
Roles over endpoint groups, keys limited to models, rate limits and quotas (across a
restart), key file reloads, the audit log, and the refusal to serve openly off loopback."""
import json
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import BINARY, Server, copy_repo
from hostile import http
from test_app_api import multipart
from test_image_preprocess import png_gray

IMAGE = png_gray(np.full((28, 28), 128, dtype=np.uint8))


def keys_create(file, key_id, role, *extra):
    p = subprocess.run([str(BINARY), "keys", "create", "--file", str(file), "--id", key_id, "--role", role, *extra],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    key = p.stdout.strip()
    assert key.startswith("inf_") and key not in file.read_text()
    return key


def bearer(key):
    return {"authorization": f"Bearer {key}"}  # gRPC metadata keys are lower-case


def simple_inputs(mod):
    a = np.ones((1, 16), dtype=np.int32)
    out = []
    for n in ("INPUT0", "INPUT1"):
        i = mod.InferInput(n, [1, 16], "INT32")
        i.set_data_from_numpy(a)
        out.append(i)
    return out


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    base = tmp_path_factory.mktemp("auth")
    keys = base / "keys.toml"
    k = {
        "reader": keys_create(keys, "reader", "reader"),
        "shop": keys_create(keys, "shop", "infer", "--models", "fashion_mnist_image,fashion_mnist"),
        "infer": keys_create(keys, "infer", "infer"),
        "ops": keys_create(keys, "ops", "operator"),
        "admin": keys_create(keys, "admin", "admin"),
        "slow": keys_create(keys, "slow", "infer", "--rate", "20/s", "--burst", "20"),
        "batch": keys_create(keys, "batch", "infer", "--rate", "10/m", "--burst", "10"),
    }
    audit = base / "audit.jsonl"
    s = Server(copy_repo(base), "--auth-keys", str(keys), "--audit-log", str(audit),
               "--data-dir", str(base / "data"), "--batch-input-root", str(base))
    (base / "photo.png").write_bytes(IMAGE)
    yield {"server": s, "keys": k, "file": keys, "audit": audit, "base": base}
    s.stop()


def test_tritonclient_http_and_grpc_with_keys(secured):
    s, k = secured["server"], secured["keys"]
    c = httpclient.InferenceServerClient(s.http)
    g = grpcclient.InferenceServerClient(s.grpc)
    # Probes stay open.
    assert c.is_server_ready() and g.is_server_live()
    r = c.infer("simple", simple_inputs(httpclient), headers=bearer(k["infer"]))
    assert r.as_numpy("OUTPUT0").tolist() == [[2] * 16]
    r = g.infer("simple", simple_inputs(grpcclient), headers=bearer(k["infer"]))
    assert r.as_numpy("OUTPUT0").tolist() == [[2] * 16]
    with pytest.raises(InferenceServerException) as e:
        c.infer("simple", simple_inputs(httpclient))
    assert e.value.status() == "401" and "API key" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        g.infer("simple", simple_inputs(grpcclient))
    assert e.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as e:
        c.infer("simple", simple_inputs(httpclient), headers=bearer(k["reader"]))
    assert e.value.status() == "403"
    with pytest.raises(InferenceServerException) as e:
        g.infer("simple", simple_inputs(grpcclient), headers=bearer(k["shop"]))
    assert e.value.status() == "StatusCode.PERMISSION_DENIED" and "simple" in e.value.message()
    # Reader: metadata yes, inference no; operator: repository calls.
    assert c.get_model_metadata("simple", headers=bearer(k["reader"]))["name"] == "simple"
    with pytest.raises(InferenceServerException):
        c.unload_model("iris", headers=bearer(k["infer"]))
    c.load_model("iris", headers=bearer(k["ops"]))
    g.load_model("iris", headers=bearer(k["ops"]))


def test_the_app_api_and_torchserve_routes_take_keys(secured):
    s, k = secured["server"], secured["keys"]
    status, hdrs, body = http(s, "POST", "/predict", IMAGE, {"Content-Type": "image/png"})
    assert status == 401 and hdrs["www-authenticate"].startswith("Bearer"), body
    status, _, body = http(s, "POST", "/predict", IMAGE, {"Content-Type": "image/png", **bearer(k["shop"])})
    assert status == 200, body
    status, _, body = http(s, "POST", "/predict?model=iris", IMAGE, {"Content-Type": "image/png", **bearer(k["shop"])})
    assert status == 403, body
    status, _, body = http(s, "POST", "/predictions/fashion_mnist_image", IMAGE, {"X-API-Key": k["shop"]})
    assert status == 200, body
    assert http(s, "GET", "/ping")[0] == 200 and http(s, "GET", "/health")[0] == 200
    status, _, body = http(s, "GET", "/v2/admin/usage", headers=bearer(k["admin"]))
    usage = json.loads(body)
    assert status == 200 and {r["id"] for r in usage["keys"]} >= {"shop", "ops"}
    assert all(key not in body.decode() for key in k.values())
    assert http(s, "GET", "/v2/admin/usage", headers=bearer(k["ops"]))[0] == 403


def test_rate_limits_answer_429_with_retry_after_then_serve_again(secured):
    s, k = secured["server"], secured["keys"]
    doc = json.dumps({"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}
                                 for n in ("INPUT0", "INPUT1")]}).encode()
    statuses, retry = [], None
    for _ in range(40):
        status, hdrs, _ = http(s, "POST", "/v2/models/simple/infer", doc, bearer(k["slow"]))
        statuses.append(status)
        if status == 429:
            retry = hdrs
    assert statuses.count(200) >= 20 and 429 in statuses, statuses
    assert int(retry["retry-after"]) >= 1 and retry["ratelimit-remaining"] == "0" and retry["ratelimit-limit"] == "20"
    time.sleep(1.1)
    assert http(s, "POST", "/v2/models/simple/infer", doc, bearer(k["slow"]))[0] == 200


def test_jobs_belong_to_their_key(secured):
    s, k, base = secured["server"], secured["keys"], secured["base"]
    body = json.dumps({"model": "fashion_mnist_image", "inputs": [str(base / "photo.png")]}).encode()
    status, _, created = http(s, "POST", "/api/inference/batch", body,
                              {"Content-Type": "application/json", **bearer(k["shop"])})
    assert status == 202, created
    job = json.loads(created)["job_id"]
    assert http(s, "GET", f"/api/inference/job/{job}", headers=bearer(k["shop"]))[0] == 200
    assert http(s, "GET", f"/api/inference/job/{job}", headers=bearer(k["infer"]))[0] == 404
    assert http(s, "DELETE", f"/api/inference/job/{job}", headers=bearer(k["infer"]))[0] == 404
    assert http(s, "GET", f"/api/inference/job/{job}", headers=bearer(k["ops"]))[0] == 200
    _, _, mine = http(s, "GET", "/api/inference/jobs", headers=bearer(k["infer"]))
    assert json.loads(mine)["jobs"] == []
    _, _, all_jobs = http(s, "GET", "/api/inference/jobs", headers=bearer(k["ops"]))
    assert job in {j["job_id"] for j in json.loads(all_jobs)["jobs"]}
    body = json.dumps({"model": "iris", "inputs": [str(base / "photo.png")]}).encode()
    assert http(s, "POST", "/api/inference/batch", body, {"Content-Type": "application/json", **bearer(k["shop"])})[0] == 403


def test_key_file_changes_take_effect_while_serving(secured):
    s, file = secured["server"], secured["file"]
    new = keys_create(file, "late", "reader")
    deadline = time.time() + 10
    while http(s, "GET", "/v2/models/simple", headers=bearer(new))[0] != 200:
        assert time.time() < deadline, "a new key was not picked up"
        time.sleep(0.2)
    p = subprocess.run([str(BINARY), "keys", "revoke", "--file", str(file), "--id", "late"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    deadline = time.time() + 10
    while http(s, "GET", "/v2/models/simple", headers=bearer(new))[0] != 401:
        assert time.time() < deadline, "a revoked key still works"
        time.sleep(0.2)
    listing = subprocess.run([str(BINARY), "keys", "list", "--file", str(file)], capture_output=True, text=True).stdout
    assert "shop" in listing and "late" not in listing and "inf_" not in listing
    # Key changes are in the audit log, by id only.
    actions = [json.loads(l) for l in secured["audit"].read_text().splitlines()]
    reloads = [a["outcome"] for a in actions if a["action"] == "keys reloaded"]
    assert "added late" in reloads and "revoked late" in reloads, reloads


def test_management_and_refusals_are_audited_without_secrets(secured):
    s, k, audit = secured["server"], secured["keys"], secured["audit"]
    http(s, "POST", "/v2/repository/models/iris/load", b"{}", bearer(k["ops"]))
    http(s, "POST", "/v2/repository/models/iris/load", b"{}", bearer("inf_forged"))
    time.sleep(0.5)
    lines = [json.loads(l) for l in audit.read_text().splitlines()]
    assert any(l["who"] == "ops" and l["action"].endswith("/iris/load") and l["outcome"] == "200" for l in lines), lines[-5:]
    assert any(l["who"] == "-" and l["outcome"].startswith("401") for l in lines)
    text = audit.read_text()
    assert "inf_forged" not in text and all(key not in text for key in k.values())


def test_a_daily_quota_survives_a_restart(tmp_path):
    keys = tmp_path / "keys.toml"
    key = keys_create(keys, "metered", "infer", "--quota", "3/day")
    args = ("--auth-keys", str(keys), "--data-dir", str(tmp_path / "data"))
    s = Server(copy_repo(tmp_path), *args)
    c = httpclient.InferenceServerClient(s.http)
    for _ in range(3):
        c.infer("simple", simple_inputs(httpclient), headers=bearer(key))
    with pytest.raises(InferenceServerException) as e:
        c.infer("simple", simple_inputs(httpclient), headers=bearer(key))
    assert e.value.status() == "429" and "quota" in e.value.message()
    s.stop()
    s = Server(s.repo, *args)
    try:
        with pytest.raises(InferenceServerException) as e:
            httpclient.InferenceServerClient(s.http).infer("simple", simple_inputs(httpclient), headers=bearer(key))
        assert e.value.status() == "429"
    finally:
        s.stop()


def test_serving_openly_off_loopback_needs_to_be_asked_for(tmp_path):
    repo = copy_repo(tmp_path)
    p = subprocess.run([str(BINARY), "serve", "--model-repository", str(repo), "--host", "0.0.0.0",
                        "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    assert "--auth-keys" in p.stderr and "--insecure-no-auth" in p.stderr, p.stderr
    s = Server(repo, "--host", "0.0.0.0", "--insecure-no-auth")
    try:
        assert "WITHOUT authentication" in s.logs()
    finally:
        s.stop()


def test_batch_requests_and_jobs_count_images(secured):
    s, k, base = secured["server"], secured["keys"], secured["base"]
    body, headers = multipart([(f"{i}.png", IMAGE) for i in range(6)])
    status, _, out = http(s, "POST", "/predict/batch", body, {**headers, **bearer(k["batch"])})
    assert status == 200 and len(json.loads(out)["predictions"]) == 6, out
    # 4 of 10 left: six more images are refused whole, one still passes.
    status, hdrs, out = http(s, "POST", "/predict/batch", body, {**headers, **bearer(k["batch"])})
    assert status == 429 and int(hdrs["retry-after"]) >= 1, out
    status, _, out = http(s, "POST", "/predict", IMAGE, {"Content-Type": "image/png", **bearer(k["batch"])})
    assert status == 200, out
    # A job over a folder counts its images: three need more than the two left; one fits.
    three = base / "three"
    three.mkdir(exist_ok=True)
    for n in "abc":
        (three / f"{n}.png").write_bytes(IMAGE)
    for inputs, want in (([str(three)], 429), ([str(base / "photo.png")], 202)):
        job = json.dumps({"model": "fashion_mnist_image", "inputs": inputs}).encode()
        status, _, out = http(s, "POST", "/api/inference/batch", job,
                              {"Content-Type": "application/json", **bearer(k["batch"])})
        assert status == want, (inputs, out)
    # Per-key usage is in the metrics (which need a key too).
    req = urllib.request.Request(s.metrics, headers=bearer(k["reader"]))
    text = urllib.request.urlopen(req, timeout=10).read().decode()
    assert 'infera_auth_requests_total{key="batch",outcome="allowed"}' in text, text[-2000:]
    assert 'infera_auth_requests_total{key="batch",outcome="refused"} 2' in text
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(s.metrics, timeout=10)
    assert e.value.code == 401


def test_triton_restricted_api_flags(tmp_path):
    s = Server(copy_repo(tmp_path), "--http-restricted-api", "model-repository,statistics:admin-key=s3cret",
               "--grpc-restricted-protocol", "model-repository:admin-key=s3cret")
    try:
        c = httpclient.InferenceServerClient(s.http)
        g = grpcclient.InferenceServerClient(s.grpc)
        with pytest.raises(InferenceServerException) as e:
            c.get_model_repository_index()
        assert e.value.status() == "403" and "expecting header 'admin-key'" in e.value.message()
        with pytest.raises(InferenceServerException) as e:
            g.get_model_repository_index()
        assert e.value.status() == "StatusCode.PERMISSION_DENIED" and "admin-key" in e.value.message()
        with pytest.raises(InferenceServerException):
            c.get_inference_statistics("simple")
        ok = {"admin-key": "s3cret"}
        assert any(m["name"] == "simple" for m in c.get_model_repository_index(headers=ok))
        assert g.get_model_repository_index(headers=ok).models
        assert c.get_inference_statistics("simple", headers=ok)["model_stats"]
        # gRPC statistics are not restricted; inference is open on both.
        assert g.get_inference_statistics("simple").model_stats
        assert c.infer("simple", simple_inputs(httpclient)).as_numpy("OUTPUT0").tolist() == [[2] * 16]
    finally:
        s.stop()
