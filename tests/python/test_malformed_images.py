"""A corpus of malformed and hostile images, sent through every image entry point
(/predict raw, multipart and base64 JSON; TorchServe's /predictions; the ensemble over v2 HTTP
and gRPC): never a 5xx, always a JSON reason, and the server stays healthy and keeps serving
(issue #4's malformed-image check)."""
import base64
import http.client
import io
import json
import struct
import zlib

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from test_image_preprocess import images_input, png_gray


def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(w, h, depth=8, color=0):
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0))


def encoded(fmt, size=(28, 28), mode="L"):
    buf = io.BytesIO()
    rng = np.random.default_rng(7)
    shape = size[::-1] + ((3,) if mode == "RGB" else ())
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, fmt)
    return buf.getvalue()


def corpus():
    png, jpeg = encoded("PNG"), encoded("JPEG", (64, 48), "RGB")
    gif, bmp, webp = encoded("GIF"), encoded("BMP"), encoded("WEBP", (40, 40), "RGB")
    # A real decompression bomb: 30000x30000 gray pixels of zeros, a few hundred KB of zlib.
    row = b"\0" * 30001
    bomb = png_header(30000, 30000) + chunk(b"IDAT", zlib.compress(row * 30000, 9)) + chunk(b"IEND", b"")
    cases = {
        "empty": b"",
        "text": b"hello, this is not an image\n",
        "json": b'{"image": "nope"}',
        "html": b"<html><body>not an image</body></html>",
        "random": np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "zeros": b"\0" * 1000,
        "png_magic_only": b"\x89PNG\r\n\x1a\n",
        "png_header_no_data": png_header(28, 28),
        "png_zero_size": png_header(0, 0) + chunk(b"IEND", b""),
        "png_bad_crc": png[:29] + b"\0\0\0\0" + png[33:],
        "png_bad_depth": png_header(28, 28, depth=13) + png[33:],
        "png_huge_header": png_header(2**31 - 1, 2**31 - 1) + chunk(b"IEND", b""),
        "png_bomb": bomb,
        "png_garbage_idat": png_header(28, 28) + chunk(b"IDAT", b"\xff" * 100) + chunk(b"IEND", b""),
        "jpeg_soi_only": b"\xff\xd8",
        "jpeg_garbage": b"\xff\xd8\xff\xe0" + b"\x13" * 500,
        "jpeg_huge_sof": b"\xff\xd8\xff\xc0\x00\x11\x08\xff\xff\xff\xff\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01\xff\xd9",
        "gif_header_only": b"GIF89a",
        "gif_huge_screen": b"GIF89a\xff\xff\xff\xff\x00\x00\x00" + b"\x3b",
        "bmp_header_only": b"BM" + b"\0" * 12,
        "bmp_huge": b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 100000, -100000, 1, 24, 0, 0, 0, 0, 0, 0),
        "webp_riff_only": b"RIFF\x10\x00\x00\x00WEBPVP8 ",
        "tiff_unsupported": b"II*\x00\x08\x00\x00\x00" + b"\0" * 64,
        "svg_unsupported": b'<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28"/>',
        "pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
        "zip": b"PK\x03\x04" + b"\0" * 26,
    }
    for name, blob in (("png", png), ("jpeg", jpeg), ("gif", gif), ("bmp", bmp), ("webp", webp)):
        for cut in (0.1, 0.5, 0.9):
            cases[f"{name}_truncated_{int(cut * 100)}"] = blob[: int(len(blob) * cut)]
    # Random byte flips in valid files: these may still decode (200) or not (400), never 5xx.
    rng = np.random.default_rng(2)
    for name, blob in (("png", png), ("jpeg", jpeg), ("gif", gif), ("webp", webp), ("bmp", bmp)):
        for k in range(12):
            b = bytearray(blob)
            for pos in rng.integers(0, len(b), 1 + k % 6):
                b[pos] = rng.integers(0, 256)
            cases[f"{name}_flipped_{k}"] = bytes(b)
    return cases


CORPUS = corpus()


def post(server, path, body, headers):
    conn = http.client.HTTPConnection(server.http, timeout=60)
    conn.request("POST", path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def check(status, data, name):
    assert status < 500, f"{name}: HTTP {status} {data[:200]!r}"
    out = json.loads(data)
    if status >= 400:
        assert isinstance(out.get("error"), str) and out["error"], f"{name}: {out}"
    return out


def test_corpus_never_causes_a_5xx(server):
    refused = 0
    for name, blob in CORPUS.items():
        st, data = post(server, "/predict", blob, {"Content-Type": "application/octet-stream"})
        check(st, data, name)
        refused += st >= 400
        st, data = post(server, "/predict", json.dumps({"image": base64.b64encode(blob).decode()}).encode(),
                        {"Content-Type": "application/json"})
        check(st, data, name + " (json)")
        boundary = "corpusboundary"
        form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + blob + f"\r\n--{boundary}--\r\n".encode()
        st, data = post(server, "/predict", form, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        check(st, data, name + " (multipart)")
        st, data = post(server, "/predictions/fashion_mnist_image", blob, {})
        check(st, data, name + " (torchserve)")
    # Everything not derived from a valid file must be refused with a reason.
    hostile = [n for n in CORPUS if "flipped" not in n]
    assert refused >= len(hostile), f"only {refused} of {len(CORPUS)} refused"


def test_specific_reasons(server):
    reasons = {
        "empty": "empty",
        "text": "supported format",
        "png_bomb": "over the limit",
        "png_huge_header": "image",
        "tiff_unsupported": "supported format",
        "png_truncated_50": "decode",
    }
    for name, needle in reasons.items():
        st, data = post(server, "/predict", CORPUS[name], {"Content-Type": "image/png"})
        assert 400 <= st < 500 and needle in json.loads(data)["error"], f"{name}: {st} {data!r}"


def test_corpus_in_batches_through_the_ensemble_over_grpc(server):
    c = grpcclient.InferenceServerClient(server.grpc)
    good = png_gray(np.full((28, 28), 128))
    for name, blob in CORPUS.items():
        if not blob:
            continue
        try:
            c.infer("fashion_mnist_image", [images_input(grpcclient, [good, blob])])
        except InferenceServerException as e:
            assert e.status() == "StatusCode.INVALID_ARGUMENT", f"{name}: {e.status()} {e.message()}"
            assert "image 1" in e.message(), e.message()


def test_over_the_body_limit_is_413_and_the_server_is_still_healthy(server):
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (9 << 20)  # the shared server's limit is 8 MiB
    # The server answers 413 from the Content-Length and closes without reading the body, so
    # the client's write may fail: hostile.http sends what it can and reads the answer.
    from hostile import http as raw_http
    st, _, data = raw_http(server, "POST", "/predict", big, {"Content-Type": "image/png"})
    assert st == 413 and "--max-body-size" in json.loads(data)["error"]
    conn = http.client.HTTPConnection(server.http, timeout=10)
    conn.request("GET", "/health")
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["status"] == "ok"
    st, data = post(server, "/predict", png_gray(np.zeros((28, 28))), {"Content-Type": "image/png"})
    assert st == 200 and json.loads(data)["predicted_label"]
    assert server.proc.poll() is None, "the server process died"
