"""The `infera` Python package against the reference library (Python onnxruntime on the same
ONNX files), the server's /predict, `infera predict`, and tritonclient."""
import csv
import json
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import infera
from conftest import EXAMPLES, free_port, png

SCRIPT = Path(sys.executable).with_name("infera")


def reference(model: str, feeds: dict) -> dict:
    sess = ort.InferenceSession(str(EXAMPLES / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


@pytest.fixture(scope="module")
def repo():
    return infera.Repository(EXAMPLES)


def test_cnn_equals_onnxruntime_on_real_images(repo, test_images):
    model = repo.model("fashion_mnist")
    assert [(t.name, t.datatype, t.shape) for t in model.inputs] == [("input", "FP32", (-1, 1, 28, 28))]
    x = test_images[0][:64].astype(np.float32)[:, None]
    got = model.infer({"input": x})
    assert list(got) == ["logits"] and got["logits"].dtype == np.float32
    np.testing.assert_allclose(got["logits"], reference("fashion_mnist", {"input": x})["logits"], rtol=1e-6, atol=1e-6)
    # A batch of one too (no batching involved).
    one = model.infer({"input": x[:1]})["logits"]
    np.testing.assert_allclose(one, reference("fashion_mnist", {"input": x[:1]})["logits"], rtol=1e-6, atol=1e-6)


def test_iris_random_forest_labels_exact_probabilities_close(repo):
    model = repo.model("iris")
    rng = np.random.default_rng(7)
    x = (rng.random((50, 4)) * [4, 2.5, 6, 2.5] + [4.3, 2.0, 1.0, 0.1]).astype(np.float32)
    got = model.infer({"float_input": x})
    want = reference("iris", {"float_input": x})
    assert set(got) == set(want)
    for name, value in want.items():
        # The served shape is the config's: the label is [N, 1] where the ONNX graph says [N].
        served = got[name].reshape(value.shape)
        if value.dtype.kind in "iu":
            assert got[name].dtype == value.dtype
            np.testing.assert_array_equal(served, value)
        else:
            np.testing.assert_allclose(served, value, rtol=1e-6, atol=1e-6)


def test_int32_add_sub_exact(repo):
    model = repo.model("simple")
    a = np.arange(48, dtype=np.int32).reshape(3, 16) * 1000003
    b = np.full((3, 16), -7, dtype=np.int32)
    got = model.infer({"INPUT0": a, "INPUT1": b})
    want = reference("simple", {"INPUT0": a, "INPUT1": b})
    for name in ("OUTPUT0", "OUTPUT1"):
        assert got[name].dtype == np.int32
        np.testing.assert_array_equal(got[name], want[name])
    # Only the outputs asked for.
    assert list(model.infer({"INPUT0": a, "INPUT1": b}, outputs=["OUTPUT1"])) == ["OUTPUT1"]


def test_the_built_in_repository_needs_no_path():
    model = infera.Repository().model("fashion_mnist_image")
    assert model.inputs[0].datatype == "BYTES"


def test_bad_input_raises_the_right_exception(repo):
    with pytest.raises(infera.NotFoundError):
        repo.model("no_such_model")
    model = repo.model("fashion_mnist")
    with pytest.raises(infera.InvalidInputError, match="float64"):
        model.infer({"input": np.zeros((1, 1, 28, 28))})
    with pytest.raises(infera.InvalidInputError, match="shape|dims|28"):
        model.infer({"input": np.zeros((1, 1, 27, 28), np.float32)})
    with pytest.raises(infera.InferaError, match="input"):
        model.infer({"nope": np.zeros((1, 1, 28, 28), np.float32)})
    images = repo.model("fashion_mnist_image")
    with pytest.raises(infera.InvalidInputError, match="image"):
        images.predict_images([b"not an image"])
    assert issubclass(infera.InvalidInputError, infera.InferaError)
    assert issubclass(infera.InferaError, Exception)


def test_threads_get_correct_results_and_are_batched(repo, test_images):
    model = repo.model("fashion_mnist")
    x = test_images[0][:256].astype(np.float32)[:, None]
    want = reference("fashion_mnist", {"input": x})["logits"]
    before = model.statistics()
    failures = []

    def worker(k):
        for i in range(k, 256, 8):
            got = model.infer({"input": x[i : i + 1]})["logits"][0]
            if not np.allclose(got, want[i], rtol=1e-5, atol=1e-5):
                failures.append(i)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    after = model.statistics()
    served = after["inference_count"] - before["inference_count"]
    runs = after["execution_count"] - before["execution_count"]
    assert served == 256
    # The GIL is released while a request waits, so the scheduler sees several at once.
    assert runs < served, (runs, served)


def test_predict_images_equals_the_servers_predict(photo_folder):
    files = sorted(photo_folder.glob("*.png"))[:40]
    model = infera.Repository().model("fashion_mnist_image")
    from_paths = model.predict_images(files)
    from_bytes = model.predict_images([f.read_bytes() for f in files])
    http = free_port()
    with infera.serve(http_port=http, grpc_port=free_port(), metrics_port=free_port()) as server:
        assert server.running
        for f, a, b in zip(files, from_paths, from_bytes):
            req = urllib.request.Request(f"http://127.0.0.1:{http}/predict", data=f.read_bytes(), method="POST")
            with urllib.request.urlopen(req, timeout=30) as r:
                answer = json.load(r)
            for key in ("predicted_class", "predicted_label", "model"):
                assert a[key] == answer[key] == b[key], (f, key)
            assert a["probabilities"].keys() == answer["probabilities"].keys()
            for label, p in answer["probabilities"].items():
                assert abs(a["probabilities"][label] - p) < 1e-6
            assert abs(a["confidence"] - answer["confidence"]) < 1e-6
    assert not server.running


def test_predict_folder_equals_infera_predict(photo_folder, tmp_path):
    model = infera.Repository().model("fashion_mnist_image")
    ours = tmp_path / "python.csv"
    model.predict_folder(photo_folder, ours)
    cli = tmp_path / "cli.csv"
    r = subprocess.run(
        [str(SCRIPT), "predict", "--model", "fashion_mnist_image", "--input", str(photo_folder), "--output", str(cli)],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(ours.open()))
    assert len(rows) == 2000
    assert ours.read_bytes() == cli.read_bytes()
    with pytest.raises(infera.InferaError, match="exists|overwrite"):
        model.predict_folder(photo_folder, ours)


def test_serve_works_with_tritonclient_and_stops_cleanly():
    import tritonclient.http as httpclient

    http = free_port()
    server = infera.serve(EXAMPLES, http_port=http, grpc_port=free_port(), metrics_port=free_port())
    try:
        client = httpclient.InferenceServerClient(server.url)
        assert client.is_server_ready() and client.is_model_ready("simple")
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(a)
        result = client.infer("simple", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a * 2)
        client.close()
    finally:
        server.stop()
    assert not server.running
    # The ports are free again: a second server in the same process starts on them.
    with infera.serve(EXAMPLES, http_port=http, grpc_port=free_port(), metrics_port=free_port()):
        pass


def test_serve_reports_a_bad_flag():
    with pytest.raises(infera.InferaError, match="no-such-flag"):
        infera.serve(http_port=free_port(), no_such_flag=1)


def test_console_script_help_and_predict(photo_folder, tmp_path):
    assert SCRIPT.exists(), SCRIPT
    r = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "serve" in r.stdout and "predict" in r.stdout
    small = tmp_path / "small"
    small.mkdir()
    for f in sorted(photo_folder.glob("*.png"))[:20]:
        shutil.copy(f, small / f.name)
    out = tmp_path / "out.csv"
    r = subprocess.run([str(SCRIPT), "predict", "--input", str(small), "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(list(csv.DictReader(out.open()))) == 20
    r = subprocess.run([str(SCRIPT), "predict", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "x.csv")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("error:") and r.stderr.count("\n") == 1, r.stderr


def test_help_is_useful():
    doc = infera.__doc__
    assert "Repository" in doc and "serve" in doc
    assert "predict_images" in (infera.Model.__doc__ + infera.Model.predict_images.__doc__)


def test_importing_infera_turns_onnxruntime_telemetry_off(tmp_path):
    # ONNX Runtime's wheel keeps a device id and an event database under HOME and uploads events
    # to Microsoft unless ORT_DISABLE_TELEMETRY is set before it initializes; `import infera`
    # sets it (a user's own value is kept). A fresh HOME shows whether the library wrote its state.
    import os

    code = (
        "import os, numpy as np, infera\n"
        "m = infera.Repository().model('fashion_mnist')\n"
        "print(m.infer({'input': np.zeros((1, 1, 28, 28), np.float32)})['logits'].shape)\n"
        "print(os.environ['ORT_DISABLE_TELEMETRY'])\n"
    )
    # Only the basic variables, as on a user's machine: ONNX Runtime stays quiet under CI's.
    env = {k: os.environ[k] for k in ("PATH", "LD_LIBRARY_PATH", "LANG") if k in os.environ}
    env.update(HOME=str(tmp_path), TMPDIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["(1,", "10)", "1"], r.stdout
    assert not (tmp_path / ".cache" / "Microsoft").exists()
