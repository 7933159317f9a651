"""Triton's model control modes with the real clients. none (the default): every model loads
and load/unload are refused with Triton's message over HTTP and gRPC. explicit: only the
--load-model models load at start, then load/unload work. poll: the server follows the
repository: a new model folder loads, a config edit and a new version reload (the old version
serving meanwhile), a removed folder unloads; load/unload are refused."""
import json
import shutil
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import Server, copy_repo

MESSAGE = "explicit model load / unload is not allowed if polling is enabled"


def index(s):
    req = urllib.request.Request(f"http://{s.http}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return {m["name"]: m for m in json.loads(r.read())}


def wait_for(check, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_none_mode_loads_everything_and_refuses_changes(tmp_path):
    s = Server(copy_repo(tmp_path), "--model-control-mode", "none")
    try:
        assert all(m["state"] == "READY" for m in index(s).values())
        h = httpclient.InferenceServerClient(s.http)
        with pytest.raises(InferenceServerException, match=MESSAGE):
            h.unload_model("simple")
        g = grpcclient.InferenceServerClient(s.grpc)
        with pytest.raises(InferenceServerException, match=MESSAGE) as e:
            g.load_model("simple")
        assert "UNAVAILABLE" in str(e.value.status())
        assert h.is_model_ready("simple")
    finally:
        s.stop()


def test_explicit_mode_loads_only_what_it_is_told(tmp_path):
    s = Server(copy_repo(tmp_path), "--model-control-mode", "explicit", "--load-model", "simple")
    try:
        idx = index(s)
        assert idx["simple"]["state"] == "READY"
        assert idx["iris"]["state"] == "UNAVAILABLE"
        h = httpclient.InferenceServerClient(s.http)
        h.load_model("iris")
        assert h.is_model_ready("iris")
        h.unload_model("simple")
        assert not h.is_model_ready("simple")
    finally:
        s.stop()


def test_load_model_needs_explicit_mode(tmp_path):
    with pytest.raises(RuntimeError, match="--load-model needs --model-control-mode explicit"):
        Server(copy_repo(tmp_path), "--model-control-mode", "poll", "--load-model", "simple")


def config(s, model):
    with urllib.request.urlopen(f"http://{s.http}/v2/models/{model}/config", timeout=10) as r:
        return json.loads(r.read())


def test_poll_mode_follows_the_repository(tmp_path):
    repo = copy_repo(tmp_path)
    s = Server(repo, "--model-control-mode", "poll", "--repository-poll-secs", "1")
    try:
        h = httpclient.InferenceServerClient(s.http)
        with pytest.raises(InferenceServerException, match=MESSAGE):
            h.load_model("simple")
        # A new model folder loads.
        shutil.copytree(repo / "iris", repo / "iris_copy")
        cfg = repo / "iris_copy" / "config.pbtxt"
        cfg.write_text(cfg.read_text().replace('name: "iris"', 'name: "iris_copy"'))
        wait_for(lambda: index(s).get("iris_copy", {}).get("state") == "READY", "iris_copy to load")
        # A config edit reloads; the model serves throughout.
        simple = repo / "simple" / "config.pbtxt"
        simple.write_text(simple.read_text().replace("max_batch_size: 8", "max_batch_size: 4"))
        wait_for(lambda: config(s, "simple")["max_batch_size"] == 4, "simple's new config")
        # A new version loads beside the old one (Triton's default policy: the newest serves).
        shutil.copytree(repo / "simple" / "1", repo / "simple" / "2")
        wait_for(lambda: "2" in json.loads(urllib.request.urlopen(
            f"http://{s.http}/v2/models/simple", timeout=10).read())["versions"], "simple version 2")
        inputs = []
        for n in ("INPUT0", "INPUT1"):
            i = httpclient.InferInput(n, [1, 16], "INT32")
            i.set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
            inputs.append(i)
        assert h.infer("simple", inputs).get_response()["model_version"] == "2"
        # A removed folder unloads.
        shutil.rmtree(repo / "iris_copy")
        wait_for(lambda: not h.is_model_ready("iris_copy"), "iris_copy to unload")
        assert "iris_copy" not in index(s) or index(s)["iris_copy"]["state"] != "READY"
        assert h.is_model_ready("iris") and h.is_model_ready("fashion_mnist_image")
    finally:
        s.stop()
