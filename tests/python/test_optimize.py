"""Issue #6: `infera optimize quantize | clean | prune` and `infera report` on the shipped
Fashion-MNIST CNN, checked with ONNX Runtime, the real test set, Triton's client against
`infera serve`, and hand-computed FLOPs."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from PIL import Image

from conftest import ROOT
from test_fashion_png_accuracy import DATA, idx

BIN = os.environ["INFERA_BIN"]
SHIPPED = ROOT / "examples" / "model_repository" / "fashion_mnist"
FP32 = SHIPPED / "1" / "model.onnx"
CHECKPOINT = ROOT / "examples" / "checkpoints" / "fashion_mnist"
CONFIG = ROOT / "configs" / "fashion_mnist.toml"


def infera(*args, timeout=900):
    return subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def load_test_set():
    images = idx(DATA / "t10k-images-idx3-ubyte.gz").astype(np.float32)[:, None]
    labels = idx(DATA / "t10k-labels-idx1-ubyte.gz").astype(int)
    return images, labels


def accuracy(path, images, labels):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pred = np.concatenate([s.run(None, {"input": images[i:i + 1000]})[0].argmax(1)
                           for i in range(0, len(images), 1000)])
    return (pred == labels).mean(), pred


def entry(repo, name, model_file):
    """A repository entry for `model_file` with the shipped model's config under `name`."""
    d = repo / name
    (d / "1").mkdir(parents=True)
    shutil.copy(model_file, d / "1" / "model.onnx")
    shutil.copy(SHIPPED / "labels.txt", d / "labels.txt")
    cfg = (SHIPPED / "config.pbtxt").read_text().replace('name: "fashion_mnist"', f'name: "{name}"')
    (d / "config.pbtxt").write_text(cfg)


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "model_int8.onnx"
    r = infera("optimize", "quantize", "--model", FP32, "--calibration", "fashion-mnist",
               "--output", out, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    return out, json.loads(r.stdout), r.stderr


def test_static_int8_is_small_accurate_and_serves(int8, tmp_path, make_server):
    out, outcome, stderr = int8
    assert outcome["mode"] == "static" and len(outcome["quantized_layers"]) == 4
    fp32_size, int8_size = FP32.stat().st_size, out.stat().st_size
    assert outcome["fp32_bytes"] == fp32_size and outcome["int8_bytes"] == int8_size
    assert int8_size <= 0.30 * fp32_size, (int8_size, fp32_size)
    assert "% of FP32" in stderr and "check on fashion-mnist:test" in stderr

    # QDQ format: INT8 weights behind DequantizeLinear, activations through QuantizeLinear.
    raw = out.read_bytes()
    assert b"QuantizeLinear" in raw and b"DequantizeLinear" in raw

    # Accuracy on all 10,000 test images, with ONNX Runtime from Python: within 0.5 pt.
    images, labels = load_test_set()
    a32, p32 = accuracy(FP32, images, labels)
    a8, p8 = accuracy(out, images, labels)
    assert abs(a32 - a8) <= 0.005, (a32, a8)
    assert (p32 == p8).mean() > 0.98

    # It loads and serves in infera serve, next to the FP32 model, through Triton's client.
    repo = tmp_path / "repo"
    entry(repo, "fashion_mnist", FP32)
    entry(repo, "fashion_mnist_int8", out)
    server = make_server(repo)
    client = httpclient.InferenceServerClient(server.http)
    assert client.is_model_ready("fashion_mnist_int8")
    batch = images[:64]
    x = httpclient.InferInput("input", list(batch.shape), "FP32")
    x.set_data_from_numpy(batch)
    served = client.infer("fashion_mnist_int8", [x]).as_numpy("logits")
    assert (served.argmax(1) == p8[:64]).all()


def test_report_figures_are_consistent(int8, tmp_path):
    out, _, _ = int8
    md, js = tmp_path / "report.md", tmp_path / "report.json"
    r = infera("report", "--model", FP32, "--model", out, "--rounds", 2, "--round-ms", 300,
               "--output", js)
    assert r.returncode == 0, r.stderr
    rep = json.loads(js.read_text())
    assert "throughput b64" in r.stdout and "bound b64" in r.stdout     # the terminal table
    a, b = rep["models"]
    # Sizes are the files' sizes; ratios are the ratios of the reported figures.
    assert a["file_bytes"] == FP32.stat().st_size and b["file_bytes"] == out.stat().st_size
    assert b["compression"] == pytest.approx(a["file_bytes"] / b["file_bytes"], rel=1e-9)
    assert b["latency_speedup"] == pytest.approx(a["p50_ms_b1"] / b["p50_ms_b1"], rel=1e-9)
    assert b["throughput_speedup"] == pytest.approx(b["throughput_b64"] / a["throughput_b64"], rel=1e-9)
    assert a["latency_speedup"] == 1.0 and a["compression"] == 1.0
    # Parameters: the shipped CNN's weights and biases, counted by hand.
    weights = 32 * 9 + 32 + 64 * 32 * 9 + 64 + 3136 * 128 + 128 + 128 * 10 + 10
    assert a["params"] == weights + 2     # + the two normalisation constants
    # FLOPs per layer, by hand: 2 x output elements x inputs per output.
    flops = [l["flops_b1"] for l in a["layers"]]
    assert flops == [2 * 32 * 28 * 28 * 9, 2 * 64 * 14 * 14 * 32 * 9, 2 * 128 * 3136, 2 * 10 * 128]
    assert [l["flops_b1"] for l in b["layers"]] == flops
    assert a["flops_b1"] == sum(flops)
    assert [l["int8"] for l in b["layers"]] == [True] * 4 and not any(l["int8"] for l in a["layers"])
    for l in a["layers"] + b["layers"]:
        assert l["bound_b1"] in ("memory", "compute") and l["bound_b64"] in ("memory", "compute")
        assert l["intensity_b64"] >= l["intensity_b1"]     # weights are reused across the batch
    # fc1 reads 3136 x 128 weights for one image: memory-bound at batch 1 in FP32.
    assert a["layers"][2]["bound_b1"] == "memory"
    m = rep["machine"]
    assert m["peak_gflops_fp32"] > 0 and m["bandwidth_gbs"] > 0
    # Accuracy on the whole test set, as ONNX Runtime from Python computes it.
    images, labels = load_test_set()
    assert a["accuracy"] == pytest.approx(accuracy(FP32, images, labels)[0], abs=1e-9)
    assert rep["accuracy_images"] == 10000

    r = infera("report", "--model", FP32, "--model", out, "--rounds", 1, "--round-ms", 100,
               "--format", "markdown", "--data", "none", "--output", md)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("| model | size |") and "| accuracy |" in r.stdout
    assert md.read_text() == r.stdout


def test_quantize_from_an_image_folder_and_dynamic_mode(tmp_path):
    images, labels = load_test_set()
    folder = tmp_path / "photos"
    for i in range(60):
        d = folder / f"{labels[i]:02d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i, 0].astype(np.uint8)).resize((56, 56)).save(d / f"{i}.png")
    out = tmp_path / "folder_int8.onnx"
    r = infera("optimize", "quantize", "--model", FP32, "--calibration", folder, "--output", out,
               "--check", "none")
    assert r.returncode == 0, r.stderr
    a8, _ = accuracy(out, images[:2000], labels[:2000])
    a32, _ = accuracy(FP32, images[:2000], labels[:2000])
    assert abs(a8 - a32) < 0.01, (a8, a32)

    dyn = tmp_path / "dynamic.onnx"
    r = infera("optimize", "quantize", "--model", FP32, "--mode", "dynamic", "--output", dyn,
               "--check-size", 500, "--json")
    assert r.returncode == 0, r.stderr
    outcome = json.loads(r.stdout)
    assert outcome["mode"] == "dynamic" and b"ConvInteger" in dyn.read_bytes()
    assert abs(outcome["int8_accuracy"] - outcome["fp32_accuracy"]) < 0.01
    # The tool tells which way the speed went, whichever it is on this machine.
    assert ("does not pay" in r.stderr) == (outcome["speedup_b64"] < 1.0)


def test_clean_up_keeps_outputs(tmp_path):
    # The fixture CNN is PyTorch's export: Constant nodes and a Div/Sub/Div chain.
    src = ROOT / "tests" / "fixtures" / "model_repository" / "fashion_mnist" / "1" / "model.onnx"
    out = tmp_path / "clean.onnx"
    r = infera("optimize", "clean", "--model", src, "--output", out)
    assert r.returncode == 0, r.stderr
    # 16 nodes, 3 of them Constant, become initializers: 13 nodes are left.
    assert "16 -> 13 nodes (3 constants to initializers" in r.stderr, r.stderr
    images, _ = load_test_set()
    a = ort.InferenceSession(str(src)).run(None, {"input": images[:256]})[0]
    b = ort.InferenceSession(str(out)).run(None, {"input": images[:256]})[0]
    assert np.abs(a - b).max() < 1e-4


def test_bad_input_is_one_line_and_exit_1(tmp_path):
    cases = [
        (["optimize", "quantize", "--model", tmp_path / "missing.onnx", "--output", tmp_path / "o.onnx"],
         "missing.onnx"),
        (["optimize", "quantize", "--model", FP32, "--output", FP32], "same file"),
        (["optimize", "quantize", "--model", CONFIG, "--output", tmp_path / "o.onnx"], "not an ONNX model"),
        (["optimize", "quantize", "--model", FP32, "--output", tmp_path / "o.onnx",
          "--calibration", tmp_path / "nowhere"], "nowhere"),
        (["optimize", "quantize", "--model", FP32, "--output", tmp_path / "o.onnx",
          "--calibration-method", "median"], "unknown calibration method"),
        (["report", "--model", FP32, "--model", tmp_path / "missing.onnx"], "missing.onnx"),
        (["optimize", "prune", "--checkpoint", CHECKPOINT, "--amount", "1.5"], "--amount"),
    ]
    for args, needle in cases:
        r = infera(*args)
        assert r.returncode != 0, args
        # One line says what is wrong (clap adds a "--help" hint after it).
        first = r.stderr.strip().splitlines()[0]
        assert first.startswith("error:") and needle in first, (args, r.stderr)
        assert "panicked" not in r.stderr
        assert not (tmp_path / "o.onnx").exists()


def test_structured_pruning_with_fine_tuning(tmp_path, make_server):
    repo = tmp_path / "repo"
    r = infera("optimize", "prune", "--checkpoint", CHECKPOINT, "--amount", "0.3", "--structured",
               "--finetune-epochs", 2, "--config", CONFIG, "--runs-dir", tmp_path / "runs",
               "--run-id", "p30", "--no-progress", "--model-repository", repo,
               "--name", "fashion_mnist_pruned", timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((tmp_path / "runs" / "p30" / "prune.json").read_text())
    assert summary["architecture_after"] == {"architecture": "cnn", "channels": [22, 45], "hidden": 90,
                                             "dropout": summary["architecture_before"]["dropout"]}
    acc = summary["test_accuracy"]
    assert acc["fine_tuned"] >= acc["original"] - 0.01, acc
    assert summary["params_after"] < 0.6 * summary["params_before"]

    pruned = repo / "fashion_mnist_pruned" / "1" / "model.onnx"
    assert pruned.stat().st_size < 0.6 * FP32.stat().st_size
    # The exported model has the accuracy the trainer measured (same test set, ONNX Runtime).
    images, labels = load_test_set()
    a, _ = accuracy(pruned, images, labels)
    assert a == pytest.approx(acc["fine_tuned"], abs=0.002)
    # The original checkpoint is the shipped model.
    a32, _ = accuracy(FP32, images, labels)
    assert acc["original"] == pytest.approx(a32, abs=0.002)

    server = make_server(repo)
    client = httpclient.InferenceServerClient(server.http)
    x = httpclient.InferInput("input", [16, 1, 28, 28], "FP32")
    x.set_data_from_numpy(images[:16])
    served = client.infer("fashion_mnist_pruned", [x]).as_numpy("logits")
    assert (served.argmax(1) == labels[:16]).mean() > 0.7
