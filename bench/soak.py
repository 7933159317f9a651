"""Soak: is the server's memory flat under a million requests and 1,000 reloads?

1. perf_analyzer sends requests (gRPC and HTTP, the `simple` model and the CNN, concurrency 8)
   until a million have been answered; RSS is sampled every second. Once every model and
   protocol has run (warm-up: allocator pools, runtime arenas, connection buffers) the RSS may
   not keep growing.
2. 1,000 cycles of: the CNN unloaded (with the image ensemble that uses it) and loaded again,
   the ensemble loaded, and iris reloaded in place while a client keeps querying it (not one
   of its requests may fail); RSS is sampled every 50 cycles.

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


def threads(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def sampler(pid, samples, stop, every=1.0):
    while not stop.is_set() and Path(f"/proc/{pid}").exists():
        samples.append((time.time(), rss_mb(pid)))
        stop.wait(every)


def perf(server, model, proto):
    """One perf_analyzer run: three 5 s windows at concurrency 8."""
    url = server.grpc if proto == "grpc" else server.http
    with tempfile.NamedTemporaryFile(suffix=".csv") as f:
        cmd = ["perf_analyzer", "-m", model, "-u", url, "-i", proto, "--concurrency-range", "8:8",
               "--measurement-interval", "5000", "--stability-percentage", "999", "--max-trials", "3",
               "-f", f.name]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"perf_analyzer failed: {p.stdout[-2000:]} {p.stderr[-2000:]}")
        row = next(csv.DictReader(open(f.name)))
    return float(row["Inferences/Second"])


def answered(server):
    """Requests the server has answered, from its own statistics."""
    stats = httpclient.InferenceServerClient(server.http).get_inference_statistics()
    return sum(int(m["inference_stats"]["success"]["count"]) for m in stats["model_stats"])


def requests_phase(server, total):
    samples, stop = [], threading.Event()
    t = threading.Thread(target=sampler, args=(server.proc.pid, samples, stop))
    t.start()
    start, rates = time.time(), []
    plan = [("simple", "grpc"), ("simple", "http"), ("fashion_mnist", "grpc"), ("fashion_mnist", "http")]
    i = 0
    after_runs = []
    while (done := answered(server)) < total:
        model, proto = plan[i % len(plan)]
        rates.append(perf(server, model, proto))
        i += 1
        after_runs.append(rss_mb(server.proc.pid))
        print(f"  {answered(server):>8} requests answered, RSS {after_runs[-1]:.1f} MB", flush=True)
    stop.set()
    t.join()
    # Warm once every model and protocol has run (their buffers and arenas exist).
    warm = after_runs[min(len(plan), len(after_runs)) - 1]
    return samples, time.time() - start, answered(server), warm


def reload_phase(server, cycles):
    """Per cycle: the CNN unloaded (with the image ensemble that uses it) and loaded again,
    the ensemble loaded again, and iris reloaded in place while a client keeps querying it."""
    c = httpclient.InferenceServerClient(server.http)
    x = np.ones((1, 4), dtype=np.float32)
    stop, failures, served = threading.Event(), [], [0]

    def client():
        k = httpclient.InferenceServerClient(server.http)
        a = httpclient.InferInput("float_input", [1, 4], "FP32")
        a.set_data_from_numpy(x)
        while not stop.is_set():
            try:
                k.infer("iris", [a])
                served[0] += 1
            except Exception as e:  # noqa: BLE001
                failures.append(str(e))

    t = threading.Thread(target=client)
    t.start()
    samples, start = [], time.time()
    for i in range(cycles):
        c.unload_model("fashion_mnist", unload_dependents=True)
        c.load_model("fashion_mnist")
        c.load_model("fashion_mnist_image")
        c.load_model("iris")
        if i % 50 == 0 or i == cycles - 1:
            samples.append((i, rss_mb(server.proc.pid)))
            print(f"  cycle {i:>5}, RSS {samples[-1][1]:.1f} MB, {threads(server.proc.pid)} threads", flush=True)
    stop.set()
    t.join()
    return samples, time.time() - start, failures, served[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1_000_000, help="0 skips the request phase")
    ap.add_argument("--cycles", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(copy_repo(Path(tmp)))
        try:
            if args.requests:
                print(f"phase 1: {args.requests} requests")
                samples, secs, done, warm = requests_phase(server, args.requests)
                peak = max(r for _, r in samples)
                end = samples[-1][1]
            print(f"phase 2: {args.cycles} unload/load cycles")
            cyc, csecs, failures, served = reload_phase(server, args.cycles)
            # Warm after a tenth of the cycles: the allocator's pools have grown by then.
            c_warm = next((r for i, r in cyc if i >= args.cycles // 10), cyc[-1][1])
            c_end = cyc[-1][1]
            c_peak = max(r for _, r in cyc)
        finally:
            server.stop()
    print()
    print("| phase | work | seconds | RSS after warm-up MB | RSS peak MB | RSS at end MB | growth after warm-up MB |")
    print("|---|---|---|---|---|---|---|")
    if args.requests:
        print(f"| requests | {done:,} answered (perf_analyzer, c=8, gRPC+HTTP, simple+CNN) | {secs:.0f} | {warm:.1f} | {peak:.1f} | {end:.1f} | {end - warm:+.1f} |")
    print(f"| reloads | {args.cycles:,} × (unload the CNN with its ensemble, load both, reload iris in place) with a client on iris ({served:,} answered, {len(failures)} failed) | {csecs:.0f} | {c_warm:.1f} | {c_peak:.1f} | {c_end:.1f} | {c_end - c_warm:+.1f} |")
    bad = []
    if args.requests and end - warm > SLACK_MB:
        bad.append(f"RSS grew {end - warm:.1f} MB over the requests")
    if c_end - c_warm > SLACK_MB:
        bad.append(f"RSS grew {c_end - c_warm:.1f} MB over the reloads")
    if failures:
        bad.append(f"{len(failures)} requests failed during reloads: {failures[:3]}")
    if bad:
        sys.exit("; ".join(bad))


if __name__ == "__main__":
    main()
