"""Issue #3 end to end, on a subset and one epoch: `infera train` (burn) → `infera evaluate`
→ `infera export` → `infera serve` → tritonclient, checking the run folder, the metrics,
ONNX parity (burn vs ONNX Runtime), reproducibility from a seed, and clear errors."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient

from conftest import ROOT
from test_fashion_png_accuracy import DATA, idx

BIN = os.environ["INFERA_BIN"]
CONFIG = ROOT / "configs" / "fashion_mnist.toml"
QUICK = ["train.epochs=1", "data.train_limit=6000", "data.validation=1000", "data.test_limit=2000"]


def infera(*args, timeout=900):
    return subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def train(runs, run_id, *overrides):
    r = infera("train", "--config", CONFIG, "--runs-dir", runs, "--run-id", run_id, "--no-progress",
               *QUICK, *overrides)
    assert r.returncode == 0, r.stdout + r.stderr
    return runs / run_id, r


def test_train_evaluate_export_serve(tmp_path, make_server):
    run, r = train(tmp_path / "runs", "quick")
    # The run folder has everything a user needs to trust and reuse the run.
    for f in ["config.toml", "train.log", "metrics.json", "training_curves.png", "confusion_matrix.png",
              "checkpoints/best/model.safetensors", "checkpoints/best/config.json",
              "checkpoints/final/model.safetensors", "checkpoints/final/config.json"]:
        assert (run / f).is_file(), f
    assert (run / "training_curves.png").read_bytes().startswith(b"\x89PNG")
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["test"]
    assert test["examples"] == 2000
    assert test["accuracy"] > 0.6, test["accuracy"]            # chance is 0.1
    assert len(metrics["history"]) == 1 and metrics["best_epoch"] == 1
    assert metrics["history"][0]["val_accuracy"] > 0.6
    ckpt = json.loads((run / "checkpoints/best/config.json").read_text())
    assert ckpt["classes"][6] == "Shirt" and ckpt["input"]["shape"] == [1, 28, 28]
    assert "Shirt" in r.stdout and "macro" in r.stdout

    # Export: ONNX with a dynamic batch, normalisation inside, parity checked by the exporter.
    repo = tmp_path / "repo"
    e = infera("export", "--checkpoint", run / "checkpoints/best", "--model-repository", repo, "--name", "fm")
    assert e.returncode == 0, e.stdout + e.stderr
    report = json.loads((repo / "fm" / "export.json").read_text())
    assert report["parity"]["images"] == 1000 and report["parity"]["max_abs_diff"] <= 1e-4, report
    assert report["opset"] >= 17
    assert (repo / "fm" / "labels.txt").read_text().splitlines()[9] == "Ankle boot"
    assert "dynamic_batching" in (repo / "fm" / "config.pbtxt").read_text()
    onnx_path = repo / "fm" / "1" / "model.onnx"
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, out.name) == ("input", "logits")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [1, 28, 28]
    # op_type strings are stored verbatim in the protobuf: BatchNorm is folded, Conv is there.
    raw = onnx_path.read_bytes()
    assert b"BatchNormalization" not in raw and b"Conv" in raw and b"Gemm" in raw

    # ONNX Runtime agrees with the trainer's own test accuracy (same 2,000 images).
    images = idx(DATA / "t10k-images-idx3-ubyte.gz")[:2000].astype(np.float32)[:, None]
    labels = idx(DATA / "t10k-labels-idx1-ubyte.gz")[:2000].astype(int)
    logits = sess.run(["logits"], {"input": images})[0]
    assert abs((logits.argmax(1) == labels).mean() - test["accuracy"]) < 0.002

    # infera evaluate on the exported entry reports the same accuracy.
    ev = infera("evaluate", "--model-repository", repo, "--model", "fm", "--limit", 2000,
                "--output-dir", tmp_path / "eval")
    assert ev.returncode == 0, ev.stderr
    assert abs(json.loads((tmp_path / "eval" / "metrics.json").read_text())["accuracy"] - test["accuracy"]) < 0.002

    # Served by infera, called through Triton's own client.
    server = make_server(repo)
    client = httpclient.InferenceServerClient(server.http)
    batch = images[:64]
    x = httpclient.InferInput("input", list(batch.shape), "FP32")
    x.set_data_from_numpy(batch)
    served = client.infer("fm", [x]).as_numpy("logits")
    assert np.abs(served - logits[:64]).max() < 1e-4
    assert (served.argmax(1) == labels[:64]).mean() > 0.6


def tensors(path):
    """name -> raw bytes of every tensor in a safetensors file (its JSON header's key order
    is not fixed, so files are compared tensor by tensor)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    body = raw[8 + n:]
    return {k: body[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in header.items() if k != "__metadata__"}


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    quick = ["data.train_limit=3000", "data.validation=500", "data.test_limit=500"]
    a, _ = train(tmp_path, "a", *quick)
    b, _ = train(tmp_path, "b", *quick)
    c, _ = train(tmp_path, "c", *quick, "seed=7")
    ma, mb, mc = (json.loads((r / "metrics.json").read_text()) for r in (a, b, c))
    strip = lambda m: [{k: v for k, v in h.items() if k != "seconds"} for h in m["history"]]
    assert strip(ma) == strip(mb)
    assert ma["test"] == mb["test"]
    assert tensors(a / "checkpoints/best/model.safetensors") == tensors(b / "checkpoints/best/model.safetensors")
    assert strip(ma) != strip(mc)


def test_a_run_killed_mid_epoch_resumes_to_the_same_result(tmp_path):
    quick = ["data.train_limit=3000", "data.validation=500", "data.test_limit=500", "train.epochs=3"]
    whole, _ = train(tmp_path, "whole", *quick)
    args = [BIN, "train", "--config", CONFIG, "--runs-dir", tmp_path, "--run-id", "killed", "--no-progress",
            *QUICK, *quick]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = tmp_path / "killed/checkpoints/last.json"
    deadline = time.monotonic() + 600
    while not pointer.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no resume point after epoch 1"
        time.sleep(0.05)
    time.sleep(0.5)                     # into epoch 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = tmp_path / "killed"
    assert not (killed / "metrics.json").exists(), "the run finished before it was killed"
    r = infera("train", "--resume", killed, "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming" in r.stdout
    mw, mk = (json.loads((d / "metrics.json").read_text()) for d in (whole, killed))
    strip = lambda m: [{k: v for k, v in h.items() if k != "seconds"} for h in m["history"]]
    assert len(strip(mk)) == 3 and strip(mw) == strip(mk)
    assert mw["test"] == mk["test"] and mw["best_epoch"] == mk["best_epoch"]
    for ckpt in ("best", "final"):
        assert tensors(whole / f"checkpoints/{ckpt}/model.safetensors") == \
            tensors(killed / f"checkpoints/{ckpt}/model.safetensors"), ckpt
    # A finished run is not resumed again; overrides cannot change a resumed run.
    again = infera("train", "--resume", killed)
    assert again.returncode == 1 and "finished" in again.stderr, again.stderr
    other = infera("train", "--resume", tmp_path / "whole-missing")
    assert other.returncode == 1 and "config.toml" in other.stderr, other.stderr


def test_config_groups_and_overrides_reach_the_run(tmp_path):
    run, _ = train(tmp_path, "resnet", "model=resnet_small", "optimizer=sgd", "optimizer.lr=0.03",
                   "data.train_limit=2000", "data.validation=500", "data.test_limit=500")
    ckpt = json.loads((run / "checkpoints/best/config.json").read_text())
    assert ckpt["model"]["architecture"] == "resnet_small"
    resolved = (run / "config.toml").read_text()
    assert 'name = "sgd"' in resolved and "lr = 0.03" in resolved
    # The small ResNet exports and passes parity too.
    e = infera("export", "--checkpoint", run / "checkpoints/best", "--model-repository", tmp_path / "repo",
               "--name", "resnet", "--parity-images", 300)
    assert e.returncode == 0, e.stdout + e.stderr
    assert json.loads((tmp_path / "repo/resnet/export.json").read_text())["parity"]["max_abs_diff"] <= 1e-4


def test_flip_average_export_is_the_mean_over_each_image_and_its_mirror(tmp_path):
    """`--flip-average` puts test-time flip augmentation inside the graph: ONNX Runtime's
    logits are the mean of the plain model's logits on the image and on its mirror."""
    checkpoint = ROOT / "examples" / "checkpoints" / "fashion_mnist"
    repo = tmp_path / "repo"
    for name, extra in [("plain", []), ("tta", ["--flip-average"])]:
        e = infera("export", "--checkpoint", checkpoint, "--model-repository", repo, "--name", name,
                   "--parity-images", 300, *extra)
        assert e.returncode == 0, e.stdout + e.stderr
    report = json.loads((repo / "tta" / "export.json").read_text())
    assert report["flip_average"] is True and report["parity"]["max_abs_diff"] <= 1e-4, report
    x = idx(DATA / "t10k-images-idx3-ubyte.gz")[:200].astype(np.float32)[:, None]
    plain = ort.InferenceSession(str(repo / "plain" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    tta = ort.InferenceSession(str(repo / "tta" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    want = (plain.run(None, {"input": x})[0] + plain.run(None, {"input": x[..., ::-1].copy()})[0]) / 2
    for batch in (1, 7, 200):
        got = np.concatenate([tta.run(None, {"input": x[i:i + batch]})[0] for i in range(0, len(x), batch)])
        np.testing.assert_allclose(got, want, atol=1e-4)
    assert not np.allclose(plain.run(None, {"input": x})[0], want, atol=1e-3)


def test_bad_input_is_one_line_and_exit_1(tmp_path):
    cases = [
        (["train", "--config", CONFIG, "optimizer.lrr=0.1"], "lrr"),
        (["train", "--config", CONFIG, "optimizer.name=lbfgs"], "lbfgs"),
        (["train", "--config", tmp_path / "missing.toml"], "missing.toml"),
        (["train", "--config", CONFIG, f"data.dir={tmp_path}"], "dataset-fashion-mnist"),
        (["export", "--checkpoint", tmp_path, "--model-repository", tmp_path / "r"], "config.json"),
        (["sweep", "--config", CONFIG, "--grid", "optimizer.lr"], "key=value1,value2"),
    ]
    for args, want in cases:
        r = infera(*args, "--runs-dir", tmp_path / "runs") if args[0] != "export" else infera(*args)
        assert r.returncode == 1 and want in r.stderr, (args, r.stderr)
        assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: "), r.stderr
    assert not (tmp_path / "r").exists()


def test_sweep_ranks_trials_by_validation_accuracy(tmp_path):
    r = infera("sweep", "--config", CONFIG, "--runs-dir", tmp_path, "--no-progress",
               "--grid", "optimizer.lr=0.002,0.00001", "data.train_limit=2000", "data.validation=500",
               "train.epochs=1")
    assert r.returncode == 0, r.stdout + r.stderr
    (sweep,) = tmp_path.glob("sweep-*")
    rows = (sweep / "results.csv").read_text().splitlines()
    assert rows[0].startswith("rank,trial,optimizer.lr,val_accuracy")
    ranked = [row.split(",") for row in rows[1:]]
    assert [r[2] for r in ranked] == ["0.002", "0.00001"], rows     # a tiny lr learns less
    assert float(ranked[0][3]) >= float(ranked[1][3])
    assert not any((sweep / t / "confusion_matrix.png").exists() for t in ("trial-01", "trial-02"))
