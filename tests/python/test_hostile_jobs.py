"""Hostile clients against batch jobs: limits per job and per server, URLs fetched as the
job goes (never all up front), CSV cells that cannot become spreadsheet formulas, paged
listings, retention, and job bookkeeping that never stalls online inference."""
import csv
import http.server
import io
import json
import signal
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest

from conftest import BINARY, Server, copy_repo
from hostile import http as request, peak_rss_mb
from test_batch_jobs import api, wait_for
from test_image_preprocess import png_gray

IMAGE = png_gray(np.full((28, 28), 200, dtype=np.uint8))


class Images(http.server.ThreadingHTTPServer):
    """Serves /img/<n>.png slowly and counts the requests."""

    def __init__(self, delay):
        self.delay, self.hits = delay, 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), self.Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            with self.server.lock:
                self.server.hits += 1
            time.sleep(self.server.delay)
            body = IMAGE + b"\0" * 20_000 if "/big/" in self.path else IMAGE
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile_jobs")
    root = base / "in"
    (root / "formulas").mkdir(parents=True)
    for name in ["=cmd|' calc'!A0.png", "+1.png", "-2.png", "@SUM(A1).png", "ok.png"]:
        (root / "formulas" / name).write_bytes(IMAGE)
    (root / "many").mkdir()
    for i in range(60):
        (root / "many" / f"{i:03}.png").write_bytes(IMAGE)
    images = Images(delay=0.05)
    prefix = f"http://127.0.0.1:{images.server_address[1]}/"
    s = Server(copy_repo(base), "--data-dir", str(base / "data"), "--batch-input-root", str(root),
               "--batch-allow-url", prefix, "--job-max-inputs", "50", "--max-queued-jobs", "3",
               "--job-max-download-bytes", "100000", "--job-retention", "8s",
               "--job-batch-size", "4", "--job-workers", "1", "--exit-timeout-secs", "5")
    yield {"server": s, "root": root, "images": images, "prefix": prefix, "data": base / "data"}
    s.stop()
    images.shutdown()


def submit(s, inputs, **extra):
    return api(s, "POST", "/api/inference/batch", {"model": "fashion_mnist_image", "inputs": inputs, **extra})


@pytest.fixture(autouse=True)
def alive(jobs):
    yield
    s = jobs["server"]
    assert s.proc.poll() is None, s.logs()[-3000:]
    assert peak_rss_mb(s.proc.pid) < 400


def test_too_many_inputs_are_refused_as_given_and_as_listed(jobs):
    s = jobs["server"]
    status, body = submit(s, [f"{jobs['prefix']}img/{i}.png" for i in range(51)])
    assert status == 400 and "--job-max-inputs" in body["error"], body
    status, body = submit(s, ["/x" * 3000])
    assert status == 400 and "at most 4096" in body["error"], body
    # A folder counts as one input when given; listed, it holds 60 files: the job fails clearly.
    status, job = submit(s, [str(jobs["root"] / "many")])
    assert status == 202, job
    done = wait_for(s, job["job_id"])
    assert done["status"] == "failed" and "more than 50 files" in done["error"], done


def test_urls_are_fetched_as_the_job_goes_not_all_before(jobs):
    s, images = jobs["server"], jobs["images"]
    images.hits = 0
    urls = [f"{jobs['prefix']}img/{i}.png" for i in range(40)]
    status, job = submit(s, urls)
    assert status == 202, job
    # Chunks of 4, one at a time: after the first chunks, only a few have been fetched.
    deadline = time.time() + 30
    while api(s, "GET", f"/api/inference/job/{job['job_id']}")[1]["progress"]["done"] < 4:
        assert time.time() < deadline
        time.sleep(0.02)
    status, body = api(s, "DELETE", f"/api/inference/job/{job['job_id']}")
    assert status in (200, 202), body
    done = wait_for(s, job["job_id"])
    assert done["status"] == "cancelled", done
    assert images.hits < 30, f"{images.hits} of 40 URLs fetched for a job cancelled early"
    assert not (jobs["data"] / "jobs" / job["job_id"] / "downloads").exists()


def test_a_jobs_downloads_are_capped_in_total(jobs):
    s = jobs["server"]
    # 20 KB each, 100 KB per job: the first few are predicted, the rest are error rows.
    urls = [f"{jobs['prefix']}big/{i}.png" for i in range(12)]
    status, job = submit(s, urls)
    assert status == 202, job
    done = wait_for(s, job["job_id"])
    p = done["progress"]
    assert p["total"] == 12 and 1 <= p["succeeded"] <= 5 and p["failed"] >= 7, done
    status, errors = api(s, "GET", f"/api/inference/job/{job['job_id']}?download=errors")
    reasons = [r["error"] for r in csv.DictReader(io.StringIO(errors.decode()))]
    assert all("--job-max-download-bytes" in r for r in reasons), reasons


def test_csv_cells_from_file_names_cannot_be_formulas(jobs, tmp_path):
    # Job inputs are absolute paths or URLs; `infera predict` names rows by relative path,
    # so a file called "=cmd...png" would start a cell there.
    out = tmp_path / "out.csv"
    subprocess.run([str(BINARY), "predict", "--model-repository", str(jobs["server"].repo), "--model",
                    "fashion_mnist_image", "--input", str(jobs["root"] / "formulas"), "--output", str(out)],
                   check=True, capture_output=True, timeout=120)
    cells = [row[0] for row in csv.reader(io.StringIO(out.read_text()))][1:]
    assert len(cells) == 5, cells
    for c in cells:
        assert c[:1] not in ("=", "+", "-", "@", "\t", "\r"), c
    assert sorted(c.lstrip("'") for c in cells) == sorted(p.name for p in (jobs["root"] / "formulas").iterdir())
    assert "'=cmd|' calc'!A0.png" in cells and "ok.png" in cells


def test_listings_are_paged_and_never_list_every_input(jobs):
    s = jobs["server"]
    many = [str(jobs["root"] / "formulas" / "ok.png")] * 45
    for _ in range(2):
        status, job = submit(s, many)
        assert status == 202, job
        wait_for(s, job["job_id"])
    status, page = api(s, "GET", "/api/inference/jobs?limit=1")
    assert status == 200 and len(page["jobs"]) == 1 and page["next_cursor"], page
    assert "inputs" not in page["jobs"][0] and page["jobs"][0]["input_count"] == 45
    status, nxt = api(s, "GET", f"/api/inference/jobs?limit=1&cursor={page['next_cursor']}")
    assert nxt["jobs"][0]["job_id"] != page["jobs"][0]["job_id"]
    status, one = api(s, "GET", f"/api/inference/job/{page['jobs'][0]['job_id']}")
    assert len(one["inputs"]) == 45 and one["input_count"] == 45


def test_the_queue_is_bounded_server_wide(jobs):
    s, images = jobs["server"], jobs["images"]
    images.delay = 0.3
    try:
        slow = [f"{jobs['prefix']}img/{i}.png" for i in range(30)]
        ids = []
        statuses = []
        for _ in range(6):
            status, body = submit(s, slow)
            statuses.append(status)
            if status == 202:
                ids.append(body["job_id"])
            else:
                assert status == 429 and "--max-queued-jobs" in body["error"], body
        assert 429 in statuses, statuses
        for i in ids:
            api(s, "DELETE", f"/api/inference/job/{i}")
        for i in ids:
            wait_for(s, i)
    finally:
        images.delay = 0.05


def test_job_bookkeeping_never_stalls_online_inference(jobs):
    s = jobs["server"]
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            submit(s, [str(jobs["root"] / "formulas")])
            api(s, "GET", "/api/inference/jobs?limit=50")

    threads = [threading.Thread(target=churn) for _ in range(2)]
    for t in threads:
        t.start()
    latencies = []
    try:
        for _ in range(100):
            t0 = time.time()
            status, _, body = request(s, "POST", "/predict", IMAGE, {"Content-Type": "image/png"})
            latencies.append(time.time() - t0)
            assert status == 200, body
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert sorted(latencies)[94] < 1.0, sorted(latencies)[-10:]
    # Let the churned jobs end so later tests see an empty queue.
    for j in api(s, "GET", "/api/inference/jobs?limit=1000")[1]["jobs"]:
        if j["status"] in ("queued", "running"):
            api(s, "DELETE", f"/api/inference/job/{j['job_id']}")


def test_ended_jobs_are_deleted_after_the_retention(jobs):
    s = jobs["server"]
    status, job = submit(s, [str(jobs["root"] / "formulas" / "ok.png")])
    done = wait_for(s, job["job_id"])
    assert done["status"] == "succeeded"
    folder = jobs["data"] / "jobs" / job["job_id"]
    assert folder.exists()
    deadline = time.time() + 20
    while time.time() < deadline:
        if api(s, "GET", f"/api/inference/job/{job['job_id']}")[0] == 404:
            break
        time.sleep(0.2)
    assert api(s, "GET", f"/api/inference/job/{job['job_id']}")[0] == 404
    assert not folder.exists()


def test_event_streams_end_when_the_server_stops(tmp_path, jobs):
    images = jobs["images"]
    images.delay = 0.3
    s = Server(copy_repo(tmp_path), "--data-dir", str(tmp_path / "data"), "--batch-allow-url", jobs["prefix"],
               "--job-batch-size", "2", "--job-workers", "1", "--exit-timeout-secs", "8")
    try:
        status, job = submit(s, [f"{jobs['prefix']}img/{i}.png" for i in range(40)])
        assert status == 202, job
        resp = urllib.request.urlopen(f"http://{s.http}/api/inference/job/{job['job_id']}/events", timeout=30)
        resp.readline()
        start = time.time()
        s.proc.send_signal(signal.SIGTERM)
        while resp.readline():
            pass
        assert time.time() - start < 8
        assert s.proc.wait(timeout=15) == 0
    finally:
        images.delay = 0.05
        s.stop()
