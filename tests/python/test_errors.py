"""Every bad request gets the right status and a JSON error naming the problem; the server stays up."""
import json
import struct

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from test_http import raw

SIMPLE_OK = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16},
                        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [2] * 16}]}


def post_json(server, path, doc, headers=None):
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    status, hdrs, data = raw(server, "POST", path, body, headers)
    return status, hdrs, (json.loads(data) if data else None)


def with_input(**changes):
    doc = json.loads(json.dumps(SIMPLE_OK))
    doc["inputs"][0].update(changes)
    return doc


@pytest.mark.parametrize("path,doc,status,needle", [
    ("/v2/models/nope/infer", SIMPLE_OK, 404, "unknown model"),
    ("/v2/models/simple/versions/9/infer", SIMPLE_OK, 404, "version 9"),
    ("/v2/models/simple/versions/abc/infer", SIMPLE_OK, 400, "not a number"),
    ("/v2/models/simple/infer", with_input(name="WRONG"), 400, "unexpected inference input 'WRONG'"),
    ("/v2/models/simple/infer", with_input(shape=[1, 8], data=[1] * 8), 400, "unexpected shape for input 'INPUT0'"),
    ("/v2/models/simple/infer", with_input(shape=[9, 16], data=[1] * 144), 400, "batch-size must be <= 8"),
    ("/v2/models/simple/infer", with_input(datatype="FP32"), 400, "data-type is 'FP32'"),
    ("/v2/models/simple/infer", with_input(datatype="FLOAT"), 400, "unknown datatype"),
    ("/v2/models/simple/infer", with_input(data=[1] * 15), 400, "expected 16 values"),
    ("/v2/models/simple/infer", with_input(data=["x"] * 16), 400, "not a valid INT32"),
    ("/v2/models/simple/infer", {"inputs": SIMPLE_OK["inputs"][:1]}, 400, "expected 2 inputs"),
    ("/v2/models/simple/infer", dict(SIMPLE_OK, outputs=[{"name": "NOPE"}]), 400, "unexpected inference output 'NOPE'"),
    ("/v2/models/simple/infer", b"{not json", 400, "failed to parse the request JSON"),
    ("/v2/models/simple/infer", b"", 400, "failed to parse"),
    ("/v2/models/simple/infer", {"inputs": "x"}, 400, "failed to parse"),
])
def test_http_error_cases(server, path, doc, status, needle):
    got, headers, body = post_json(server, path, doc)
    assert got == status, body
    assert headers["content-type"] == "application/json"
    assert needle in body["error"], body


def binary_request(inputs, extra=b""):
    """inputs: list of (name, dtype, shape, declared_size, payload)."""
    head = json.dumps({"inputs": [{"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": size}}
                                  for n, d, s, size, _ in inputs]}).encode()
    body = head + b"".join(p for *_, p in inputs) + extra
    return head, body


def test_binary_framing_errors(server):
    ok = np.arange(16, dtype=np.int32).tobytes()
    # Truncated: declared 64 bytes, sent 32.
    head, body = binary_request([("INPUT0", "INT32", [1, 16], 64, ok), ("INPUT1", "INT32", [1, 16], 64, ok[:32])])
    st, _, b = post_json(server, "/v2/models/simple/infer", body, {"Inference-Header-Content-Length": str(len(head))})
    assert st == 400 and "remain" in b["error"], b
    # Mis-sized: declared size does not fit the shape.
    head, body = binary_request([("INPUT0", "INT32", [1, 16], 60, ok[:60]), ("INPUT1", "INT32", [1, 16], 64, ok)])
    st, _, b = post_json(server, "/v2/models/simple/infer", body, {"Inference-Header-Content-Length": str(len(head))})
    assert st == 400 and "expected 64 bytes" in b["error"], b
    # Trailing bytes nobody claimed.
    head, body = binary_request([("INPUT0", "INT32", [1, 16], 64, ok), ("INPUT1", "INT32", [1, 16], 64, ok)], b"xx")
    st, _, b = post_json(server, "/v2/models/simple/infer", body, {"Inference-Header-Content-Length": str(len(head))})
    assert st == 400 and "not claimed" in b["error"], b
    # Header length past the body.
    st, _, b = post_json(server, "/v2/models/simple/infer", body, {"Inference-Header-Content-Length": str(len(body) + 5)})
    assert st == 400 and "Inference-Header-Content-Length" in b["error"], b
    st, _, b = post_json(server, "/v2/models/simple/infer", body, {"Inference-Header-Content-Length": "-3"})
    assert st == 400, b
    # BYTES element whose length prefix runs past the data.
    st, _, b = post_json(server, "/v2/models/simple/infer", b'{"inputs":[{"name":"INPUT0","datatype":"BYTES","shape":[1],"parameters":{"binary_data_size":5}}]}' + struct.pack("<I", 9) + b"a",
                         {"Inference-Header-Content-Length": "99"})
    assert st == 400, b


def test_body_over_the_limit_is_413(server):
    big = b'{"inputs":[{"name":"INPUT0","datatype":"INT32","shape":[1,16],"data":[' + b"1," * (5 << 20) + b"1]}]}"
    # The server may answer and close before the whole body is sent (it should not read 10 MB
    # it will refuse); http.client then fails on the broken pipe, so send by hand and read the
    # answer whatever happens to the rest of the body.
    import socket
    host, port = server.http.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(big))
        try:
            sock.sendall(big)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"413", answer[:300]
    assert b"--max-body-size" in body, body
    assert server.proc.poll() is None


def test_tritonclient_raises_with_status_and_message(server):
    c = httpclient.InferenceServerClient(server.http)
    i0 = httpclient.InferInput("INPUT0", [1, 16], "INT32")
    i0.set_data_from_numpy(np.zeros((1, 16), dtype=np.int32))
    with pytest.raises(InferenceServerException) as e:
        c.infer("nope", [i0])
    assert "unknown model" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        c.infer("simple", [i0])
    assert "expected 2 inputs" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        c.get_model_metadata("nope")
    assert e.value.status() == "404"
    assert c.is_server_live()


@pytest.fixture(scope="module")
def grpc_client(server):
    c = grpcclient.InferenceServerClient(server.grpc)
    yield c
    c.close()


def grpc_inputs(shape0=(1, 16), dtype0="INT32"):
    i0 = grpcclient.InferInput("INPUT0", list(shape0), dtype0)
    i0.set_data_from_numpy(np.zeros(shape0, dtype=np.int32 if dtype0 == "INT32" else np.float32))
    i1 = grpcclient.InferInput("INPUT1", [1, 16], "INT32")
    i1.set_data_from_numpy(np.zeros((1, 16), dtype=np.int32))
    return [i0, i1]


@pytest.mark.parametrize("kwargs,code,needle", [
    (dict(model_name="nope"), "StatusCode.NOT_FOUND", "unknown model"),
    (dict(model_name="simple", model_version="9"), "StatusCode.NOT_FOUND", "version 9"),
    (dict(model_name="simple", inputs=grpc_inputs((1, 8))), "StatusCode.INVALID_ARGUMENT", "unexpected shape"),
    (dict(model_name="simple", inputs=grpc_inputs(dtype0="FP32")), "StatusCode.INVALID_ARGUMENT", "data-type is 'FP32'"),
    (dict(model_name="simple", inputs=grpc_inputs()[:1]), "StatusCode.INVALID_ARGUMENT", "expected 2 inputs"),
])
def test_grpc_error_cases(grpc_client, kwargs, code, needle):
    kwargs.setdefault("inputs", grpc_inputs())
    with pytest.raises(InferenceServerException) as e:
        grpc_client.infer(**kwargs)
    assert e.value.status() == code, e.value
    assert needle in e.value.message(), e.value.message()


def test_grpc_mis_sized_raw_input(server):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    ch = grpc.insecure_channel(server.grpc)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
    req = service_pb2.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        t = req.inputs.add()
        t.name, t.datatype = name, "INT32"
        t.shape.extend([1, 16])
    req.raw_input_contents.extend([b"\0" * 64, b"\0" * 10])
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expected 64 bytes" in e.value.details()
    del req.raw_input_contents[:]
    req.raw_input_contents.extend([b"\0" * 64])
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req)
    assert "raw_input_contents" in e.value.details()
    ch.close()


def test_server_still_healthy_after_errors(server):
    st, _, body = post_json(server, "/v2/models/simple/infer", SIMPLE_OK)
    assert st == 200 and body["outputs"][0]["data"] == [3] * 16
