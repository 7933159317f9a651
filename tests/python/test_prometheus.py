"""A real Prometheus (Debian's) against infera: the alert rules pass `promtool check rules` and
their unit tests; Prometheus started on 127.0.0.1 scrapes a server under traffic, the series
arrive, and every expression of the Grafana dashboard and of the rules evaluates without error
and returns data."""
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml

from conftest import ROOT, Server, copy_repo, free_port
from test_auth import simple_inputs
from test_image_preprocess import png_gray

RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "infera.json"


def promtool(*args):
    p = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_rules_pass_promtool_check_and_their_unit_tests():
    out = promtool("check", "rules", str(RULES))
    assert "SUCCESS" in out
    assert "SUCCESS" in promtool("test", "rules", str(RULES.parent / "tests.yml"))


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((RULES.parent / "tests.yml").read_text())["tests"]
    firing, quiet = set(), set()
    for t in tests:
        for a in t.get("alert_rule_test", []):
            (firing if a["exp_alerts"] else quiet).add(a["alertname"])
    assert alerts == firing == quiet, (alerts, firing, quiet)


def get_json(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


class Prometheus:
    def __init__(self, workdir, target):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "infera", "static_configs": [{"targets": [target]}]}],
        }))
        self.log = open(workdir / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            assert self.proc.poll() is None, (workdir / "prometheus.log").read_text()
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("prometheus did not become ready")

    def query(self, expr):
        q = urllib.parse.urlencode({"query": expr})
        try:
            body = get_json(f"{self.url}/api/v1/query?{q}")
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{expr}: {e.read().decode()}") from None
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def traffic(s, stop):
    """The shop's mix until stopped: photos, v2 infer over HTTP and gRPC, and some mistakes."""
    png = png_gray(np.full((28, 28), 90, dtype=np.uint8))
    c = grpcclient.InferenceServerClient(s.grpc)
    while not stop.is_set():
        for path, body in (("/predict", png), ("/v2/models/no-such-model/infer", b"{}")):
            req = urllib.request.Request(f"http://{s.http}{path}", data=body, method="POST")
            try:
                urllib.request.urlopen(req, timeout=10).read()
            except urllib.error.HTTPError:
                pass
        c.infer("simple", simple_inputs(grpcclient))
        time.sleep(0.05)


def rule_expressions():
    out = []
    for g in yaml.safe_load(RULES.read_text())["groups"]:
        for r in g["rules"]:
            expr = " ".join(r["expr"].split())
            if "alert" in r:
                # The signal an alert compares with its threshold: data whether or not it fires.
                signal = re.sub(r"\s*(==|!=|>=|<=|>|<)\s*[-0-9.]+$", "", expr)
                assert signal != expr, f"alert {r['alert']} is not SIGNAL <op> THRESHOLD"
                out.append((r["alert"], expr, signal))
            else:
                out.append((r["record"], expr, expr))
    return out


def dashboard_expressions():
    d = json.loads(DASHBOARD.read_text())
    out = []
    for p in d["panels"]:
        for t in p.get("targets", []):
            e = t["expr"].replace("$__rate_interval", "30s").replace("$model", ".*").replace("$job", ".*")
            out.append((p["title"], e))
    return out


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus")
def test_prometheus_scrapes_and_every_dashboard_and_rule_expression_returns_data(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        (photos / f"{i}.png").write_bytes(png_gray(np.full((28, 28), 60 * i, dtype=np.uint8)))
    s = Server(copy_repo(tmp_path), "--data-dir", str(tmp_path / "data"), "--batch-input-root", str(tmp_path))
    prom = Prometheus(tmp_path, f"127.0.0.1:{s.metrics_port}")
    stop = threading.Event()
    t = threading.Thread(target=traffic, args=(s, stop), daemon=True)
    try:
        t.start()
        req = urllib.request.Request(
            f"http://{s.http}/api/inference/batch", method="POST",
            data=json.dumps({"model": "fashion_mnist_image", "inputs": [str(photos)]}).encode(),
            headers={"Content-Type": "application/json"})
        assert urllib.request.urlopen(req, timeout=30).status == 202
        # The series arrive, with the labels of the traffic.
        deadline = time.time() + 60
        while time.time() < deadline:
            got = prom.query('infera_api_requests_total{endpoint="/predict",model="fashion_mnist_image",code="200"}')
            jobs = prom.query('infera_job_images_total{outcome="succeeded"}')
            if got and jobs and float(jobs[0]["value"][1]) == 3:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"series did not arrive: {got} {jobs}\n{s.logs()}")
        assert prom.query('up{job="infera"} == 1')
        assert prom.query('infera_api_requests_total{protocol="grpc",endpoint="ModelInfer",model="simple",code="OK"}')
        time.sleep(5)  # a few more scrapes and rule evaluations under traffic

        empty = []
        for name, expr, signal in rule_expressions():
            prom.query(expr)  # evaluates without error
            if not prom.query(signal):
                empty.append(f"rule {name}: {signal}")
        for title, expr in dashboard_expressions():
            if not prom.query(expr):
                empty.append(f"panel {title!r}: {expr}")
        assert not empty, "expressions without data:\n" + "\n".join(empty)
        # And Prometheus itself evaluated every rule without error.
        groups = get_json(f"{prom.url}/api/v1/rules")["data"]["groups"]
        bad = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
        assert not bad, bad
        assert sum(len(g["rules"]) for g in groups) == len(rule_expressions())
    finally:
        stop.set()
        t.join(30)
        prom.stop()
        s.stop()
