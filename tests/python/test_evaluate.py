"""`infera evaluate` (issue #3): the metrics of a served model on Fashion-MNIST, checked
against numpy on Python onnxruntime's logits of the same model."""
import json
import os
import subprocess

import numpy as np

import reference
from conftest import FIXTURES
from test_fashion_png_accuracy import DATA, idx

BIN = os.environ["INFERA_BIN"]
LABELS = (FIXTURES / "fashion_mnist" / "labels.txt").read_text().splitlines()


def evaluate(*args):
    return subprocess.run([BIN, "evaluate", "--model-repository", str(FIXTURES), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_metrics_match_an_independent_computation(tmp_path):
    r = evaluate("--model", "fashion_mnist", "--output-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "metrics.json").read_text())
    png = (tmp_path / "confusion_matrix.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000

    images = idx(DATA / "t10k-images-idx3-ubyte.gz")
    truth = idx(DATA / "t10k-labels-idx1-ubyte.gz").astype(int)
    pred = reference.run("fashion_mnist", {"input": images.astype(np.float32)[:, None]})["logits"].argmax(1)
    cm = np.zeros((10, 10), dtype=int)
    np.add.at(cm, (truth, pred), 1)
    assert m["confusion"] == cm.tolist()
    assert m["examples"] == 10000
    assert abs(m["accuracy"] - (pred == truth).mean()) < 1e-12
    precision = np.diag(cm) / np.maximum(cm.sum(0), 1)
    recall = np.diag(cm) / np.maximum(cm.sum(1), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0)
    for c, row in enumerate(m["per_class"]):
        assert row["label"] == LABELS[c]
        assert abs(row["precision"] - precision[c]) < 1e-12 and abs(row["recall"] - recall[c]) < 1e-12
        assert abs(row["f1"] - f1[c]) < 1e-12 and row["support"] == 1000
    assert abs(m["macro_f1"] - f1.mean()) < 1e-12
    assert "accuracy" in r.stdout and "Shirt" in r.stdout


def test_bad_input_is_one_line_and_exit_1(tmp_path):
    for args, want in [
        (["--data-dir", tmp_path], "dataset-fashion-mnist"),
        (["--model", "iris"], "pixels"),
        (["--model", "nope"], "nope"),
    ]:
        r = evaluate(*args, "--output-dir", tmp_path / "out")
        assert r.returncode == 1 and want in r.stderr, (args, r.stderr)
        assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: "), r.stderr
    assert not (tmp_path / "out").exists()
