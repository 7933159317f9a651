"""Reload time of the example models: `POST /v2/repository/models/{m}/load` on a loaded model,
which builds the new version beside the serving one, warms it and swaps it in. Prints a
markdown table for docs/benchmarks.md, with the server's own cold start (every model loaded
and every port serving, `infera_startup_duration_seconds`) from the same run as the baseline."""
import argparse
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from conftest import Server, copy_repo  # noqa: E402


def reload_ms(s, model):
    req = urllib.request.Request(f"http://{s.http}/v2/repository/models/{model}/load", data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.status == 200
    return (time.perf_counter() - t) * 1e3


WARMUP = """
model_warmup [ {
  name: "zeros" batch_size: 64 count: 1
  inputs { key: "input" value: { data_type: TYPE_FP32 dims: [ 1, 28, 28 ] zero_data: true } }
} ]
"""


def startup_seconds(s):
    text = urllib.request.urlopen(s.metrics, timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith("infera_startup_duration_seconds "):
            return float(line.split()[1])
    raise SystemExit("the server does not export infera_startup_duration_seconds")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reloads", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = copy_repo(Path(tmp))
        # The CNN as it would be deployed: a batch-64 warm-up on each instance before it serves.
        cfg = repo / "fashion_mnist" / "config.pbtxt"
        cfg.write_text(cfg.read_text() + WARMUP)
        s = Server(repo)  # explicit mode, every model loaded
        try:
            startup_ms = startup_seconds(s) * 1e3
            print(f"server cold start (all models, every port): {startup_ms:.1f} ms")
            print("| model | reloads | median ms | min ms | max ms | median / cold start |")
            print("|---|---|---|---|---|---|")
            for model in ("fashion_mnist", "fashion_mnist_image", "iris", "simple"):
                times = [reload_ms(s, model) for _ in range(args.reloads)]
                print(f"| {model} | {len(times)} | {statistics.median(times):.1f} | {min(times):.1f} | {max(times):.1f} | {statistics.median(times) / startup_ms:.2f} |")
        finally:
            s.stop()


if __name__ == "__main__":
    main()
