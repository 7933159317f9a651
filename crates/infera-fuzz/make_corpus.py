"""Writes the committed seed corpus of the fuzz targets (run once; the files are committed).

python crates/infera-fuzz/make_corpus.py   # needs Pillow and numpy
"""
import io
import json
import shutil
import struct
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent / "corpus"
REPO = Path(__file__).resolve().parents[2] / "examples" / "model_repository"


def put(target, name, data):
    p = ROOT / target / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data if isinstance(data, bytes) else data.encode())


def infer_bodies():
    # Target format: byte 0 says where the JSON header ends (0 = all JSON), then the body.
    def frame(head, binary=b""):
        head = json.dumps(head).encode()
        n = len(head) if binary else 0
        return struct.pack("<I", n) + head + binary
    put("infer_body", "fp32_json", frame({"inputs": [{"name": "INPUT", "shape": [1, 4], "datatype": "FP32", "data": [1.5, 2, -3, 4e3]}]}))
    put("infer_body", "nested", frame({"id": "x", "inputs": [{"name": "a", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, 4]]}],
                                        "outputs": [{"name": "y", "parameters": {"classification": 2, "binary_data": True}}],
                                        "parameters": {"priority": 1, "timeout": 100}}))
    put("infer_body", "bytes_json", frame({"inputs": [{"name": "IMAGE", "shape": [2, 1], "datatype": "BYTES", "data": ["abc", ""]}]}))
    put("infer_body", "bool_u8_f16", frame({"inputs": [{"name": "a", "shape": [3], "datatype": "BOOL", "data": [True, 0, 1]},
                                                       {"name": "b", "shape": [2], "datatype": "UINT8", "data": [0, 255]},
                                                       {"name": "c", "shape": [1], "datatype": "FP16", "data": [0.5]}]}))
    ints = np.arange(16, dtype=np.int32).tobytes()
    put("infer_body", "binary", frame({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "parameters": {"binary_data_size": 64}}]}, ints))
    strings = b"".join(struct.pack("<I", len(s)) + s for s in [b"hello", b"", b"\xff\xfe"])
    put("infer_body", "binary_bytes", frame({"inputs": [{"name": "IMAGE", "shape": [3], "datatype": "BYTES", "parameters": {"binary_data_size": len(strings)}}]}, strings))


def configs():
    for cfg in REPO.glob("*/config.pbtxt"):
        put("config_pbtxt", cfg.parent.name, cfg.read_bytes())
    put("config_pbtxt", "full", """name: "m"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ { name: "input" data_type: TYPE_FP32 dims: [ 1, 28, 28 ] reshape { shape: [ 784 ] } } ]
output [ { name: "logits", data_type: TYPE_FP32, dims: [ 10 ], label_filename: "labels.txt" } ]
dynamic_batching {
  preferred_batch_size: [ 16, 32 ]
  max_queue_delay_microseconds: 200
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 1000 allow_timeout_override: true max_queue_size: 8 }
  priority_queue_policy { key: 1 value: { timeout_action: REJECT } }
}
instance_group [ { count: 2, kind: KIND_CPU } ]
version_policy: { specific { versions: [1, 3] } }
model_warmup [ { name: "zeros" batch_size: 2 inputs { key: "input" value: { data_type: TYPE_FP32 dims: [1, 28, 28] zero_data: true } } } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
""")
    put("config_json", "simple", json.dumps({
        "name": "m", "backend": "memory", "max_batch_size": 8,
        "input": [{"name": "INPUT", "data_type": "TYPE_FP32", "dims": ["4"]}],
        "output": [{"name": "OUTPUT", "data_type": "TYPE_FP32", "dims": ["4"], "label_filename": "labels.txt"}],
        "dynamic_batching": {"preferred_batch_size": [2, 4], "priority_levels": "2", "default_priority_level": "1"},
        "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
        "parameters": {"dims": {"string_value": "4"}}}))
    put("config_json", "ensemble", json.dumps({
        "name": "e", "platform": "ensemble", "max_batch_size": 8,
        "input": [{"name": "IMAGE", "data_type": "TYPE_STRING", "dims": ["1"]}],
        "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": ["10"]}],
        "ensemble_scheduling": {"step": [{"model_name": "a", "model_version": "-1", "input_map": {"IMAGE": "IMAGE"}, "output_map": {"OUT": "OUT"}}]}}))


def bytes_tensors():
    # Target format: 2 bytes of declared element count, then the wire bytes.
    def frame(n, elements):
        return struct.pack("<H", n) + b"".join(struct.pack("<I", len(e)) + e for e in elements)
    put("bytes_tensor", "three", frame(3, [b"a", b"", b"xyz"]))
    put("bytes_tensor", "png_like", frame(1, [b"\x89PNG\r\n\x1a\n" + b"\0" * 20]))
    put("bytes_tensor", "empty", frame(0, []))


def images():
    rng = np.random.default_rng(0)
    gray = Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), "L")
    rgb = Image.fromarray(rng.integers(0, 255, (9, 13, 3), dtype=np.uint8), "RGB")
    for name, img, fmt, kw in [("gray.png", gray, "PNG", {}), ("rgb.jpg", rgb, "JPEG", {"quality": 80}),
                               ("rgb.bmp", rgb, "BMP", {}), ("gray.gif", gray, "GIF", {}),
                               ("rgb.webp", rgb, "WEBP", {"lossless": True}), ("rgba.png", rgb.convert("RGBA"), "PNG", {}),
                               ("gray16.png", gray.convert("I;16"), "PNG", {}), ("progressive.jpg", rgb, "JPEG", {"progressive": True})]:
        b = io.BytesIO()
        img.save(b, fmt, **kw)
        put("image", name, b.getvalue())
    # EXIF orientation 6 (rotate 90).
    b = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb.save(b, "JPEG", exif=exif.tobytes())
    put("image", "rotated.jpg", b.getvalue())


if __name__ == "__main__":
    shutil.rmtree(ROOT, ignore_errors=True)
    infer_bodies()
    configs()
    bytes_tensors()
    images()
    print(sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()))
