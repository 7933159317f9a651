"""Calibration of the HTTP CPU per request: infera answering an iris infer call against the
leanest axum server answering the same call with a constant (crates/infera-http/examples/
lean_http.rs: same runtime and stack, no parsing, no model, no middleware). Both are driven by
`hey -c 1` with the same JSON body, alternating, and charged their CPU time from /proc.

    bench/lean_bench.sh
    BENCH_BASELINE_REV=<commit> bench/lean_bench.sh   # also an older build, interleaved

What the lean server spends per request is what the kernel, hyper and tokio cost on this
machine: a floor no HTTP server built on them can go below.
"""
import json
import os
import re
import socket
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "tests" / "fixtures" / "model_repository"
BIN = os.environ["INFERA_BIN"]
LEAN = os.environ["INFERA_LEAN_BIN"]
BASELINE = os.environ.get("BENCH_BASELINE_BIN")
SECONDS = os.environ.get("BENCH_SECONDS", "5")
ROUNDS = int(os.environ.get("BENCH_REPEAT", "3"))
BODY = json.dumps({"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32",
                               "data": [5.1, 3.5, 1.4, 0.2]}]})


def port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(url):
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            req = urllib.request.Request(url, data=BODY.encode(), headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"{url} never answered")


def load(pid, url):
    """Server CPU µs per request over one hey run at concurrency 1."""
    c0 = cpu_seconds(pid)
    out = subprocess.run(["hey", "-z", f"{SECONDS}s", "-c", "1", "-m", "POST", "-T", "application/json",
                          "-d", BODY, url], capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - c0
    ok = sum(int(n) for n in re.findall(r"\[200\]\s+(\d+) responses", out))
    bad = sum(int(n) for code, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out) if code != "200")
    if bad or not ok:
        raise SystemExit(f"{url}: {bad} failed requests\n{out}")
    return cpu / ok * 1e6, ok / float(SECONDS)


def main():
    ip, lp, mp, gp = port(), port(), port(), port()
    infera = subprocess.Popen([BIN, "serve", "--model-repository", str(REPO), "--http-port", str(ip),
                               "--grpc-port", str(gp), "--metrics-port", str(mp)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lean = subprocess.Popen([LEAN, str(lp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    urls = {"infera": f"http://127.0.0.1:{ip}/v2/models/iris/infer",
            "lean axum": f"http://127.0.0.1:{lp}/v2/models/iris/infer"}
    procs = {"infera": infera, "lean axum": lean}
    if BASELINE:
        bp = [port(), port(), port()]
        procs["baseline"] = subprocess.Popen(
            [BASELINE, "serve", "--model-repository", str(REPO), "--http-port", str(bp[0]),
             "--grpc-port", str(bp[1]), "--metrics-port", str(bp[2])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        urls["baseline"] = f"http://127.0.0.1:{bp[0]}/v2/models/iris/infer"
    try:
        for u in urls.values():
            wait_ready(u)
        runs = {name: [] for name in urls}
        for _ in range(ROUNDS):
            for name, url in urls.items():
                runs[name].append(load(procs[name].pid, url))
    finally:
        for p in procs.values():
            p.terminate()
            p.wait()
    print(f"HTTP/1.1 POST of one iris row, hey -c 1 -z {SECONDS}s, {ROUNDS} alternating rounds (median):\n")
    print("| server | CPU µs/request | req/s | all rounds, CPU µs/request |")
    print("|---|---|---|---|")
    med = {}
    for name, r in runs.items():
        med[name] = statistics.median(c for c, _ in r)
        print(f"| {name} | {med[name]:.0f} | {statistics.median(t for _, t in r):.0f} | "
              f"{' '.join(f'{c:.0f}' for c, _ in r)} |")
    print(f"\ninfera / lean: {med['infera'] / med['lean axum']:.2f}x; infera's own share: "
          f"{med['infera'] - med['lean axum']:.0f} µs per request")
    if BASELINE:
        print(f"infera / baseline ({BASELINE}): {med['infera'] / med['baseline']:.2f}x")


if __name__ == "__main__":
    main()
