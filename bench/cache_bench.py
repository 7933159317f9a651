"""/predict latency with the response cache: the same photo again (a hit) against new photos
(misses), in the same run on one server, one request at a time. Prints a markdown table for
docs/benchmarks.md."""
import argparse
import http.client
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from conftest import Server, copy_repo  # noqa: E402
from test_image_preprocess import png_gray  # noqa: E402


def timed(conn, body):
    t = time.perf_counter()
    conn.request("POST", "/predict?model=fashion_mnist_image", body=body)
    r = conn.getresponse()
    r.read()
    assert r.status == 200, r.status
    return (time.perf_counter() - t) * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    photos = [png_gray(rng.integers(0, 256, (28, 28), dtype=np.uint8)) for _ in range(args.requests * args.rounds)]
    with tempfile.TemporaryDirectory() as tmp:
        repo = copy_repo(Path(tmp))
        cfg = repo / "fashion_mnist_image" / "config.pbtxt"
        cfg.write_text(cfg.read_text() + "\nresponse_cache { enable: true }\n")
        s = Server(repo, "--cache-config", f"local,size={256 << 20}")
        try:
            conn = http.client.HTTPConnection(s.http, timeout=30)
            hit_photo = photos[0]
            timed(conn, hit_photo)  # stored
            hits, misses = [], []
            for r in range(args.rounds):
                # Alternate in blocks so both see the same machine noise.
                hits += [timed(conn, hit_photo) for _ in range(args.requests)]
                misses += [timed(conn, p) for p in photos[r * args.requests + 1:(r + 1) * args.requests + 1]]
        finally:
            s.stop()
    q = lambda xs, p: statistics.quantiles(xs, n=100)[p - 1]  # noqa: E731
    print("| /predict, concurrency 1 | p50 µs | p95 µs | requests |")
    print("|---|---|---|---|")
    print(f"| cache miss (a new photo) | {statistics.median(misses):.0f} | {q(misses, 95):.0f} | {len(misses)} |")
    print(f"| cache hit (the same photo) | {statistics.median(hits):.0f} | {q(hits, 95):.0f} | {len(hits)} |")
    print(f"\nhit / miss p50: {statistics.median(hits) / statistics.median(misses):.2f}")


if __name__ == "__main__":
    main()
