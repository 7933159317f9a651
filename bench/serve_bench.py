"""Whole-server benchmark: perf_analyzer (HTTP and gRPC, concurrency 1..16) against infera,
beside the in-process ONNX Runtime floor measured in the same run, plus cold start and RSS.

    bench/serve_bench.sh            # builds, installs the pinned tools, runs, prints Markdown

Ratios, not absolute numbers, are what to compare across runs: the machine is shared and noisy.
"""
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "tests" / "fixtures" / "model_repository"
BIN = Path(os.environ["INFERA_BIN"])
FLOOR = Path(os.environ["INFERA_FLOOR_BIN"])
WINDOW_MS = os.environ.get("BENCH_WINDOW_MS", "2000")
LEVELS = [1, 2, 4, 8, 16]


def port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(repo):
    ports = [port(), port(), port()]
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(BIN), "serve", "--model-repository", str(repo), "--http-port", str(ports[0]),
                             "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16},
                                  {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}]}).encode()
    while True:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{ports[0]}/v2/models/simple/infer", data=body)
            with urllib.request.urlopen(req, timeout=1) as r:
                if r.status == 200:
                    return proc, ports, time.perf_counter() - t0
        except OSError:
            time.sleep(0.002)


def rss_mb(pid, key="VmRSS"):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024


def perf(url, proto, model, batch=1):
    with tempfile.NamedTemporaryFile(suffix=".csv") as f:
        cmd = ["perf_analyzer", "-m", model, "-u", url, "-i", proto, "-b", str(batch),
               "--concurrency-range", f"1:16", "--measurement-interval", WINDOW_MS,
               "--stability-percentage", "999", "--max-trials", "3", "-f", f.name]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"perf_analyzer failed: {p.stdout[-2000:]} {p.stderr[-2000:]}")
        rows = {int(r["Concurrency"]): r for r in csv.DictReader(open(f.name))}
    return {c: {"tput": float(rows[c]["Inferences/Second"]), "p50": int(rows[c]["p50 latency"]),
                "p99": int(rows[c]["p99 latency"])} for c in LEVELS}


def floor(model, threads):
    out = subprocess.run([str(FLOOR), str(REPO / model / "1" / "model.onnx"), "4", str(threads)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main():
    proc, ports, cold = start(REPO)
    print(f"cold start (spawn -> first successful inference): {cold * 1000:.0f} ms\n")
    results = {}
    try:
        for model in ("fashion_mnist", "iris"):
            fl = max((floor(model, t) for t in (1, 2)), key=lambda f: f["throughput_batch64"])
            fl1 = floor(model, 1)
            for proto, p in (("http", ports[0]), ("grpc", ports[1])):
                results[(model, proto)] = (perf(f"127.0.0.1:{p}", proto, model), fl, fl1)
        peak_rss = rss_mb(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait()
    print("| model | protocol | c=1 p50 µs | in-process p50 µs (1 thread) | overhead µs | c=16 infer/s | in-process batch-64 infer/s | c=16 / floor |")
    print("|---|---|---|---|---|---|---|---|")
    for (model, proto), (r, fl, fl1) in results.items():
        over = r[1]["p50"] - fl1["p50_batch1_us"]
        ratio = r[16]["tput"] / fl["throughput_batch64"]
        print(f"| {model} | {proto} | {r[1]['p50']} | {fl1['p50_batch1_us']:.0f} | {over:.0f} | {r[16]['tput']:.0f} | "
              f"{fl['throughput_batch64']:.0f} | {ratio:.2f} |")
    print("\nthroughput (infer/s) by concurrency:\n")
    print("| model | protocol | " + " | ".join(f"c={c}" for c in LEVELS) + " | p99 µs at c=16 |")
    print("|---|---|" + "---|" * (len(LEVELS) + 1))
    for (model, proto), (r, _, _) in results.items():
        print(f"| {model} | {proto} | " + " | ".join(f"{r[c]['tput']:.0f}" for c in LEVELS) + f" | {r[16]['p99']} |")
    print(f"\npeak RSS under load: {peak_rss:.0f} MB")


if __name__ == "__main__":
    main()
