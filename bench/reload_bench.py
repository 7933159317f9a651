"""Reload time of the example models: `POST /v2/repository/models/{m}/load` on a loaded model,
which builds the new version beside the serving one, warms it and swaps it in. Prints a
markdown table for docs/benchmarks.md."""
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
    req = urllib.request.Request(f"http://{s.http}/v2/repository/models/{model}/load", data=b"{}", method="POST")
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.status == 200
    return (time.perf_counter() - t) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reloads", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        s = Server(copy_repo(Path(tmp)))  # explicit mode, every model loaded
        try:
            print("| model | reloads | median ms | min ms | max ms |")
            print("|---|---|---|---|---|")
            for model in ("fashion_mnist", "fashion_mnist_image", "iris", "simple"):
                times = [reload_ms(s, model) for _ in range(args.reloads)]
                print(f"| {model} | {len(times)} | {statistics.median(times):.1f} | {min(times):.1f} | {max(times):.1f} |")
        finally:
            s.stop()


if __name__ == "__main__":
    main()
