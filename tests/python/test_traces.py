"""JSON logs and OpenTelemetry traces: with --log-format json every request's access line is
one JSON object carrying the request id (HTTP X-Request-Id, gRPC metadata); with
--otlp-endpoint a collector started by the test (OTLP/HTTP, JSON) receives the span tree
request -> ensemble step -> queue / backend, continuing the client's W3C traceparent, and
responses carry the server's traceparent."""
import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import tritonclient.grpc.service_pb2 as pb
import tritonclient.grpc.service_pb2_grpc as pb_grpc

from conftest import Server, copy_repo
from test_image_preprocess import png_gray

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
GRPC_TRACE = "0af7651916cd43dd8448eb211c80319c"


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP receiver: keeps every span posted to /v1/traces."""

    def __init__(self):
        self.spans = []
        self.paths = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.paths.append((self.path, self.headers.get("Content-Type")))
                doc = json.loads(body)
                for rs in doc.get("resourceSpans", []):
                    service = {a["key"]: a["value"].get("stringValue") for a in rs["resource"]["attributes"]}
                    for ss in rs.get("scopeSpans", []):
                        for s in ss.get("spans", []):
                            s["service"] = service.get("service.name")
                            collector.spans.append(s)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def attrs(span):
    return {a["key"]: next(iter(a["value"].values())) for a in span.get("attributes", [])}


def test_json_logs_and_a_trace_of_an_ensemble_request(tmp_path):
    collector = Collector()
    s = Server(copy_repo(tmp_path), "--log-format", "json", "--access-log",
               "--otlp-endpoint", f"http://127.0.0.1:{collector.server_port}")
    try:
        png = png_gray(np.full((28, 28), 70, dtype=np.uint8))
        req = urllib.request.Request(f"http://{s.http}/predict", data=png, method="POST", headers={
            "X-Request-Id": "photo-1", "traceparent": f"00-{TRACE}-{PARENT}-01"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200
            theirs = r.headers["traceparent"]
        assert theirs.startswith(f"00-{TRACE}-") and PARENT not in theirs
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(s.grpc))
        _, call = stub.ModelMetadata.with_call(pb.ModelMetadataRequest(name="simple"), metadata=[
            ("x-request-id", "edge-cam-9"), ("traceparent", f"00-{GRPC_TRACE}-{PARENT}-01")])
        assert dict(call.initial_metadata())["traceparent"].startswith(f"00-{GRPC_TRACE}-")
    finally:
        assert s.stop() == 0  # flushes the spans still buffered
        collector.shutdown()

    # JSON logs: every line is one object; the access lines carry the request ids.
    lines = [json.loads(l) for l in s.logs().splitlines() if l.strip()]
    access = [l for l in lines if l["fields"].get("message") == "access"]
    http_line = next(l for l in access if l["span"]["id"] == "photo-1")
    assert http_line["fields"]["path"] == "/predict" and http_line["fields"]["status"] == 200
    assert http_line["fields"]["model"] == "fashion_mnist_image"
    grpc_line = next(l for l in access if l["span"]["id"] == "edge-cam-9")
    assert grpc_line["fields"]["method"] == "ModelMetadata"

    # The trace: request -> step (per ensemble step) -> queue and backend.
    assert collector.paths and all(p == "/v1/traces" for p, _ in collector.paths)
    spans = [sp for sp in collector.spans if sp["traceId"] == TRACE]
    assert all(sp["service"] == "infera" for sp in spans)
    (root,) = [sp for sp in spans if sp["name"] == "request"]
    assert root["parentSpanId"] == PARENT and attrs(root)["id"] == "photo-1"
    assert theirs.split("-")[2] == root["spanId"]
    steps = [sp for sp in spans if sp["name"] == "step"]
    assert [attrs(sp)["model"] for sp in sorted(steps, key=lambda x: int(x["startTimeUnixNano"]))] == \
        ["fashion_preprocess", "fashion_mnist", "fashion_postprocess"]
    for step in steps:
        assert step["parentSpanId"] == root["spanId"]
        children = {sp["name"]: sp for sp in spans if sp.get("parentSpanId") == step["spanId"]}
        assert set(children) == {"queue", "backend"}, children
        assert attrs(children["backend"])["model"] == attrs(step)["model"]
        assert int(children["queue"]["endTimeUnixNano"]) <= int(children["backend"]["startTimeUnixNano"]) + 1_000_000
    assert any(sp["traceId"] == GRPC_TRACE and sp["name"] == "request" for sp in collector.spans)
