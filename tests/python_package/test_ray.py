"""Ray Data over a local Ray cluster (2 CPUs, 127.0.0.1): `map_batches` with
infera.ray.ImageClassifier gives the same predictions as `infera predict`."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(sys.executable).with_name("infera")


@pytest.fixture(scope="module")
def ray_cluster():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()


def test_map_batches_equals_infera_predict(ray_cluster, photo_folder, tmp_path):
    import infera.ray

    ray = ray_cluster
    out = tmp_path / "cli.csv"
    r = subprocess.run([str(SCRIPT), "predict", "--input", str(photo_folder), "--output", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    want = {row["filename"]: row for row in csv.DictReader(out.open())}
    assert len(want) == 2000

    ds = ray.data.read_binary_files(str(photo_folder), include_paths=True)
    rows = ds.map_batches(
        infera.ray.ImageClassifier,
        fn_constructor_kwargs={"model": "fashion_mnist_image"},
        concurrency=2,
        # Half a CPU each: two actors leave the cluster's 2 CPUs room for the read tasks
        # (infera runs the model on its own threads anyway).
        num_cpus=0.5,
        batch_size=64,
    ).take_all()
    assert len(rows) == 2000
    assert "bytes" not in rows[0]
    for row in rows:
        name = Path(row["path"]).name
        expected = want[name]
        assert int(row["predicted_class"]) == int(expected["predicted_class"]), name
        assert row["predicted_label"] == expected["predicted_label"]
        assert abs(float(row["confidence"]) - float(expected["confidence"])) < 1e-6
        assert abs(float(row["prob_Ankle boot"]) - float(expected["prob_Ankle boot"])) < 1e-6


def test_tensor_model_on_a_tensor_column(ray_cluster, test_images):
    import infera.ray

    ray = ray_cluster
    images = test_images[0][:256].astype(np.float32)[:, None]
    ds = ray.data.from_numpy(images).map_batches(
        infera.ray.TensorModel,
        fn_constructor_kwargs={"model": "fashion_mnist", "inputs": {"input": "data"}},
        concurrency=1,
        num_cpus=0.5,
        batch_size=64,
    )
    rows = ds.take_all()
    assert len(rows) == 256
    import infera

    model = infera.Repository().model("fashion_mnist")
    want = np.concatenate([model.infer({"input": images[i : i + 64]})["logits"] for i in range(0, 256, 64)])
    got = np.stack([r["logits"] for r in rows])
    np.testing.assert_allclose(np.sort(got, axis=0), np.sort(want, axis=0), rtol=1e-6, atol=1e-6)
