"""Soak: is the server's memory flat under a million requests and 1,000 reloads?

1. perf_analyzer sends requests (gRPC and HTTP, the `simple` model and the CNN, concurrency 8)
   until a million have been answered; RSS is sampled every second. After the first 10%
   (warm-up: allocator pools, connection buffers) the RSS may not keep growing.
2. A model is unloaded and loaded 1,000 times (HTTP), alternating with a reload that swaps a
   new config in, while a client keeps querying it; RSS is sampled every 50 cycles.

Prints a markdown table for docs/benchmarks.md and exits non-zero if RSS grew past the slack.
"""
import argparse
import csv
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from conftest import Server, copy_repo  # noqa: E402

SLACK_MB = 16


def rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def sampler(pid, samples, stop, every=1.0):
    while not stop.is_set():
        samples.append((time.time(), rss_mb(pid)))
        stop.wait(every)


def perf(server, model, proto, count):
    url = server.grpc if proto == "grpc" else server.http
    with tempfile.NamedTemporaryFile(suffix=".csv") as f:
        cmd = ["perf_analyzer", "-m", model, "-u", url, "-i", proto, "--concurrency-range", "8:8",
               "--measurement-mode", "count_windows", "--measurement-request-count", str(count),
               "--stability-percentage", "999", "--max-trials", "1", "-f", f.name]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"perf_analyzer failed: {p.stdout[-2000:]} {p.stderr[-2000:]}")
        row = next(csv.DictReader(open(f.name)))
    return float(row["Inferences/Second"])


def requests_phase(server, total):
    samples, stop = [], threading.Event()
    t = threading.Thread(target=sampler, args=(server.proc.pid, samples, stop))
    t.start()
    start, done, rates = time.time(), 0, []
    plan = [("simple", "grpc"), ("simple", "http"), ("fashion_mnist", "grpc"), ("fashion_mnist", "http")]
    i = 0
    while done < total:
        model, proto = plan[i % len(plan)]
        n = min(50_000, total - done)
        rates.append(perf(server, model, proto, n))
        done += n
        i += 1
        print(f"  {done:>8} requests, RSS {rss_mb(server.proc.pid):.1f} MB", flush=True)
    stop.set()
    t.join()
    return samples, time.time() - start, done


def reload_phase(server, cycles):
    c = httpclient.InferenceServerClient(server.http)
    x = np.ones((1, 16), dtype=np.int32)
    stop, failures, served = threading.Event(), [], [0]

    def client():
        k = httpclient.InferenceServerClient(server.http)
        a = httpclient.InferInput("INPUT0", [1, 16], "INT32")
        a.set_data_from_numpy(x)
        b = httpclient.InferInput("INPUT1", [1, 16], "INT32")
        b.set_data_from_numpy(x)
        while not stop.is_set():
            try:
                k.infer("simple", [a, b])
                served[0] += 1
            except Exception as e:  # noqa: BLE001
                failures.append(str(e))

    t = threading.Thread(target=client)
    t.start()
    samples, start = [], time.time()
    for i in range(cycles):
        c.unload_model("iris")
        c.load_model("iris")
        # A reload that swaps a new instance of `simple` in under the client's requests.
        c.load_model("simple")
        if i % 50 == 0 or i == cycles - 1:
            samples.append((i, rss_mb(server.proc.pid)))
            print(f"  cycle {i:>5}, RSS {samples[-1][1]:.1f} MB", flush=True)
    stop.set()
    t.join()
    return samples, time.time() - start, failures, served[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--cycles", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(copy_repo(Path(tmp)))
        try:
            print(f"phase 1: {args.requests} requests")
            samples, secs, done = requests_phase(server, args.requests)
            warm = samples[max(1, len(samples) // 10)][1]
            peak = max(r for _, r in samples)
            end = samples[-1][1]
            print(f"phase 2: {args.cycles} unload/load cycles")
            cyc, csecs, failures, served = reload_phase(server, args.cycles)
            c_warm, c_end = cyc[min(2, len(cyc) - 1)][1], cyc[-1][1]
            c_peak = max(r for _, r in cyc)
        finally:
            server.stop()
    print()
    print("| phase | work | seconds | RSS after warm-up MB | RSS peak MB | RSS at end MB | growth after warm-up MB |")
    print("|---|---|---|---|---|---|---|")
    print(f"| requests | {done:,} (perf_analyzer, c=8, gRPC+HTTP, simple+CNN) | {secs:.0f} | {warm:.1f} | {peak:.1f} | {end:.1f} | {end - warm:+.1f} |")
    print(f"| reloads | {args.cycles:,} × (unload+load iris, reload simple) with a client on simple ({served:,} answered, {len(failures)} failed) | {csecs:.0f} | {c_warm:.1f} | {c_peak:.1f} | {c_end:.1f} | {c_end - c_warm:+.1f} |")
    bad = []
    if end - warm > SLACK_MB:
        bad.append(f"RSS grew {end - warm:.1f} MB over the requests")
    if c_end - c_warm > SLACK_MB:
        bad.append(f"RSS grew {c_end - c_warm:.1f} MB over the reloads")
    if failures:
        bad.append(f"{len(failures)} requests failed during reloads: {failures[:3]}")
    if bad:
        sys.exit("; ".join(bad))


if __name__ == "__main__":
    main()
