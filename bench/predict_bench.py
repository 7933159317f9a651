"""/predict benchmark: a 28x28 Fashion-MNIST PNG posted at concurrency 1..16 to infera and to
the FastAPI + onnxruntime reference (bench/fastapi_reference.py), same machine, same run, same
load generator (hey), levels interleaved so both see the same noise.

    bench/predict_bench.sh          # installs hey and the pinned packages, builds, runs, prints Markdown
    BENCH_BASELINE_REV=<git rev> bench/predict_bench.sh   # also an infera built from that revision,
                                                          # same run: before/after of a change
"""
import gzip
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "examples" / "model_repository"
BIN = os.environ["INFERA_BIN"]
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
WORKERS = os.environ.get("BENCH_WORKERS", "2")
BASELINE_BIN = os.environ.get("BENCH_BASELINE_BIN")
LEVELS = [1, 2, 4, 8, 16]


def port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def wait_ready(url, body, proc):
    for _ in range(600):
        if proc.poll() is not None:
            sys.exit(f"{url}: the server exited")
        try:
            return post(url, body)
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{url}: not ready after 30 s")


def cpu_seconds(pids):
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
        except FileNotFoundError:
            pass
    return total


def tree(pid):
    """The process and its children (uvicorn's workers)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [pid] + [int(p) for p in out.split()]


def hey(url, c, png_path):
    out = subprocess.run(["hey", "-z", f"{SECONDS}s", "-c", str(c), "-m", "POST", "-T", "image/png",
                          "-D", png_path, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = float(re.search(r"50%+ in ([\d.]+) secs", out).group(1)) * 1e3
    p95 = float(re.search(r"95%+ in ([\d.]+) secs", out).group(1)) * 1e3
    codes = dict((int(k), int(v)) for k, v in re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    errors = sum(v for k, v in codes.items() if k != 200) + len(re.findall(r"Error distribution", out))
    return {"rps": rps, "p50": p50, "p95": p95, "errors": errors}


def main():
    with gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz") as f:
        pixels = np.frombuffer(f.read()[16:16 + 784], dtype=np.uint8).reshape(28, 28)
    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, "PNG")
    png = buf.getvalue()
    png_file = tempfile.NamedTemporaryFile(suffix=".png", delete=False)
    png_file.write(png)
    png_file.close()

    def start_infera(binary):
        p = port()
        proc = subprocess.Popen([binary, "serve", "--model-repository", str(REPO), "--http-port", str(p),
                                 "--grpc-port", str(port()), "--metrics-port", str(port())],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return f"http://127.0.0.1:{p}/predict", proc

    fp = port()
    fastapi = subprocess.Popen([sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "bench"),
                                "fastapi_reference:app", "--workers", WORKERS, "--port", str(fp),
                                "--log-level", "warning", "--no-access-log"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    targets = {"infera": start_infera(BIN), "fastapi": (f"http://127.0.0.1:{fp}/predict", fastapi)}
    if BASELINE_BIN:
        targets["baseline"] = start_infera(BASELINE_BIN)
    try:
        answers = {name: wait_ready(url, png, proc) for name, (url, proc) in targets.items()}
        time.sleep(2)  # let every uvicorn worker come up
        same = answers["infera"]["predicted_class"] == answers["fastapi"]["predicted_class"]
        print(f"both answer {answers['infera']['predicted_label']} / {answers['fastapi']['predicted_label']}"
              f" (same class: {same})", file=sys.stderr)
        for name, (url, _) in targets.items():  # warm-up
            hey(url, 4, png_file.name) if SECONDS <= 2 else subprocess.run(
                ["hey", "-n", "400", "-c", "4", "-m", "POST", "-T", "image/png", "-D", png_file.name, url],
                capture_output=True, check=True)
        results = {}
        for c in LEVELS:
            for name, (url, proc) in targets.items():
                pids = tree(proc.pid)
                cpu0 = cpu_seconds(pids)
                r = hey(url, c, png_file.name)
                r["cores"] = (cpu_seconds(pids) - cpu0) / SECONDS
                results[(name, c)] = r
                print(f"{name} c={c}: {r}", file=sys.stderr)
    finally:
        for _, proc in targets.values():
            proc.terminate()
        for _, proc in targets.values():
            proc.wait(10)
        os.unlink(png_file.name)

    print(f"\n| concurrency | infera req/s | FastAPI req/s | ratio | infera p50 / p95 ms | FastAPI p50 / p95 ms | CPU cores infera / FastAPI | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for c in LEVELS:
        a, b = results[("infera", c)], results[("fastapi", c)]
        print(f"| {c} | {a['rps']:.0f} | {b['rps']:.0f} | {a['rps'] / b['rps']:.1f}x | {a['p50']:.2f} / {a['p95']:.2f} "
              f"| {b['p50']:.2f} / {b['p95']:.2f} | {a['cores']:.2f} / {b['cores']:.2f} | {a['errors']} / {b['errors']} |")
    if BASELINE_BIN:
        print(f"\nThis build against the baseline build ({BASELINE_BIN}), same run; CPU per request = cores / req/s:")
        print("\n| concurrency | infera req/s | baseline req/s | ratio | infera / baseline p95 ms | CPU µs·core per request infera / baseline | ratio |")
        print("|---|---|---|---|---|---|---|")
        for c in LEVELS:
            a, b = results[("infera", c)], results[("baseline", c)]
            ca, cb = a["cores"] / a["rps"] * 1e6, b["cores"] / b["rps"] * 1e6
            print(f"| {c} | {a['rps']:.0f} | {b['rps']:.0f} | {a['rps'] / b['rps']:.2f}x | {a['p95']:.2f} / {b['p95']:.2f} "
                  f"| {ca:.0f} / {cb:.0f} | {ca / cb:.2f} |")
    a, b = results[("infera", 16)], results[("fastapi", 16)]
    print(f"\nAt concurrency 16: {a['rps'] / b['rps']:.1f}x the reference's throughput (target ≥ 5x), "
          f"p95 {a['p95']:.2f} ms (target ≤ 10 ms).")


if __name__ == "__main__":
    main()
