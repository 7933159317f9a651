"""Request ids and the access log with the real clients: an id sent as X-Request-Id (HTTP) or
x-request-id metadata (gRPC) comes back and is in the access log line; without one the server
makes one. Prometheus metrics are on the HTTP port too."""
import time
import urllib.request

import grpc
import tritonclient.grpc.service_pb2 as pb
import tritonclient.grpc.service_pb2_grpc as pb_grpc

from conftest import Server, copy_repo


def get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, dict(r.headers), r.read()


def test_request_ids_and_the_access_log(tmp_path):
    s = Server(copy_repo(tmp_path), "--access-log")
    try:
        status, headers, _ = get(f"http://{s.http}/v2/models/simple", {"X-Request-Id": "shop-checkout-7"})
        assert status == 200 and headers["x-request-id"] == "shop-checkout-7"
        _, headers, _ = get(f"http://{s.http}/v2/health/ready")
        made = headers["x-request-id"]
        assert len(made) == 20
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(s.grpc))
        _, call = stub.ModelMetadata.with_call(pb.ModelMetadataRequest(name="simple"),
                                               metadata=[("x-request-id", "edge-cam-3")])
        assert dict(call.initial_metadata())["x-request-id"] == "edge-cam-3"
        _, call = stub.ServerLive.with_call(pb.ServerLiveRequest())
        assert len(dict(call.initial_metadata())["x-request-id"]) == 20
        deadline = time.time() + 5
        while "edge-cam-3" not in s.logs() and time.time() < deadline:
            time.sleep(0.1)
        lines = s.logs().splitlines()
        http_line = next(l for l in lines if "shop-checkout-7" in l)
        assert " access " in http_line and "/v2/models/simple" in http_line and "status=200" in http_line
        assert 'model="simple"' in http_line
        assert "bytes=" in http_line and 'who="anonymous"' in http_line
        assert any(made in l and " access " in l for l in lines)
        grpc_line = next(l for l in lines if "edge-cam-3" in l)
        assert "ModelMetadata" in grpc_line and "grpc_status=OK" in grpc_line
    finally:
        s.stop()


def test_metrics_on_the_http_port(server):
    status, headers, body = get(f"http://{server.http}/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert b"nv_inference_request_success" in body
    # The server without --access-log logs no request lines.
    assert " access " not in server.logs()
