"""The shipped models' card tells the truth: docs/model-card.md's accuracy, macro F1 and
per-class precision / recall / F1 of each shipped model are recomputed here with ONNX Runtime on
the 10,000 test images, and the classes the card marks (bold) as below the 0.85 bar are exactly
those below it."""
import json
import os
import re
import subprocess

import numpy as np
import onnxruntime as ort
import pytest

from conftest import ROOT
from test_fashion_png_accuracy import DATA, idx

CARD = ROOT / "docs" / "model-card.md"
LABELS = (ROOT / "examples" / "model_repository" / "fashion_mnist" / "labels.txt").read_text().splitlines()
# (the card's heading of the model's metrics, the model)
SHIPPED = [
    ("## Metrics", ROOT / "examples" / "model_repository" / "fashion_mnist" / "1" / "model.onnx"),
    ("## Metrics of fashion_mnist_large",
     ROOT / "examples" / "model_repository" / "fashion_mnist_large" / "1" / "model.onnx"),
    ("## Metrics of fashion_mnist_large_int8",
     ROOT / "examples" / "model_repository" / "fashion_mnist_large_int8" / "1" / "model.onnx"),
]


def card_metrics(heading):
    text = CARD.read_text()
    section = text[text.index(heading + "\n"):]
    following = section.find("\n## ", len(heading))
    section = section if following < 0 else section[:following]
    m = re.search(r"\*\*Accuracy ([\d.]+)%, macro F1 ([\d.]+)\.\*\*", section)
    assert m, "the card's headline 'Accuracy X%, macro F1 Y.' is missing"
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in LABELS:
            rows[cells[0]] = [(float(c.strip("*")), c.startswith("**")) for c in cells[1:]]
    assert sorted(rows) == sorted(LABELS), rows.keys()
    return float(m.group(1)) / 100, float(m.group(2)), rows


@pytest.mark.parametrize("heading,model", SHIPPED, ids=[m.parent.parent.name for _, m in SHIPPED])
def test_the_model_card_matches_onnx_runtime_on_the_test_set(heading, model):
    accuracy, macro_f1, rows = card_metrics(heading)
    images = idx(DATA / "t10k-images-idx3-ubyte.gz").astype(np.float32)[:, None]
    truth = idx(DATA / "t10k-labels-idx1-ubyte.gz").astype(int)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    predicted = np.concatenate([sess.run(["logits"], {"input": images[i:i + 1000]})[0].argmax(1)
                                for i in range(0, len(images), 1000)])
    assert len(predicted) == 10_000
    assert abs((predicted == truth).mean() - accuracy) <= 0.00005
    f1s = []
    for k, label in enumerate(LABELS):
        tp = int(((predicted == k) & (truth == k)).sum())
        precision = tp / max(int((predicted == k).sum()), 1)
        recall = tp / max(int((truth == k).sum()), 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-12)
        f1s.append(f1)
        (p_card, p_bold), (r_card, r_bold), (f_card, _) = rows[label]
        for name, got, card in [("precision", precision, p_card), ("recall", recall, r_card), ("F1", f1, f_card)]:
            assert abs(got - card) <= 0.0005, f"{label} {name}: card {card}, measured {got:.4f}"
        # Bold marks a figure under the shop's bar of 0.85, and only those.
        assert p_bold == (precision < 0.85) and r_bold == (recall < 0.85), label
    assert abs(np.mean(f1s) - macro_f1) <= 0.0005


def built_in(*args):
    """`infera ARGS` on the repository compiled into the binary (no INFERA_MODEL_REPOSITORY)."""
    env = {k: v for k, v in os.environ.items() if k != "INFERA_MODEL_REPOSITORY"}
    return subprocess.run([os.environ["INFERA_BIN"], *map(str, args)],
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.parametrize("model", ["fashion_mnist_large", "fashion_mnist_large_int8"])
def test_the_built_in_repository_serves_the_large_models_as_the_card_says(model, tmp_path):
    """The models are compiled into infera: served by its own backend, they score what the card says."""
    accuracy, macro_f1, _ = card_metrics(f"## Metrics of {model}")
    r = built_in("evaluate", "--model", model, "--output-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["examples"] == 10_000
    assert abs(m["accuracy"] - accuracy) <= 0.00005 and abs(m["macro_f1"] - macro_f1) <= 0.0005, m


def test_the_large_image_ensemble_classifies_photos_as_the_int8_model_does_tensors(tmp_path):
    """fashion_mnist_large_image (decode → fashion_mnist_large_int8 → postprocess), built in, run by
    `infera predict` over 2,000 test images as PNG files: the same predictions as the model on tensors."""
    from test_image_preprocess import png_gray
    n = 2000
    images = idx(DATA / "t10k-images-idx3-ubyte.gz")[:n]
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, img in enumerate(images):
        (folder / f"{i:05d}.png").write_bytes(png_gray(img))
    out = tmp_path / "p.csv"
    r = built_in("predict", "--model", "fashion_mnist_large_image", "--input", folder, "--output", out)
    assert r.returncode == 0, r.stderr
    assert f"{n} images in" in r.stderr and "images/s)" in r.stderr, r.stderr
    rows = out.read_text().splitlines()[1:]
    assert len(rows) == n
    got = np.array([int(row.split(",")[1]) for row in rows])
    model = ROOT / "examples" / "model_repository" / "fashion_mnist_large_int8" / "1" / "model.onnx"
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    want = sess.run(["logits"], {"input": images.astype(np.float32)[:, None]})[0].argmax(1)
    assert (got == want).mean() >= 0.999, (got != want).sum()
