"""Tests of the `infera` wheel, run in a fresh virtualenv where only the wheel (and its
dependencies, onnxruntime from PyPI among them) and the test tools are installed."""
import gzip
import io
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "model_repository"
DATA = Path("/usr/share/datasets/fashion-mnist")


def idx(path: Path) -> np.ndarray:
    """An IDX file (Fashion-MNIST's format) as an array."""
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def test_images():
    return idx(DATA / "t10k-images-idx3-ubyte.gz"), idx(DATA / "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory, test_images):
    """2,000 Fashion-MNIST test images as PNG files."""
    root = tmp_path_factory.mktemp("photos")
    images, _ = test_images
    for i in range(2000):
        (root / f"img_{i:05d}.png").write_bytes(png(images[i]))
    return root
