"""Traffic routing with the real clients: an A/B split from routes.toml lands within 2 points
of its weights over 10,000 requests and sticky keys always get the same variant; a canary
whose candidate fails 30% of its requests is rolled back within its window while the stable
version fails nothing; a shadow's reported top-1 agreement equals the one computed here from
both versions' own answers; `infera models route` drives all of it."""
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

import tiny_onnx
from conftest import BINARY, Server


def model(repo, name, versions, dims, max_batch=8):
    d = repo / name
    for v, onnx in versions.items():
        (d / str(v)).mkdir(parents=True)
        (d / str(v) / "model.onnx").write_bytes(onnx)
    d.joinpath("config.pbtxt").write_text(f"""
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch}
version_policy: {{ all {{ }} }}
input [ {{ name: "X" data_type: TYPE_FP32 dims: {dims} }} ]
output [ {{ name: "Y" data_type: TYPE_FP32 dims: {dims} }} ]
""")


@pytest.fixture
def repo(tmp_path):
    r = tmp_path / "repo"
    model(r, "ab", {1: tiny_onnx.plus(1), 2: tiny_onnx.plus(2)}, [4])
    model(r, "canary", {1: tiny_onnx.identity1(), 2: tiny_onnx.fails_unless_one()}, [1], max_batch=0)
    model(r, "shadowed", {1: tiny_onnx.scaled([1, 1, 1, 1]), 2: tiny_onnx.scaled([1, 1, 1, 2])}, [4])
    (r / "routes.toml").write_text("""
[ab]
variants = [
  { name = "a", version = 1, weight = 90 },
  { name = "b", version = 2, weight = 10 },
]
""")
    return r


def call(s, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{s.http}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def metric(s, line_start):
    text = urllib.request.urlopen(s.metrics, timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return None


def stats(s, m, v):
    _, body = call(s, "GET", f"/v2/models/{m}/versions/{v}/stats")
    return body["model_stats"][0]["inference_stats"]


def test_ab_split_from_the_routes_file_and_sticky_keys(repo):
    s = Server(repo)
    try:
        h = httpclient.InferenceServerClient(s.http)
        x = np.zeros((1, 4), np.float32)
        inp = httpclient.InferInput("X", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        n, versions = 10_000, {"1": 0, "2": 0}
        for _ in range(n):
            r = h.infer("ab", [inp])
            v = r.get_response()["model_version"]
            versions[v] += 1
            assert r.as_numpy("Y")[0, 0] == float(v), "the answer comes from the version reported"
        share = versions["2"] / n
        assert abs(share - 0.10) <= 0.02, versions
        # Per-variant counts: the versions' statistics and the route's metrics agree.
        assert int(stats(s, "ab", 2)["success"]["count"]) == versions["2"]
        assert metric(s, 'infera_route_requests_total{outcome="success",route="ab",variant="b"}') == versions["2"]
        assert metric(s, 'infera_route_weight{route="ab",variant="a"}') == 90

        # Sticky: a key (request parameter over HTTP and gRPC, or the X-Routing-Key header)
        # always lands on the same variant.
        g = grpcclient.InferenceServerClient(s.grpc)
        ginp = grpcclient.InferInput("X", [1, 4], "FP32")
        ginp.set_data_from_numpy(x)
        seen = {}
        for k in range(200):
            key = f"user-{k}"
            got = {h.infer("ab", [inp], parameters={"routing_key": key}).get_response()["model_version"]
                   for _ in range(3)}
            got |= {h.infer("ab", [inp], headers={"X-Routing-Key": key}).get_response()["model_version"]}
            got |= {g.infer("ab", [ginp], parameters={"routing_key": key}).get_response().model_version}
            got |= {g.infer("ab", [ginp], headers={"x-routing-key": key}).get_response().model_version}
            assert len(got) == 1, f"{key} moved between variants: {got}"
            seen[key] = got.pop()
        assert set(seen.values()) == {"1", "2"}
        # Naming a version bypasses the route.
        assert all(h.infer("ab", [inp], model_version="2").get_response()["model_version"] == "2"
                   for _ in range(20))
    finally:
        s.stop()


def test_a_failing_canary_is_rolled_back_within_its_window(repo):
    s = Server(repo)
    try:
        window = 5
        code, body = call(s, "PUT", "/v2/routes/canary", {
            "variants": [{"name": "stable", "version": 1, "weight": 0},
                         {"name": "candidate", "version": 2, "weight": 0}],
            "canary": {"candidate": "candidate", "start_weight": 50, "step_weight": 10,
                       "step_secs": 60, "window_secs": window, "min_requests": 20,
                       "max_error_ratio": 0.1}})
        assert code == 200, body
        assert [v["weight"] for v in body["variants"]] == [50, 50]
        h = httpclient.InferenceServerClient(s.http)
        ok, bad = httpclient.InferInput("X", [1], "FP32"), httpclient.InferInput("X", [1], "FP32")
        ok.set_data_from_numpy(np.array([1], np.float32))
        bad.set_data_from_numpy(np.array([2], np.float32))  # version 2 fails on it
        rng = np.random.default_rng(0)
        started, failures, rolled_back_after = time.time(), 0, None
        while time.time() - started < window + 5:
            try:
                h.infer("canary", [bad if rng.random() < 0.3 else ok])
            except InferenceServerException:
                failures += 1
            if call(s, "GET", "/v2/routes/canary")[1]["canary"]["phase"] == "rolled_back":
                rolled_back_after = time.time() - started
                break
        assert rolled_back_after is not None and rolled_back_after <= window, rolled_back_after
        assert failures > 0
        # The stable version failed nothing; every failure was the candidate's.
        assert int(stats(s, "canary", 1)["fail"]["count"]) == 0
        assert int(stats(s, "canary", 2)["fail"]["count"]) == failures
        # After the rollback, every request goes to the stable version and succeeds.
        for i in range(200):
            r = h.infer("canary", [bad if i % 3 == 0 else ok])
            assert r.get_response()["model_version"] == "1"
        _, route = call(s, "GET", "/v2/routes/canary")
        assert route["canary"]["reason"].startswith("error ratio"), route
        assert [v["weight"] for v in route["variants"]] == [100, 0]
        assert metric(s, 'infera_route_rollbacks_total{route="canary"}') == 1
        assert metric(s, 'infera_route_weight{route="canary",variant="candidate"}') == 0
        _, index = call(s, "POST", "/v2/repository/index", {})
        v2 = next(m for m in index if m["name"] == "canary" and m["version"] == "2")
        assert "canary of route 'canary' rolled back: error ratio" in v2["reason"], v2
        assert v2["state"] == "READY", "a rolled-back candidate stays loaded for a look"
    finally:
        s.stop()


def test_shadow_agreement_equals_the_rate_of_both_versions_answers(repo):
    s = Server(repo)
    try:
        code, body = call(s, "PUT", "/v2/routes/shadowed", {
            "variants": [{"name": "serving", "version": 1, "weight": 100}],
            "shadow": {"version": 2, "percent": 100}})
        assert code == 200, body
        g = grpcclient.InferenceServerClient(s.grpc)
        rng = np.random.default_rng(7)
        n, agree = 300, 0
        for _ in range(n):
            x = rng.random((1, 4), dtype=np.float32)
            inp = grpcclient.InferInput("X", [1, 4], "FP32")
            inp.set_data_from_numpy(x)
            served = g.infer("shadowed", [inp])
            assert served.get_response().model_version == "1"
            v1 = g.infer("shadowed", [inp], model_version="1").as_numpy("Y")
            v2 = g.infer("shadowed", [inp], model_version="2").as_numpy("Y")
            agree += int(np.argmax(v1[0]) == np.argmax(v2[0]))
        assert 0 < agree < n, "the two versions must disagree sometimes for the test to mean anything"
        deadline = time.time() + 20
        while time.time() < deadline:
            shadow = call(s, "GET", "/v2/routes/shadowed")[1]["shadow"]
            if shadow["compared"] + shadow["failed"] + shadow["dropped"] == n:
                break
            time.sleep(0.1)
        assert (shadow["compared"], shadow["failed"], shadow["dropped"]) == (n, 0, 0), shadow
        assert shadow["agreed"] == agree
        assert shadow["agreement"] == pytest.approx(agree / n)
        assert metric(s, 'infera_shadow_requests_total{result="agree",route="shadowed"}') == agree
    finally:
        s.stop()


def test_routes_api_and_cli(repo):
    s = Server(repo)
    try:
        cli = [str(BINARY), "models", "--url", f"http://{s.http}", "route"]
        out = subprocess.run(cli + ["shadowed", "--variant", "one=1:70", "--variant", "two=2:30"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "route shadowed" in out.stdout and "two" in out.stdout
        shown = json.loads(subprocess.run(cli + ["shadowed", "--json"], capture_output=True,
                                          text=True, timeout=30).stdout)
        assert [(v["version"], v["weight"]) for v in shown["variants"]] == [("1", 70), ("2", 30)]
        out = subprocess.run(cli + ["shadowed", "--rollback"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 1 and "has no canary" in out.stderr and "[HTTP 409]" in out.stderr
        listed = subprocess.run(cli, capture_output=True, text=True, timeout=30).stdout
        assert "route ab" in listed and "route shadowed" in listed
        assert subprocess.run(cli + ["shadowed", "--delete"], timeout=30).returncode == 0
        assert call(s, "GET", "/v2/routes/shadowed")[0] == 404

        # Mistakes are 4xx with a reason, and the route in force stays.
        for body, want in [
            ({"variants": [{"name": "a", "version": 9, "weight": 1}]}, "variant 'a'"),
            ({"variants": [{"name": "a", "model": "nope", "weight": 1}]}, "nope"),
            ({"variants": [{"name": "a", "weight": 1}], "colour": 1}, "colour"),
            ({"variants": []}, "1 to 16 variants"),
        ]:
            code, err = call(s, "PUT", "/v2/routes/ab", body)
            assert code == 400 and want in err["error"], (body, err)
        code, err = call(s, "PUT", "/v2/routes/..%2Fetc", {"variants": [{"name": "a", "weight": 1}]})
        assert code == 400, err
        assert call(s, "GET", "/v2/routes/ab")[1]["variants"][0]["weight"] == 90
    finally:
        s.stop()
