"""Whole-server benchmark: perf_analyzer (HTTP and gRPC, concurrency 1..16) against infera,
beside the in-process ONNX Runtime floor measured in the same run, plus cold start and RSS.

    bench/serve_bench.sh            # builds, installs the pinned tools, runs, prints Markdown
    BENCH_BASELINE_REV=<commit> bench/serve_bench.sh   # also an older build, interleaved

CPU per request is the server's CPU time (from /proc) over the requests the server counted
(its /v2/models/<m>/stats), so perf_analyzer's warm-up and retried trials count on both sides.

Ratios, not absolute numbers, are what to compare across runs: the machine is shared and noisy.
"""
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "tests" / "fixtures" / "model_repository"
BIN = Path(os.environ["INFERA_BIN"])
BASELINE = os.environ.get("BENCH_BASELINE_BIN")
FLOOR = Path(os.environ["INFERA_FLOOR_BIN"])
WINDOW_MS = os.environ.get("BENCH_WINDOW_MS", "2000")
LEVELS = [1, 2, 4, 8, 16]
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))


def port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(repo, binary=BIN):
    ports = [port(), port(), port()]
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(binary), "serve", "--model-repository", str(repo), "--http-port", str(ports[0]),
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


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def served(http_port, model):
    """Successful inferences the server counted for `model`, all versions."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/{model}/stats", timeout=5) as r:
        stats = json.load(r)
    return sum(m["inference_stats"]["success"]["count"] for m in stats["model_stats"])


def perf(url, proto, model, server_pid, http_port, batch=1, levels=LEVELS):
    out = {}
    for c in levels:
        import resource
        n0 = served(http_port, model)
        t0, s0 = time.perf_counter(), cpu_seconds(server_pid)
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with tempfile.NamedTemporaryFile(suffix=".csv") as f:
            cmd = ["perf_analyzer", "-m", model, "-u", url, "-i", proto, "-b", str(batch),
                   "--concurrency-range", f"{c}:{c}", "--measurement-interval", WINDOW_MS,
                   "--stability-percentage", "999", "--max-trials", "3", "-f", f.name]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(f"perf_analyzer failed: {p.stdout[-2000:]} {p.stderr[-2000:]}")
            r = next(csv.DictReader(open(f.name)))
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(server_pid) - s0
        requests = max(served(http_port, model) - n0, 1)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        out[c] = {"tput": float(r["Inferences/Second"]), "p50": int(r["p50 latency"]), "p99": int(r["p99 latency"]),
                  "server_cores": cpu / wall, "cpu_us": cpu / requests * 1e6,
                  "client_cores": (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / wall}
    return out


def floor(model, threads):
    out = subprocess.run([str(FLOOR), str(REPO / model / "1" / "model.onnx"), "4", str(threads)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main():
    proc, ports, cold = start(REPO)
    print(f"cold start (spawn -> first successful inference): {cold * 1000:.0f} ms\n")
    base = start(REPO, BASELINE) if BASELINE else None
    results, baseline, repeats = {}, {}, {}
    try:
        for model in ("fashion_mnist", "iris"):
            fl = max((floor(model, t) for t in (1, 2)), key=lambda f: f["throughput_batch64"])
            fl1 = floor(model, 1)
            for proto, i in (("http", 0), ("grpc", 1)):
                results[(model, proto)] = (perf(f"127.0.0.1:{ports[i]}", proto, model, proc.pid, ports[0]), fl, fl1)
                if base:
                    # Right after this build's run, so both see the same machine.
                    bproc, bports, _ = base
                    baseline[(model, proto)] = perf(f"127.0.0.1:{bports[i]}", proto, model, bproc.pid,
                                                    bports[0], levels=(1, 16))
        if base:
            # CPU per request at c=1 is what the inline runs change, and one window of it is
            # noisy on a shared machine: this and the baseline alternate REPEAT more times.
            bproc, bports, _ = base
            for _ in range(REPEAT):
                for model in ("fashion_mnist", "iris"):
                    for proto, i in (("http", 0), ("grpc", 1)):
                        key = (model, proto)
                        mine = perf(f"127.0.0.1:{ports[i]}", proto, model, proc.pid, ports[0], levels=(1,))
                        theirs = perf(f"127.0.0.1:{bports[i]}", proto, model, bproc.pid, bports[0], levels=(1,))
                        repeats.setdefault(key, ([results[key][0][1]["cpu_us"]], [baseline[key][1]["cpu_us"]]))
                        repeats[key][0].append(mine[1]["cpu_us"])
                        repeats[key][1].append(theirs[1]["cpu_us"])
        peak_rss = rss_mb(proc.pid, "VmHWM")
        rss_now = rss_mb(proc.pid)
    finally:
        for p in [proc] + ([base[0]] if base else []):
            p.terminate()
            p.wait()
    print("| model | protocol | c=1 p50 µs | in-process p50 µs | overhead µs | c=16 infer/s | in-process batch-64 infer/s (best / 1 thread) | c=16 / best | c=16 / 1-thread | CPU cores at c=16 (server / perf_analyzer) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (model, proto), (r, fl, fl1) in results.items():
        over = r[1]["p50"] - fl1["p50_batch1_us"]
        print(f"| {model} | {proto} | {r[1]['p50']} | {fl1['p50_batch1_us']:.0f} | {over:.0f} | {r[16]['tput']:.0f} | "
              f"{fl['throughput_batch64']:.0f} / {fl1['throughput_batch64']:.0f} | {r[16]['tput'] / fl['throughput_batch64']:.2f} | "
              f"{r[16]['tput'] / fl1['throughput_batch64']:.2f} | {r[16]['server_cores']:.2f} / {r[16]['client_cores']:.2f} |")
    print("\nthroughput (infer/s) by concurrency:\n")
    print("| model | protocol | " + " | ".join(f"c={c}" for c in LEVELS) + " | p99 µs at c=16 |")
    print("|---|---|" + "---|" * (len(LEVELS) + 1))
    for (model, proto), (r, _, _) in results.items():
        print(f"| {model} | {proto} | " + " | ".join(f"{r[c]['tput']:.0f}" for c in LEVELS) + f" | {r[16]['p99']} |")
    print("\nserver CPU per request (server CPU seconds from /proc / requests the server counted; "
          "the in-process batch-1 cost is the floor's p50 on 1 thread):\n")
    print("| model | protocol | c=1 CPU µs/request | in-process batch-1 µs | ratio | c=16 CPU µs/request |")
    print("|---|---|---|---|---|---|")
    for (model, proto), (r, _, fl1) in results.items():
        print(f"| {model} | {proto} | {r[1]['cpu_us']:.0f} | {fl1['p50_batch1_us']:.0f} | "
              f"{r[1]['cpu_us'] / max(fl1['p50_batch1_us'], 1e-9):.1f}x | {r[16]['cpu_us']:.0f} |")
    if baseline:
        print(f"\nthis build against the baseline ({BASELINE}), each measured right after the other:\n")
        print("| model | protocol | c=1 CPU µs/request (this / baseline) | c=16 infer/s (this / baseline) | c=16 ratio |")
        print("|---|---|---|---|---|")
        for key, b in baseline.items():
            r = results[key][0]
            print(f"| {key[0]} | {key[1]} | {r[1]['cpu_us']:.0f} / {b[1]['cpu_us']:.0f} | "
                  f"{r[16]['tput']:.0f} / {b[16]['tput']:.0f} | {r[16]['tput'] / b[16]['tput']:.2f}x |")
        if repeats:
            print(f"\nc=1 CPU µs/request over {REPEAT + 1} alternating windows each (median; this / baseline):\n")
            print("| model | protocol | this | baseline | this / baseline | all windows, this | all windows, baseline |")
            print("|---|---|---|---|---|---|---|")
            for key, (mine, theirs) in repeats.items():
                m, t = statistics.median(mine), statistics.median(theirs)
                print(f"| {key[0]} | {key[1]} | {m:.0f} | {t:.0f} | {m / t:.2f} | "
                      f"{' '.join(f'{v:.0f}' for v in mine)} | {' '.join(f'{v:.0f}' for v in theirs)} |")
    print(f"\npeak RSS under load (VmHWM): {peak_rss:.0f} MB; RSS after load: {rss_now:.0f} MB")


if __name__ == "__main__":
    main()
