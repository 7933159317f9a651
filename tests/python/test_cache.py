"""Triton's response cache with the real clients: a model with `response_cache { enable: true }`
on a server started with `--cache-config local,size=BYTES` answers a repeated request from the
cache (byte-identical outputs), statistics count cache_hit / cache_miss as Triton reports them,
the nv_cache_* metrics count them, perf_analyzer sees the hits, and /predict of a repeated
photo through a cached ensemble hits too."""
import json
import subprocess
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient

from conftest import Server, copy_repo
from test_image_preprocess import png_gray


def enable_cache(repo, model):
    cfg = repo / model / "config.pbtxt"
    cfg.write_text(cfg.read_text() + "\nresponse_cache { enable: true }\n")


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    base = tmp_path_factory.mktemp("cache")
    repo = copy_repo(base)
    enable_cache(repo, "simple")
    enable_cache(repo, "fashion_mnist_image")
    s = Server(repo, "--cache-config", f"local,size={1 << 20}")
    yield s
    s.stop()


def inputs(value):
    out = []
    for n in ("INPUT0", "INPUT1"):
        i = httpclient.InferInput(n, [1, 16], "INT32")
        i.set_data_from_numpy(np.full((1, 16), value, dtype=np.int32), binary_data=True)
        out.append(i)
    return out


def stats(s, model):
    with urllib.request.urlopen(f"http://{s.http}/v2/models/{model}/stats", timeout=10) as r:
        return json.loads(r.read())["model_stats"][0]


def metric(s, name, model):
    with urllib.request.urlopen(s.metrics, timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + "{") and f'model="{model}"' in line:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_repeated_requests_hit_and_are_counted_as_triton_does(cached):
    c = httpclient.InferenceServerClient(cached.http)
    full_before = stats(cached, "simple")
    before = full_before["inference_stats"]
    first = c.infer("simple", inputs(3))
    second = c.infer("simple", inputs(3))
    other = c.infer("simple", inputs(4))
    for name in ("OUTPUT0", "OUTPUT1"):
        assert first.as_numpy(name).tobytes() == second.as_numpy(name).tobytes()
    assert (other.as_numpy("OUTPUT0") == 8).all() and (second.as_numpy("OUTPUT0") == 6).all()
    after = stats(cached, "simple")
    inf = after["inference_stats"]
    assert inf["cache_hit"]["count"] - before["cache_hit"]["count"] == 1
    assert inf["cache_miss"]["count"] - before["cache_miss"]["count"] == 2
    assert inf["cache_hit"]["ns"] > 0 and inf["success"]["count"] - before["success"]["count"] == 3
    # The hit did not run the model.
    assert after["inference_count"] - full_before["inference_count"] == 2
    assert metric(cached, "nv_cache_num_hits_per_model", "simple") >= 1
    assert metric(cached, "nv_cache_num_misses_per_model", "simple") >= 2
    # Models without response_cache in their config are not cached.
    assert stats(cached, "iris")["inference_stats"]["cache_miss"]["count"] == 0


def test_a_repeated_photo_hits_the_cached_ensemble(cached):
    png = png_gray(np.full((28, 28), 33, dtype=np.uint8))
    answers = []
    for _ in range(2):
        req = urllib.request.Request(f"http://{cached.http}/predict?model=fashion_mnist_image", data=png, method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            answers.append(json.loads(r.read()))
    assert answers[0]["probabilities"] == answers[1]["probabilities"]
    inf = stats(cached, "fashion_mnist_image")["inference_stats"]
    assert inf["cache_hit"]["count"] >= 1


def test_perf_analyzer_reports_cache_hits(cached):
    p = subprocess.run(["perf_analyzer", "-m", "simple", "-x", "1", "-u", cached.http, "--concurrency-range", "2:2",
                        "--measurement-interval", "1000", "--stability-percentage", "999", "--max-trials", "3"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    # perf_analyzer sends the same input every time: after the first, all hits.
    assert "Cache hit count" in p.stdout, p.stdout
    hits = int(next(l for l in p.stdout.splitlines() if "Cache hit count" in l).split(":")[1])
    assert hits > 0
