"""Online traffic while a batch job runs: /predict latency (hey, c=4) on an idle server and on
the same server while a job over 50,000 images (10,000 PNGs x5) is running, interleaved over
three rounds; also the job's own images/s alone and under the online load.

    bench/jobs_bench.sh             # builds, makes the PNGs, runs, prints Markdown
"""
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from predict_bench import BIN, REPO, port, wait_ready  # noqa: E402
from test_image_preprocess import png_gray  # noqa: E402

import numpy as np  # noqa: E402

SECONDS = int(os.environ.get("BENCH_SECONDS", "6"))
COPIES = 5


def hey(url, png):
    out = subprocess.run(["hey", "-z", f"{SECONDS}s", "-c", "4", "-m", "POST", "-T", "image/png", "-D", png, url],
                         capture_output=True, text=True, check=True).stdout
    pct = {int(p): float(v) * 1e3 for p, v in re.findall(r"(\d+)%+ in ([\d.]+) secs", out)}
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": pct[50], "p99": pct[99]}


def api(base, method, path, body=None):
    req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def run_job(base, folder):
    job = api(base, "POST", "/api/inference/batch",
              {"model": "fashion_mnist_image", "inputs": [folder] * COPIES, "output_format": "jsonl"})
    while True:
        j = api(base, "GET", f"/api/inference/job/{job['job_id']}")
        if j["status"] in ("succeeded", "failed", "cancelled"):
            return j
        time.sleep(0.1)


def job_rate(j):
    def t(s):
        return time.mktime(time.strptime(s[:19], "%Y-%m-%dT%H:%M:%S")) + float("0" + s[19:-1])
    return j["progress"]["done"] / (t(j["finished_at"]) - t(j["started_at"]))


def main():
    work = Path(tempfile.mkdtemp())
    pngs = work / "pngs"
    pngs.mkdir()
    with gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read()[16:], dtype=np.uint8).reshape(-1, 28, 28)
    for i, img in enumerate(images):
        (pngs / f"{i:05d}.png").write_bytes(png_gray(img))
    png = str(pngs / "00000.png")
    http = port()
    proc = subprocess.Popen([BIN, "serve", "--model-repository", str(REPO), "--http-port", str(http),
                             "--grpc-port", "0", "--metrics-port", "0", "--data-dir", str(work / "data"),
                             "--batch-input-root", str(pngs), "--job-batch-size", "64"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{http}"
    try:
        wait_ready(f"{base}/predict", Path(png).read_bytes(), proc)
        print("| round | /predict idle: req/s, p50, p99 ms | /predict during a job: req/s, p50, p99 ms "
              "| job alone img/s | job under online load img/s |")
        print("|---|---|---|---|---|")
        for rnd in (1, 2, 3):
            idle = hey(f"{base}/predict", png)
            alone = job_rate(run_job(base, str(pngs)))
            result = {}
            t = threading.Thread(target=lambda: result.update(job=run_job(base, str(pngs))))
            t.start()
            time.sleep(1)
            busy = hey(f"{base}/predict", png)
            t.join()
            assert result["job"]["finished_at"] > time.strftime("%Y"), result
            print(f"| {rnd} | {idle['rps']:.0f}, {idle['p50']:.1f}, {idle['p99']:.1f} "
                  f"| {busy['rps']:.0f}, {busy['p50']:.1f}, {busy['p99']:.1f} "
                  f"| {alone:.0f} | {job_rate(result['job']):.0f} |", flush=True)
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
