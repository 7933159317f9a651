"""Hostile clients against inference: bodies that would allocate far more than their size
(compression bombs, huge declared element counts, extreme image shapes, gRPC streams never
read) get a 4xx with memory bounded, and errors follow the protocol (never compressed, so
Triton's asyncio client can read them).

Every case ends with the server alive, its peak RSS bounded and no file outside the
repository opened (`hostile.Hostile.check`)."""
import asyncio
import json
import struct
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from hostile import (MAX_BODY, checked, deflate_bomb, error_of, gzip_bomb, gz, hostile, http,  # noqa: F401
                     png_gray, peak_rss_mb)
from test_image_preprocess import png_gray as png_image

IMAGE = png_image(np.full((28, 28), 128, dtype=np.uint8))


def infer_json(h, model, doc, headers=None):
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return http(h.server, "POST", f"/v2/models/{model}/infer", body, headers)


@pytest.mark.parametrize("encoding,bomb", [("gzip", gzip_bomb), ("deflate", deflate_bomb)])
def test_compression_bombs_stop_at_the_body_limit(hostile, encoding, bomb):
    payload = bomb(512 << 20)  # 512 MiB of spaces in well under 1 MiB
    assert len(payload) < MAX_BODY
    status, hdrs, body = infer_json(hostile, "simple", payload, {"Content-Encoding": encoding,
                                                                  "Content-Type": "application/json"})
    assert status == 413, body
    assert "--max-body-size" in error_of(body)
    assert "content-encoding" not in hdrs


def test_a_grpc_compression_bomb_is_refused(hostile):
    h = hostile
    channel = grpc.insecure_channel(h.server.grpc, options=[("grpc.max_send_message_length", 1 << 30)])
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    req = service_pb2.ModelInferRequest(model_name="simple")
    inp = req.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])
    req.raw_input_contents.append(b"\0" * (256 << 20))
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req, compression=grpc.Compression.Gzip, timeout=60)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()
    del inp, req
    channel.close()


@pytest.mark.parametrize("doc,needle", [
    # Shapes the model does not take are refused before a value is parsed.
    ({"inputs": [{"name": "INPUT0", "shape": [1, 16_000_000], "datatype": "INT32", "data": [0] * 2_000_000},
                 {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [0] * 16}]}, "unexpected shape"),
    # More values than the shape holds: parsing stops at the first extra one.
    ({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [0] * 2_000_000},
                 {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [0] * 16}]}, "more than the 16 values"),
    ({"inputs": [{"name": f"x{i}", "shape": [1], "datatype": "INT32", "data": [0]} for i in range(100_000)]}, "more than 1024"),
    ({"inputs": [{"name": "INPUT0", "shape": [1] * 1000, "datatype": "INT32", "data": [0]}]}, "more than 32"),
    ({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [0] * 16, "parameters": {"x": "y" * 200_000}}]}, "parameters"),
])
def test_json_tensors_are_bounded_by_their_declared_shape(hostile, doc, needle):
    status, _, body = infer_json(hostile, "simple", doc)
    assert status == 400, body[:300]
    assert needle in error_of(body), error_of(body)


def test_bytes_tensors_are_bounded_by_their_declared_shape(hostile):
    h = hostile
    empties = struct.pack("<I", 0) * (1 << 20)  # a million empty strings in 4 MiB
    head = json.dumps({"inputs": [{"name": "IMAGE", "shape": [1, 1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(empties)}}]}).encode()
    status, _, body = http(h.server, "POST", "/v2/models/fashion_mnist_image/infer", head + empties,
                           {"Inference-Header-Content-Length": str(len(head))})
    assert status == 400 and "more than the 1 values" in error_of(body), body
    doc = {"inputs": [{"name": "IMAGE", "shape": [1, 1], "datatype": "BYTES", "data": [""] * 1_000_000}]}
    status, _, body = infer_json(h, "fashion_mnist_image", doc)
    assert status == 400 and "more than the 1 values" in error_of(body), body


@pytest.mark.parametrize("width,height,status,needle", [
    (16_000_000, 1, 400, "aspect ratio is too extreme"),  # scaling it would need a huge buffer
    (20_000, 1_000, 400, "over the limit"),               # more pixels than max_pixels
    (1, 16_000_000, 200, None),                           # tall but cheap to scale: answered
    (40_000, 400, 200, None),
])
def test_extreme_image_shapes_are_bounded_by_max_pixels(hostile, width, height, status, needle):
    h = hostile
    image = png_gray(width, height)
    assert len(image) < MAX_BODY
    before = peak_rss_mb(h.server.proc.pid)
    got, _, body = http(h.server, "POST", "/predict", image, {"Content-Type": "image/png"})
    assert got == status, body
    if needle:
        assert needle in error_of(body) and "max_pixels" in error_of(body), error_of(body)
    # Memory follows max_pixels (16 M pixels in the example), not what the image claims.
    assert peak_rss_mb(h.server.proc.pid) - before < 200


def test_a_decompression_bomb_image_is_refused(hostile):
    status, _, body = http(hostile.server, "POST", "/predict", png_gray(30_000, 30_000), {"Content-Type": "image/png"})
    assert status == 400 and "over the limit" in error_of(body), body


def test_a_grpc_stream_written_but_never_read_is_not_read_either(hostile):
    h = hostile
    channel = grpc.insecure_channel(h.server.grpc)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    sent = [0]
    payload = np.zeros((64, 1, 28, 28), dtype=np.float32).tobytes()  # 200 KB each way

    def requests():
        while sent[0] < 5000:
            r = service_pb2.ModelInferRequest(model_name="fashion_mnist", id=str(sent[0]))
            r.inputs.add(name="input", datatype="FP32", shape=[64, 1, 28, 28])
            r.raw_input_contents.append(payload)
            sent[0] += 1
            yield r

    responses = stub.ModelStreamInfer(requests())
    time.sleep(4)
    stalled_at = sent[0]
    assert stalled_at < 2000, f"the client could push {stalled_at} requests into a stream nobody reads"
    stats = httpclient.InferenceServerClient(h.server.http).get_inference_statistics("fashion_mnist")
    run = stats["model_stats"][0]["inference_count"]
    # Reading one response lets the stream move again.
    first = next(responses)
    assert not first.error_message
    responses.cancel()
    channel.close()
    assert run < 2000 * 64


def test_errors_are_never_compressed_so_the_asyncio_client_reads_them(hostile):
    h = hostile

    async def go():
        c = aioclient.InferenceServerClient(h.server.http)
        try:
            x = aioclient.InferInput("INPUT0", [1, 16], "INT32")
            x.set_data_from_numpy(np.zeros((1, 16), dtype=np.int32))
            with pytest.raises(InferenceServerException) as e:
                await c.infer("nope", [x], response_compression_algorithm="gzip")
            assert "unknown model" in e.value.message()
            with pytest.raises(InferenceServerException) as e:
                await c.infer("simple", [x], response_compression_algorithm="gzip")
            assert "expected 2 inputs" in e.value.message()
            y = aioclient.InferInput("INPUT1", [1, 16], "INT32")
            y.set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
            # (tritonclient 2.41's asyncio client cannot compress requests: it lacks `import gzip`.)
            r = await c.infer("simple", [x, y], response_compression_algorithm="gzip")
            assert r.as_numpy("OUTPUT0").tolist() == [[1] * 16]
        finally:
            await c.close()

    asyncio.run(go())
    doc = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}).encode()
    status, hdrs, body = http(h.server, "POST", "/v2/models/nope/infer", doc, {"Accept-Encoding": "gzip, deflate"})
    assert status == 404 and "content-encoding" not in hdrs and b"unknown model" in body


def test_timeouts_and_priorities_from_clients_cannot_overflow(hostile):
    doc = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16},
                      {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}],
           "parameters": {"timeout": 18446744073709551615}}
    status, _, body = infer_json(hostile, "simple", doc)
    assert status == 200, body
    doc["parameters"] = {"priority": 18446744073709551615}
    status, _, body = infer_json(hostile, "simple", doc)
    assert status in (200, 400), body
    g = grpcclient.InferenceServerClient(hostile.server.grpc)
    a = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
    a.set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
    b = grpcclient.InferInput("INPUT1", [1, 16], "INT32")
    b.set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
    g.infer("simple", [a, b], timeout=2**63 - 1)


def test_many_concurrent_garbage_requests_leave_every_model_serving(hostile):
    h = hostile
    bad = [b"{", b"\0" * 1000, json.dumps({"inputs": [{"name": "INPUT0", "shape": [-1], "datatype": "INT32", "data": []}]}).encode(),
           gz(b"not json"), b'{"inputs": [' + b"[" * 100_000]
    errors = []

    def hammer(i):
        for j in range(40):
            body = bad[(i + j) % len(bad)]
            headers = {"Content-Encoding": "gzip"} if body[:2] == b"\x1f\x8b" else {}
            status, _, _ = http(h.server, "POST", "/v2/models/simple/infer", body, headers)
            if status != 400:
                errors.append(status)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    status, _, body = http(h.server, "POST", "/predict", IMAGE, {"Content-Type": "image/png"})
    assert status == 200, body
