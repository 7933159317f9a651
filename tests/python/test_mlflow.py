"""`infera train --mlflow-uri` against a real MLflow tracking server (from PyPI) on 127.0.0.1:
params, per-epoch metrics, final metrics, status and artifacts all arrive."""
import json
import os
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from conftest import ROOT, free_port

BIN = os.environ["INFERA_BIN"]
MLFLOW = os.environ.get("INFERA_MLFLOW")


@pytest.fixture
def mlflow_server(tmp_path):
    if not MLFLOW:
        pytest.fail("INFERA_MLFLOW is not set (scripts/test.sh installs MLflow and sets it)")
    port = free_port()
    log = open(tmp_path / "mlflow.log", "w")
    proc = subprocess.Popen(
        [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("mlflow server did not start:\n" + (tmp_path / "mlflow.log").read_text())
        time.sleep(0.5)
    yield base
    proc.terminate()
    proc.wait(20)


def get(base, path, **query):
    url = f"{base}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def test_run_is_logged_to_mlflow(tmp_path, mlflow_server):
    r = subprocess.run(
        [BIN, "train", "--config", ROOT / "configs/fashion_mnist.toml", "--runs-dir", tmp_path / "runs",
         "--run-id", "tracked", "--no-progress", "--mlflow-uri", mlflow_server, "--mlflow-experiment", "ci",
         "train.epochs=2", "data.train_limit=2000", "data.validation=500", "data.test_limit=500"],
        capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr

    exp = get(mlflow_server, "experiments/get-by-name", experiment_name="ci")["experiment"]
    with urllib.request.urlopen(urllib.request.Request(
            f"{mlflow_server}/api/2.0/mlflow/runs/search", method="POST",
            data=json.dumps({"experiment_ids": [exp["experiment_id"]]}).encode(),
            headers={"content-type": "application/json"}), timeout=30) as resp:
        (run,) = json.loads(resp.read())["runs"]
    info, data = run["info"], run["data"]
    assert info["status"] == "FINISHED" and info["run_name"] == "tracked"
    params = {p["key"]: p["value"] for p in data["params"]}
    assert params["optimizer.lr"] == "0.002" and params["model.architecture"] == "cnn"
    assert params["train.epochs"] == "2"
    local = json.loads((tmp_path / "runs/tracked/metrics.json").read_text())
    history = get(mlflow_server, "metrics/get-history", run_id=info["run_id"], metric_key="val_accuracy")["metrics"]
    assert sorted(m["step"] for m in history) == [1, 2]
    assert [m["value"] for m in sorted(history, key=lambda m: m["step"])] == \
        pytest.approx([h["val_accuracy"] for h in local["history"]])
    latest = {m["key"]: m["value"] for m in data["metrics"]}
    assert latest["test_accuracy"] == pytest.approx(local["test"]["accuracy"])

    files = {f["path"] for f in get(mlflow_server, "artifacts/list", run_id=info["run_id"])["files"]}
    assert {"metrics.json", "confusion_matrix.png", "training_curves.png", "config.toml", "checkpoints"} <= files
    uri = info["artifact_uri"].removeprefix("mlflow-artifacts:/").lstrip("/")
    with urllib.request.urlopen(f"{mlflow_server}/api/2.0/mlflow-artifacts/artifacts/{uri}/metrics.json") as a:
        assert a.read() == (tmp_path / "runs/tracked/metrics.json").read_bytes()


def test_unreachable_tracking_server_is_a_clear_error(tmp_path):
    r = subprocess.run(
        [BIN, "train", "--config", ROOT / "configs/fashion_mnist.toml", "--runs-dir", tmp_path,
         "--mlflow-uri", f"http://127.0.0.1:{free_port()}", "data.train_limit=600", "data.validation=100"],
        capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "cannot reach MLflow" in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0
