"""Triton's perf_analyzer (from the tritonclient wheel) drives infera over HTTP and gRPC with zero errors."""
import csv
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import tritonclient.http as httpclient

from conftest import FIXTURES


def perf_analyzer_env():
    exe = shutil.which("perf_analyzer")
    if exe is None:
        pytest.fail("perf_analyzer not found: pip install 'tritonclient[all]==2.41.0'")
    import nvidia.cuda_runtime
    lib = Path(list(nvidia.cuda_runtime.__path__)[0]) / "lib"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = f"{lib}:{env.get('LD_LIBRARY_PATH', '')}"
    return exe, env


def run_perf_analyzer(url, protocol, model, tmp_path, extra=()):
    exe, env = perf_analyzer_env()
    out = tmp_path / f"{model}-{protocol}.csv"
    cmd = [exe, "-m", model, "-u", url, "-i", protocol, "--concurrency-range", "1:16",
           "--measurement-mode", "time_windows", "--measurement-interval", "200",
           "--stability-percentage", "999", "--max-trials", "3", "-f", str(out), *extra]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "error" not in (p.stdout + p.stderr).lower(), p.stdout[-3000:]
    rows = list(csv.DictReader(out.open()))
    assert sorted(int(r["Concurrency"]) for r in rows) == list(range(1, 17))
    assert all(float(r["Inferences/Second"]) > 0 for r in rows)
    return rows


def failures(server, model):
    stats = httpclient.InferenceServerClient(server.http).get_inference_statistics(model)["model_stats"]
    return sum(s["inference_stats"]["fail"]["count"] for s in stats)


@pytest.mark.parametrize("model,extra", [
    ("fashion_mnist", ()),
    ("iris", ()),
    ("simple", ()),
    ("simple", ("-b", "4")),
])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_zero_errors(server, tmp_path, model, extra, protocol):
    url = server.http if protocol == "http" else server.grpc
    before = failures(server, model)  # the shared server also served the error tests
    run_perf_analyzer(url, protocol, model, tmp_path, extra)
    assert failures(server, model) == before


def test_perf_analyzer_grpc_streaming(server, tmp_path):
    before = failures(server, "fashion_mnist")
    run_perf_analyzer(server.grpc, "grpc", "fashion_mnist", tmp_path, ("--streaming",))
    assert failures(server, "fashion_mnist") == before


def test_perf_analyzer_on_repository_without_config(make_server, tmp_path):
    repo = tmp_path / "noconfig"
    for m in ("fashion_mnist", "iris", "simple"):
        shutil.copytree(FIXTURES / m / "1", repo / m / "1")
    s = make_server(repo)
    for protocol, url in (("http", s.http), ("grpc", s.grpc)):
        for model in ("fashion_mnist", "iris"):
            run_perf_analyzer(url, protocol, model, tmp_path)
            assert failures(s, model) == 0


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_on_the_image_ensemble(server, tmp_path, protocol):
    """perf_analyzer walks the ensemble's steps (it fetches each step's config) and sends real PNGs."""
    import base64
    import json

    import numpy as np

    from test_image_preprocess import png_gray
    png = png_gray(np.random.default_rng(1).integers(0, 256, size=(28, 28)))
    data = tmp_path / "images.json"
    # b64 is the serialized tensor, so a BYTES element carries its 4-byte length first.
    serialized = len(png).to_bytes(4, "little") + png
    data.write_text(json.dumps({"data": [{"IMAGE": {"b64": base64.b64encode(serialized).decode()}}]}))
    url = server.http if protocol == "http" else server.grpc
    before = failures(server, "fashion_mnist_image")
    # -x 1: without an explicit version perf_analyzer 2.41 does not find the ensemble in the
    # server statistics (noted on the issue; the composing models are found either way).
    run_perf_analyzer(url, protocol, "fashion_mnist_image", tmp_path,
                      ("--input-data", str(data), "--shape", "IMAGE:1", "-x", "1"))
    assert failures(server, "fashion_mnist_image") == before
