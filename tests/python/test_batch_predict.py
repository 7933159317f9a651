"""`infera predict` over folders of images: the CSV our users consume, errors to their own
file, and crash safety: `kill -9` mid-run, then `--resume`, gives byte-identical output to an
uninterrupted run (issue #5)."""
import csv
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import reference
from conftest import FIXTURES
from test_fashion_png_accuracy import DATA, idx
from test_image_preprocess import png_gray

BIN = os.environ["INFERA_BIN"]
LABELS = (FIXTURES / "fashion_mnist" / "labels.txt").read_text().splitlines()
N = 3000


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """N Fashion-MNIST test images as PNGs in nested folders, plus broken and non-image files."""
    root = tmp_path_factory.mktemp("photos")
    images = idx(DATA / "t10k-images-idx3-ubyte.gz")[:N]
    labels = idx(DATA / "t10k-labels-idx1-ubyte.gz")[:N]
    truth = {}
    for i, (img, y) in enumerate(zip(images, labels)):
        rel = Path(LABELS[y].replace("/", "-")) / f"img_{i:05d}.png"
        (root / rel.parent).mkdir(exist_ok=True)
        (root / rel).write_bytes(png_gray(img))
        truth[str(rel)] = int(y)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("not an image, skipped")
    pred = reference.run("fashion_mnist", {"input": images.astype(np.float32)[:, None]})["logits"].argmax(1)
    return root, truth, float((pred == labels).mean())


def predict(*args, repo=FIXTURES, check=True):
    cmd = [BIN, "predict", "--model-repository", str(repo), "--model", "fashion_mnist_image", *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_csv_has_a_row_per_image_and_the_models_accuracy(photos, tmp_path):
    root, truth, tensor_acc = photos
    out = tmp_path / "predictions.csv"
    r = predict("--input", root, "--output", out, "--recursive")
    assert f"{N + 2} images" in r.stderr and "2 unreadable" in r.stderr, r.stderr
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0].keys()) == ["filename", "predicted_class", "predicted_label", "confidence"] + \
        [f"prob_{label}" for label in LABELS]
    assert len(rows) == N and [r["filename"] for r in rows] == sorted(truth)
    acc = np.mean([int(r["predicted_class"]) == truth[r["filename"]] for r in rows])
    assert abs(acc - tensor_acc) <= 0.001, (acc, tensor_acc)
    for r in rows[:50]:
        probs = [float(r[f"prob_{label}"]) for label in LABELS]
        assert abs(sum(probs) - 1) < 1e-4 and LABELS[int(r["predicted_class"])] == r["predicted_label"]
        assert float(r["confidence"]) == max(probs)
    errors = list(csv.DictReader((tmp_path / "predictions.errors.csv").open()))
    assert {e["filename"] for e in errors} == {"broken.png", "empty.jpg"}
    assert all(e["error"] for e in errors)
    assert not any(p.name.endswith((".partial", ".checkpoint", ".files.json")) for p in tmp_path.iterdir())


def test_not_recursive_reads_only_the_top_folder_and_jsonl(photos, tmp_path):
    root, _, _ = photos
    out = tmp_path / "p.jsonl"
    predict("--input", root, "--output", out, "--format", "jsonl")
    assert out.read_text() == ""  # the top folder has only broken files
    sub = root / "Trouser"
    predict("--input", sub, "--output", out, "--format", "jsonl", "--overwrite")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(list(sub.iterdir())) and set(lines[0]["probabilities"]) == set(LABELS)
    assert np.mean([line["predicted_label"] == "Trouser" for line in lines]) > 0.8


def checkpoint_done(path):
    try:
        return json.loads(path.read_text())["done"]
    except (OSError, ValueError):
        return 0


def test_kill_9_then_resume_gives_identical_output(photos, tmp_path):
    root, _, _ = photos
    full = tmp_path / "full.csv"
    predict("--input", root, "--output", full, "--recursive", "--batch-size", "16")
    out = tmp_path / "killed.csv"
    ck = Path(str(out) + ".checkpoint")
    cmd = [BIN, "predict", "--model-repository", str(FIXTURES), "--model", "fashion_mnist_image",
           "--input", str(root), "--output", str(out), "--recursive", "--batch-size", "16"]
    kills = 0
    seed = int(time.time())
    points = sorted(random.Random(seed).sample(range(N // 10, 9 * N // 10, 16), 3))
    print(f"kill points (seed {seed}): {points}")
    for target in points:
        p = subprocess.Popen(cmd + (["--resume"] if kills else []), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while checkpoint_done(ck) < target and p.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
        assert not out.exists(), "the output appears only when the run is complete"
    assert kills >= 2, f"the run finished before it could be killed at {points}; make it longer"
    # Without --resume the interrupted run is not silently overwritten.
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode != 0 and "--resume" in r.stderr
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "resumed after" in r.stderr
    assert out.read_bytes() == full.read_bytes()
    assert (tmp_path / "killed.errors.csv").read_bytes() == (tmp_path / "full.errors.csv").read_bytes()
    assert not ck.exists()


@pytest.mark.parametrize("args,needle", [
    (["--input", "/nonexistent/dir"], "not a directory"),
    (["--input", "{root}", "--model", "iris"], "not encoded images"),
    (["--input", "{root}", "--model", "nope"], "nope"),
    (["--input", "{root}", "--resume"], "nothing to resume"),
    (["--input", "{root}", "--format", "xml"], "csv or jsonl"),
])
def test_bad_input_is_a_one_line_error(photos, tmp_path, args, needle):
    root, _, _ = photos
    args = [a.replace("{root}", str(root)) for a in args]
    cmd = [BIN, "predict", "--model-repository", str(FIXTURES), "--output", str(tmp_path / "o.csv"), *args]
    if "--model" not in args:
        cmd += ["--model", "fashion_mnist_image"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and needle in r.stderr, r.stderr
    assert not (tmp_path / "o.csv").exists()


def test_existing_output_needs_overwrite(photos, tmp_path):
    root, _, _ = photos
    out = tmp_path / "o.csv"
    out.write_text("keep me")
    r = predict("--input", root / "Bag", "--output", out, check=False)
    assert r.returncode != 0 and "--overwrite" in r.stderr
    assert out.read_text() == "keep me"
