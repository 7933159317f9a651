"""Batch jobs on the server (issue #5): /api/inference/batch and friends.

The server is killed (SIGKILL) mid-job and restarted: the job continues from its checkpoint
and ends with exactly one row per input, byte-identical to an uninterrupted job. Inputs must
stay under the server's input roots (no `..`, no symlink escape) and URLs on the allow-list
(redirects included)."""
import csv
import http.server
import io
import json
import random
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import reference
from conftest import FIXTURES, Server, copy_repo
from test_fashion_png_accuracy import DATA, idx
from test_image_preprocess import png_gray

LABELS = (FIXTURES / "fashion_mnist" / "labels.txt").read_text().splitlines()
N = 2000


def api(server, method, path, body=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"http://{server.http}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            payload = r.read()
            ctype = r.headers.get("Content-Type", "")
            return r.status, (json.loads(payload) if "json" in ctype else payload)
    except urllib.error.HTTPError as e:
        payload = e.read()
        assert e.headers.get("Content-Type", "").startswith("application/json"), payload
        return e.code, json.loads(payload)


def wait_for(server, job_id, statuses=("succeeded", "failed", "cancelled"), timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, job = api(server, "GET", f"/api/inference/job/{job_id}")
        assert status == 200, job
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['status']}: {job}\n{server.logs()}")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An input root with N Fashion-MNIST PNGs (plus a broken one), and things outside it."""
    base = tmp_path_factory.mktemp("jobs")
    root, outside = base / "in", base / "outside"
    photos = root / "photos"
    images = idx(DATA / "t10k-images-idx3-ubyte.gz")[:N]
    labels = idx(DATA / "t10k-labels-idx1-ubyte.gz")[:N]
    truth = {}
    for i, (img, y) in enumerate(zip(images, labels)):
        p = photos / LABELS[y].replace("/", "-") / f"img_{i:05d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(png_gray(img))
        truth[str(p)] = int(y)
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    small = root / "small"
    small.mkdir()
    for i in range(6):
        (small / f"s{i}.png").write_bytes(png_gray(images[i]))
    outside.mkdir()
    (outside / "secret.png").write_bytes(png_gray(images[0]))
    (root / "escape").symlink_to(outside, target_is_directory=True)
    mixed = root / "mixed"
    mixed.mkdir()
    (mixed / "link.png").symlink_to(outside / "secret.png")
    (root / "empty").mkdir()
    pred = reference.run("fashion_mnist", {"input": images.astype(np.float32)[:, None]})["logits"].argmax(1)
    return {"base": base, "root": root, "photos": photos, "small": small, "outside": outside,
            "truth": truth, "acc": float((pred == labels).mean()), "repo": copy_repo(base)}


def start(world, data_dir, *extra):
    return Server(world["repo"], "--data-dir", str(data_dir), "--batch-input-root", str(world["root"]),
                  "--job-batch-size", "16", *extra)


def download(server, job_id, what="results"):
    req = urllib.request.Request(f"http://{server.http}/api/inference/job/{job_id}?download={what}")
    with urllib.request.urlopen(req, timeout=60) as r:
        assert "attachment" in r.headers["Content-Disposition"]
        return r.read()


@pytest.fixture(scope="module")
def uninterrupted(world):
    """A job over the photos that nobody disturbs: the reference output."""
    s = start(world, world["base"] / "data-ref")
    try:
        status, job = api(s, "POST", "/api/inference/batch",
                          {"model": "fashion_mnist_image", "inputs": [str(world["photos"])]})
        assert status == 202 and job["status"] == "queued", job
        done = wait_for(s, job["job_id"])
        return done, download(s, job["job_id"]), download(s, job["job_id"], "errors"), s
    finally:
        s.stop()


def test_a_job_predicts_every_image_with_the_models_accuracy(world, uninterrupted):
    job, results, errors, _ = uninterrupted
    assert job["status"] == "succeeded", job
    assert job["progress"] == {"total": N + 1, "done": N + 1, "succeeded": N, "failed": 1, "percent": 100.0}
    rows = list(csv.DictReader(io.StringIO(results.decode())))
    assert [r["filename"] for r in rows] == sorted(world["truth"])
    acc = np.mean([int(r["predicted_class"]) == world["truth"][r["filename"]] for r in rows])
    assert abs(acc - world["acc"]) <= 0.001, (acc, world["acc"])
    err = list(csv.DictReader(io.StringIO(errors.decode())))
    assert [e["filename"] for e in err] == [str(world["photos"] / "broken.png")] and err[0]["error"]


def test_results_are_paged_and_jobs_listed(world, tmp_path):
    s = start(world, tmp_path / "data")
    try:
        _, job = api(s, "POST", "/api/inference/batch",
                     {"model": "fashion_mnist_image", "inputs": [str(world["small"])], "output_format": "jsonl"})
        wait_for(s, job["job_id"])
        status, page = api(s, "GET", f"/api/inference/job/{job['job_id']}?offset=2&limit=3")
        assert status == 200
        res = page["results"]
        assert (res["offset"], res["count"], res["total"], res["next_offset"]) == (2, 3, 6, 5)
        assert [r["filename"] for r in res["rows"]] == [str(world["small"] / f"s{i}.png") for i in (2, 3, 4)]
        assert set(res["rows"][0]["probabilities"]) == set(LABELS)
        lines = download(s, job["job_id"]).decode().splitlines()
        assert len(lines) == 6 and json.loads(lines[5])["filename"].endswith("s5.png")
        status, listing = api(s, "GET", "/api/inference/jobs?status=succeeded")
        assert status == 200 and [j["job_id"] for j in listing["jobs"]] == [job["job_id"]]
        assert api(s, "GET", "/api/inference/jobs?status=nope")[0] == 400
    finally:
        s.stop()


def test_sigkill_mid_job_and_restart_gives_one_row_per_input(world, uninterrupted, tmp_path):
    """Killed twice at random points (SIGKILL, then SIGTERM), restarted each time."""
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rnd = random.Random(seed)
    data = tmp_path / "data"
    s = start(world, data, "--job-workers", "1")
    _, job = api(s, "POST", "/api/inference/batch",
                 {"model": "fashion_mnist_image", "inputs": [str(world["photos"])], "priority": "high"})
    job_id = job["job_id"]
    try:
        for sig in (signal.SIGKILL, signal.SIGTERM):
            target = rnd.randrange(N // 10, N * 6 // 10)
            while True:
                _, j = api(s, "GET", f"/api/inference/job/{job_id}")
                if j["progress"]["done"] >= target or j["status"] != "running" and j["status"] != "queued":
                    break
            assert j["status"] == "running" and j["progress"]["done"] < N + 1, \
                f"the job ended before the kill at {target}; seed {seed}"
            seen = j["progress"]["done"]
            s.stop(sig)
            s = start(world, data, "--job-workers", "1")
            # It continues from its checkpoint, not from the start.
            deadline = time.time() + 30
            while "resuming batch job from its checkpoint" not in s.logs() and time.time() < deadline:
                time.sleep(0.05)
            resumed = re.search(r"resuming batch job from its checkpoint .*done=(\d+) total=(\d+)", s.logs())
            assert resumed and int(resumed[1]) >= seen and int(resumed[2]) == N + 1, s.logs()
        done = wait_for(s, job_id)
        assert done["status"] == "succeeded" and done["restarts"] == 2, done
        assert done["progress"] == uninterrupted[0]["progress"]
        results = download(s, job_id)
        rows = list(csv.DictReader(io.StringIO(results.decode())))
        names = [r["filename"] for r in rows]
        assert len(names) == N and set(names) == set(world["truth"]), f"seed {seed}"
        assert results == uninterrupted[1], f"output differs from an uninterrupted job; seed {seed}"
        assert download(s, job_id, "errors") == uninterrupted[2]
    finally:
        s.stop()


def test_inputs_outside_the_roots_are_refused(world, tmp_path):
    s = start(world, tmp_path / "data", "--batch-allow-url", "http://127.0.0.1:9/images/")
    root, outside = world["root"], world["outside"]
    try:
        def post(body):
            return api(s, "POST", "/api/inference/batch", body)

        m = "fashion_mnist_image"
        for path, why in [
            (f"{root}/../outside", "traversal"),
            (f"{root}/photos/../../outside/secret.png", "traversal"),
            (str(outside), "outside the allowed input roots"),
            (str(outside / "secret.png"), "outside the allowed input roots"),
            ("/etc/passwd", "outside the allowed input roots"),
            (str(root / "escape"), "symbolic link"),
            (str(root / "escape" / "secret.png"), "outside"),
            (str(root / "mixed" / "link.png"), "symbolic link"),
        ]:
            status, body = post({"model": m, "inputs": [str(world["small"]), path]})
            assert status == 403, (path, body)
            assert body["refused"] == [{"input": path, "reason": body["refused"][0]["reason"]}], body
            assert why in body["refused"][0]["reason"] and path in body["error"], (path, body)
        for url in ["http://127.0.0.1:9/private/a.png", "http://127.0.0.1:10/images/a.png",
                    "http://127.0.0.1:9/images/../private/a.png", "http://127.0.0.1:9/images/%2e%2e/x.png",
                    "http://127.0.0.1:9@evil.example/images/a.png", "file:///etc/passwd"]:
            status, body = post({"model": m, "inputs": [url]})
            assert status == 403, (url, body)
        status, body = post({"model": m, "inputs": ["relative/photos"]})
        assert status == 400 and "absolute" in body["error"], body
        assert api(s, "GET", "/api/inference/jobs")[1]["jobs"] == [], "no job was created"

        # Refused before anything is queued: the model, and the request itself.
        status, body = post({"model": "nope", "inputs": [str(world["small"])]})
        assert status == 404 and "nope" in body["error"], body
        status, body = post({"model": "fashion_mnist", "inputs": [str(world["small"])]})
        assert status == 400 and "image" in body["error"], body
        for bad, word in [({"inputs": ["/x"]}, "model"), ({"model": m}, "inputs"),
                          ({"model": m, "inputs": []}, "empty"), ({"model": m, "inputs": [3]}, "strings"),
                          ({"model": m, "inputs": ["/x"], "priority": "urgent"}, "priority"),
                          ({"model": m, "inputs": ["/x"], "output_format": "xml"}, "xml")]:
            status, body = post(bad)
            assert status == 400 and word in body["error"], (bad, body)
        status, body = api(s, "POST", "/api/inference/batch", raw=b"{not json")
        assert status == 400 and "JSON" in body["error"]

        # Accepted, but nothing in it can be read: the job fails and says why, per input.
        status, job = post({"model": m, "inputs": [str(root / "missing"), str(root / "empty"),
                                                   str(root / "mixed")]})
        assert status == 202, job
        done = wait_for(s, job["job_id"])
        assert done["status"] == "failed" and "none of the 3 inputs" in done["error"], done
        reasons = {e["filename"]: e["error"] for e in done["errors"]}
        assert reasons[str(root / "missing")] == "does not exist"
        assert "no images" in reasons[str(root / "empty")]
        assert "outside the allowed input roots" in reasons[str(root / "mixed" / "link.png")]

        assert api(s, "GET", "/api/inference/job/nope")[0] == 404
        status, body = api(s, "DELETE", f"/api/inference/job/{job['job_id']}")
        assert status == 409 and "already failed" in body["error"]
        status, body = api(s, "GET", f"/api/inference/job/{job['job_id']}?download=results")
        assert status == 409
    finally:
        s.stop()
    assert "panicked" not in s.logs()


class Images(http.server.BaseHTTPRequestHandler):
    """/images/<i>.png are test images; /images/moved redirects off the allow-list."""
    pngs = {}

    def do_GET(self):
        if self.path == "/images/moved":
            self.send_response(302)
            self.send_header("Location", "/private/0.png")
            self.end_headers()
        elif self.path.startswith(("/images/", "/private/")) and self.path.rsplit("/", 1)[1] in self.pngs:
            body = self.pngs[self.path.rsplit("/", 1)[1]]
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


def test_url_inputs_come_only_from_the_allow_list(world, tmp_path):
    images = idx(DATA / "t10k-images-idx3-ubyte.gz")[:3]
    labels = idx(DATA / "t10k-labels-idx1-ubyte.gz")[:3]
    Images.pngs = {f"{i}.png": png_gray(img) for i, img in enumerate(images)}
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Images)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{web.server_port}"
    s = start(world, tmp_path / "data", "--batch-allow-url", f"{base}/images/")
    try:
        urls = [f"{base}/images/{i}.png" for i in range(3)] + [f"{base}/images/404.png", f"{base}/images/moved"]
        status, job = api(s, "POST", "/api/inference/batch", {"model": "fashion_mnist_image", "inputs": urls})
        assert status == 202, job
        done = wait_for(s, job["job_id"])
        assert done["status"] == "succeeded" and done["progress"]["failed"] == 2, done
        rows = list(csv.DictReader(io.StringIO(download(s, job["job_id"]).decode())))
        assert [r["filename"] for r in rows] == urls[:3]
        assert [LABELS.index(r["predicted_label"]) for r in rows] == [int(y) for y in labels]
        reasons = {e["filename"]: e["error"] for e in done["errors"]}
        assert "404" in reasons[urls[3]], reasons
        assert "not on the allow-list" in reasons[urls[4]], reasons
        status, body = api(s, "POST", "/api/inference/batch",
                           {"model": "fashion_mnist_image", "inputs": [f"{base}/private/0.png"]})
        assert status == 403 and "allow-list" in body["error"]
    finally:
        s.stop()
        web.shutdown()


def test_priorities_cancel_and_progress_events(world, tmp_path):
    s = start(world, tmp_path / "data", "--job-workers", "1")
    try:
        def submit(inputs, **kw):
            status, job = api(s, "POST", "/api/inference/batch",
                              {"model": "fashion_mnist_image", "inputs": inputs, **kw})
            assert status == 202, job
            return job["job_id"]

        big = submit([str(world["photos"])])
        # Queued behind the big one: the high one starts first although it came later.
        normal = submit([str(world["small"])])
        high = submit([str(world["small"])], priority="high")
        low = submit([str(world["small"])], priority="low")
        doomed = submit([str(world["small"])])
        status, body = api(s, "DELETE", f"/api/inference/job/{doomed}")
        assert status == 200 and body["status"] == "cancelled", body

        # Progress events of the big job, until its end.
        events = []
        with urllib.request.urlopen(f"http://{s.http}/api/inference/job/{big}/events", timeout=120) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            kind = None
            for line in r:
                line = line.decode().strip()
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    events.append((kind, json.loads(line[5:])))
                    if kind == "end":
                        break
        done = [e["progress"]["done"] for k, e in events if k == "progress"]
        assert done == sorted(done) and len(done) >= 3, done
        assert events[-1][0] == "end" and events[-1][1]["status"] == "succeeded"

        jobs = {j: wait_for(s, j) for j in (normal, high, low)}
        assert all(j["status"] == "succeeded" for j in jobs.values())
        order = sorted(jobs, key=lambda j: jobs[j]["started_at"])
        assert order == [high, normal, low], {j: jobs[j]["started_at"] for j in jobs}
        assert api(s, "GET", f"/api/inference/job/{doomed}")[1]["status"] == "cancelled"

        # Cancelling a running job stops it after its current chunk.
        running = submit([str(world["photos"])])
        while api(s, "GET", f"/api/inference/job/{running}")[1]["status"] != "running":
            time.sleep(0.01)
        status, body = api(s, "DELETE", f"/api/inference/job/{running}")
        assert status in (200, 202), body
        job = wait_for(s, running)
        assert job["status"] == "cancelled" and job["progress"]["done"] < N + 1, job
    finally:
        s.stop()


def test_jobs_are_off_without_a_data_dir(server):
    status, body = api(server, "POST", "/api/inference/batch", {"model": "fashion_mnist_image", "inputs": ["/x"]})
    assert status == 503 and "--data-dir" in body["error"]


def test_one_server_per_data_dir(world, tmp_path):
    s = start(world, tmp_path / "data")
    try:
        with pytest.raises(RuntimeError, match="in use by another infera"):
            start(world, tmp_path / "data")
    finally:
        s.stop()
