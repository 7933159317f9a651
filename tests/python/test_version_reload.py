"""New versions under load: while perf_analyzer (HTTP and gRPC, concurrency 8 each) keeps a
model busy, the model gets 20 new versions in poll mode and 20 explicit reloads in explicit
mode. No request fails, and after each change the answers are the new version's: version N
multiplies its input by N."""
import json
import subprocess
import threading
import time
import urllib.request

import numpy as np
import tritonclient.http as httpclient

import tiny_onnx
from test_perf_analyzer import perf_analyzer_env

MODEL = "versioned"
CHANGES = 20
# perf_analyzer's message when no loaded version's statistics rose over a whole window.
BOOKKEEPING = "failed to find the requested model version"


def add_version(repo, v):
    d = repo / MODEL / str(v)
    d.mkdir(parents=True)
    # Written beside and renamed in, as a deploy tool does: a poll never sees half a file.
    tmp = d / "model.onnx.tmp"
    tmp.write_bytes(tiny_onnx.scaled([float(v)] * 4))
    tmp.rename(d / "model.onnx")


def make_repo(tmp_path):
    # Two versions stay loaded, the newest serving: perf_analyzer (without -x) reads the
    # statistics of the version whose counts rose during each window, and with one version a
    # swap just before a window's end can leave no such version in the server's statistics
    # (its "failed to find the requested model version", a client bookkeeping error and not a
    # failed request; Triton answers the same way).
    repo = tmp_path / "repo"
    (repo / MODEL).mkdir(parents=True)
    (repo / MODEL / "config.pbtxt").write_text(f"""
name: "{MODEL}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "X" data_type: TYPE_FP32 dims: [4] }} ]
output [ {{ name: "Y" data_type: TYPE_FP32 dims: [4] }} ]
dynamic_batching {{ }}
version_policy: {{ latest {{ num_versions: 2 }} }}
""")
    add_version(repo, 1)
    return repo


class Load:
    """perf_analyzer over HTTP and gRPC at concurrency 8, run again and again until stopped;
    every run must finish cleanly."""

    def __init__(self, server):
        self.server, self.stop_flag, self.runs, self.problems = server, threading.Event(), [], []
        self.bookkeeping = 0
        self.threads = [threading.Thread(target=self.loop, args=(p,)) for p in ("http", "grpc")]

    def loop(self, protocol):
        exe, env = perf_analyzer_env()
        url = self.server.http if protocol == "http" else self.server.grpc
        while not self.stop_flag.is_set():
            cmd = [exe, "-m", MODEL, "-u", url, "-i", protocol, "--concurrency-range", "8",
                   "--measurement-mode", "time_windows", "--measurement-interval", "500",
                   "--stability-percentage", "999", "--max-trials", "3"]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
            out = p.stdout + p.stderr
            self.runs.append(protocol)
            if BOOKKEEPING in out:
                # Two swaps inside one window can still leave perf_analyzer without a version
                # whose counts rose at both ends (see make_repo); its requests did not fail,
                # which the front-ends' status counts check.
                self.bookkeeping += 1
                continue
            if p.returncode != 0 or "error" in out.lower():
                self.problems.append(f"{protocol}: exit {p.returncode}\n{out[-2000:]}")

    def __enter__(self):
        for t in self.threads:
            t.start()
        # Both clients are sending before the first change.
        deadline = time.time() + 60
        while time.time() < deadline and not self.busy():
            time.sleep(0.1)
        return self

    def busy(self):
        with urllib.request.urlopen(f"http://{self.server.http}/v2/models/{MODEL}/stats",
                                    timeout=10) as r:
            stats = json.loads(r.read())["model_stats"]
        return sum(s["inference_stats"]["success"]["count"] for s in stats) > 100

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join()


def answer(client):
    x = httpclient.InferInput("X", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    r = client.infer(MODEL, [x])
    return r.get_response()["model_version"], float(r.as_numpy("Y")[0][0])


def wait_for_version(client, v, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        version, y = answer(client)
        if version == str(v):
            # Once the new version answers, the name never goes back to an older one.
            for _ in range(20):
                assert answer(client) == (str(v), float(v))
            return
        assert int(version) < v, f"version {version} answered while waiting for {v}"
        time.sleep(0.05)
    raise AssertionError(f"version {v} did not take over within {timeout} s")


def front_end_answers(server):
    """Requests for the model the HTTP and gRPC front-ends answered, by status code."""
    text = urllib.request.urlopen(server.metrics, timeout=10).read().decode()
    codes = {}
    for line in text.splitlines():
        if line.startswith("infera_api_requests_total{") and f'model="{MODEL}"' in line:
            code = line.split('code="')[1].split('"')[0]
            codes[code] = codes.get(code, 0) + float(line.split()[-1])
    return codes


def assert_nothing_failed(server, load):
    assert load.runs and not load.problems, load.problems[:2]
    # Rare, not the rule: most windows must be measured cleanly.
    assert load.bookkeeping * 4 <= len(load.runs), (load.bookkeeping, len(load.runs))
    codes = front_end_answers(server)
    assert codes.get("200", 0) > 1000 and codes.get("OK", 0) > 1000, codes
    assert set(codes) <= {"200", "OK"}, codes


def test_twenty_polled_versions_under_load_fail_nothing(make_server, tmp_path):
    repo = make_repo(tmp_path)
    s = make_server(repo, "--model-control-mode", "poll", "--repository-poll-secs", "1")
    client = httpclient.InferenceServerClient(s.http)
    with Load(s) as load:
        for v in range(2, 2 + CHANGES):
            add_version(repo, v)
            wait_for_version(client, v)
    assert_nothing_failed(s, load)


def test_twenty_explicit_reloads_under_load_fail_nothing(make_server, tmp_path):
    repo = make_repo(tmp_path)
    s = make_server(repo, "--model-control-mode", "explicit", "--load-model", MODEL)
    client = httpclient.InferenceServerClient(s.http)
    with Load(s) as load:
        for v in range(2, 2 + CHANGES):
            add_version(repo, v)
            client.load_model(MODEL)
            # An explicit load returns once the new version is ready and serving.
            assert answer(client) == (str(v), float(v))
    assert_nothing_failed(s, load)
