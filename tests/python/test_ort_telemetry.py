"""ONNX Runtime's official builds keep a device id and an event database and start an uploader to
Microsoft from every process that loads them, unless ORT_DISABLE_TELEMETRY is set before they
initialize. infera sets it in every program that loads the library, and keeps a user's own value."""
import os
import subprocess
from pathlib import Path

import onnxruntime
import pytest

from conftest import FIXTURES, ROOT
from test_fashion_png_accuracy import DATA, idx
from test_image_preprocess import png_gray

BIN = os.environ["INFERA_BIN"]
TRAINER = Path(BIN).with_name("infera-trainer")


def ort_library():
    capi = Path(onnxruntime.__file__).parent / "capi"
    return max(capi.glob("libonnxruntime.so*"), key=lambda p: len(p.name))


def telemetry_dir(home):
    return home / ".cache" / "Microsoft" / "DeveloperTools"


def run(cmd, home, tmp, **extra_env):
    """`cmd` as on a user's machine: a fresh HOME and only the basic variables. ONNX Runtime keeps
    its telemetry quiet when it sees a CI system's variables (CI=true and others), so the test
    environment's own are left out."""
    env = {k: os.environ[k] for k in ("PATH", "LD_LIBRARY_PATH", "LANG") if k in os.environ}
    env.update(HOME=str(home), TMPDIR=str(tmp), ORT_DYLIB_PATH=str(ort_library()), **extra_env)
    r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for i, img in enumerate(idx(DATA / "t10k-images-idx3-ubyte.gz")[:8]):
        (root / f"{i}.png").write_bytes(png_gray(img))
    return root


def predict(photos, out):
    return [BIN, "predict", "--model-repository", FIXTURES, "--model", "fashion_mnist_image",
            "--input", photos, "--output", out]


def test_infera_predict_leaves_no_telemetry_state(photos, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    run(predict(photos, tmp_path / "p.csv"), home, tmp_path)
    assert (tmp_path / "p.csv").read_text().count("\n") == 9
    assert not telemetry_dir(home).exists(), sorted(p.name for p in telemetry_dir(home).rglob("*"))


def test_an_explicit_user_setting_is_kept(photos, tmp_path):
    # Also shows that the check above can fail: with telemetry left on, ONNX Runtime writes its
    # device id under HOME as soon as it loads.
    home = tmp_path / "home"
    home.mkdir()
    run(predict(photos, tmp_path / "p.csv"), home, tmp_path, ORT_DISABLE_TELEMETRY="0")
    if not telemetry_dir(home).exists():
        pytest.skip("this ONNX Runtime build keeps no telemetry state on this machine")
    assert (telemetry_dir(home) / ".onnxruntime" / "deviceid").exists()


def test_the_trainers_export_check_leaves_no_telemetry_state(tmp_path):
    # `infera-trainer export` runs ONNX Runtime beside burn on test images to check the file.
    home = tmp_path / "home"
    home.mkdir()
    checkpoint = ROOT / "examples" / "checkpoints" / "fashion_mnist"
    run([TRAINER, "export", "--checkpoint", checkpoint, "--model-repository", tmp_path / "repo",
         "--name", "m", "--parity-images", "64"], home, tmp_path)
    assert (tmp_path / "repo" / "m" / "1" / "model.onnx").exists()
    assert not telemetry_dir(home).exists()
