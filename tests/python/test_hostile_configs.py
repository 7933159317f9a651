"""Hostile clients against the repository API: configs are untrusted input (paths stay in
the model's folder, numbers are bounded, ensembles acyclic), and loading is transactional
(a failed load never takes a serving model, or the ensembles using it, offline).

Every case ends with the server alive, its peak RSS bounded and no file outside the
repository opened (`hostile.Hostile.check`)."""
import json

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from hostile import checked, error_of, hostile, http  # noqa: F401  (fixtures)
from test_image_preprocess import png_gray

IMAGE = png_gray(np.full((28, 28), 128, dtype=np.uint8))


def load(h, model, config=None, headers=None):
    body = {"parameters": {"config": config if isinstance(config, str) else json.dumps(config)}} if config else {}
    return http(h.server, "POST", f"/v2/repository/models/{model}/load", json.dumps(body).encode(),
                {"Content-Type": "application/json", **(headers or {})})


def cnn_config(**changes):
    cfg = {
        "name": "fashion_mnist", "platform": "onnxruntime_onnx", "max_batch_size": 64,
        "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, 28, 28]}],
        "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10], "label_filename": "labels.txt"}],
        "dynamic_batching": {},
    }
    cfg.update(changes)
    return cfg


def post_config(**params):
    cfg = {
        "name": "fashion_postprocess", "backend": "classify_postprocess", "max_batch_size": 64,
        "input": [{"name": "LOGITS", "data_type": "TYPE_FP32", "dims": [10]}],
        "output": [{"name": "PROBABILITIES", "data_type": "TYPE_FP32", "dims": [10]},
                   {"name": "TOP_SCORES", "data_type": "TYPE_FP32", "dims": [3]},
                   {"name": "TOP_CLASSES", "data_type": "TYPE_INT64", "dims": [3]},
                   {"name": "TOP_LABELS", "data_type": "TYPE_STRING", "dims": [3]},
                   {"name": "LABEL", "data_type": "TYPE_STRING", "dims": [1]}],
        "dynamic_batching": {},
        "parameters": {"top_k": {"string_value": "3"}, "labels": {"string_value": "labels.txt"}},
    }
    for k, v in params.items():
        cfg["parameters"][k] = {"string_value": v}
    return cfg


def still_serving(h):
    """The CNN, the image ensemble and /predict all answer, and the index says READY."""
    c = httpclient.InferenceServerClient(h.server.http)
    assert c.is_model_ready("fashion_mnist") and c.is_model_ready("fashion_mnist_image")
    status, _, body = http(h.server, "POST", "/predict", IMAGE, {"Content-Type": "image/png"})
    assert status == 200, body
    assert json.loads(body)["predicted_label"]


def index_reason(h, model):
    status, _, body = http(h.server, "POST", "/v2/repository/index", b"{}")
    entry = next(e for e in json.loads(body) if e["name"] == model)
    return entry["state"], entry["reason"]


@pytest.mark.parametrize("field,config", [
    ("label_filename ../", lambda h: cnn_config(output=[{"name": "logits", "data_type": "TYPE_FP32", "dims": [10],
                                                         "label_filename": "../../honeypot/secret.txt"}])),
    ("label_filename absolute", lambda h: cnn_config(output=[{"name": "logits", "data_type": "TYPE_FP32", "dims": [10],
                                                              "label_filename": str(h.honeypot.secret)}])),
    ("label_filename symlink", lambda h: cnn_config(output=[{"name": "logits", "data_type": "TYPE_FP32", "dims": [10],
                                                             "label_filename": "leak.txt"}])),
    ("default_model_filename", lambda h: cnn_config(default_model_filename="../../../honeypot/secret.txt")),
    ("labels parameter", lambda h: post_config(labels="../../honeypot/secret.txt")),
    ("labels parameter symlink", lambda h: post_config(labels="leak.txt")),
])
def test_paths_in_configs_stay_inside_the_model_folder(hostile, field, config):
    h = hostile
    model = "fashion_postprocess" if "labels" in field else "fashion_mnist"
    cfg = config(h)
    status, _, body = load(h, model, cfg)
    assert status == 400, body
    err = error_of(body)
    assert "inside the model's folder" in err, err
    assert "HONEYPOT" not in err
    # The same answer for an outside file that does not exist: no existence oracle.
    missing = json.loads(json.dumps(cfg).replace("secret.txt", "missing.txt").replace("leak.txt", "dangling.txt"))
    status2, _, body2 = load(h, model, missing)
    assert status2 == 400
    assert error_of(body2).replace("missing.txt", "X").replace("dangling.txt", "X") == \
        err.replace("secret.txt", "X").replace("leak.txt", "X")
    state, reason = index_reason(h, model)
    assert state == "READY" and "previous config keeps serving" in reason
    still_serving(h)


@pytest.mark.parametrize("changes,needle", [
    ({"max_batch_size": 2_000_000_000}, "max_batch_size"),
    ({"dynamic_batching": {"priority_levels": "4294967296", "default_priority_level": "1"}}, "priority_levels"),
    ({"dynamic_batching": {"preferred_batch_size": list(range(1, 65))}}, "preferred_batch_size"),
    ({"dynamic_batching": {"max_queue_delay_microseconds": "18446744073709551615"}}, "max_queue_delay"),
    ({"dynamic_batching": {"default_queue_policy": {"default_timeout_microseconds": "18446744073709551615"}}}, "default_timeout"),
    ({"dynamic_batching": {"default_queue_policy": {"max_queue_size": 4294967295}}}, "max_queue_size"),
    ({"instance_group": [{"count": 1_000_000_000, "kind": "KIND_CPU"}]}, "instance_group"),
    ({"instance_group": [{"count": 40, "kind": "KIND_CPU"}, {"count": 40, "kind": "KIND_CPU"}]}, "instance_group"),
    ({"input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [100000, 100000, 100000]}]}, "dims"),
    ({"parameters": {"intra_op_thread_count": {"string_value": "1000000"}}}, "intra_op_thread_count"),
    ({"version_policy": {"latest": {"num_versions": 4000000000}}}, "num_versions"),
    ({"model_warmup": [{"name": "w", "batch_size": 1, "count": 1000000}]}, "model_warmup"),
    ({"model_operations": {"op_library_filename": ["/tmp/libevil.so"]}}, "op_library_filename"),
    ({"name": "someone_else"}, "does not match"),
    ({"platform": "tensorflow_savedmodel"}, "not supported"),
])
def test_numbers_that_size_allocations_are_bounded(hostile, changes, needle):
    status, _, body = load(hostile, "fashion_mnist", cnn_config(**changes))
    assert status == 400, body
    assert needle in error_of(body), error_of(body)
    still_serving(hostile)


@pytest.mark.parametrize("params,needle", [
    ({"top_k": "4294967296"}, "top_k"),
    ({"top_k": "-1"}, "top_k"),
])
def test_postprocess_parameters_are_bounded(hostile, params, needle):
    status, _, body = load(hostile, "fashion_postprocess", post_config(**params))
    assert status == 400 and needle in error_of(body), body
    still_serving(hostile)


@pytest.mark.parametrize("params,needle", [
    ({"width": "100000", "height": "100000"}, "out of range"),
    ({"width": "4096", "height": "4096"}, "max_batch_size"),
    ({"max_pixels": "999999999999"}, "max_pixels"),
    ({"shorter_side": "99999999", "resize": "shorter"}, "shorter_side"),
])
def test_image_parameters_are_bounded(hostile, params, needle):
    cfg = {
        "name": "fashion_preprocess", "backend": "image_preprocess", "max_batch_size": 64,
        "input": [{"name": "IMAGE", "data_type": "TYPE_STRING", "dims": [1]}],
        "output": [{"name": "PIXELS", "data_type": "TYPE_FP32", "dims": [1, 28, 28]}],
        "dynamic_batching": {},
        "parameters": {k: {"string_value": v} for k, v in
                       {"width": "28", "height": "28", "color": "gray", **params}.items()},
    }
    status, _, body = load(hostile, "fashion_preprocess", cfg)
    assert status == 400 and needle in error_of(body), body
    still_serving(hostile)


def test_garbage_configs_and_names(hostile):
    h = hostile
    for config in ["{", "[]", '{"name": 5}', '{"no_such_field": 1}', "{" * 10000 + "}" * 10000,
                   json.dumps({"name": "x" * (2 << 20)})]:
        status, _, body = load(h, "fashion_mnist", config)
        assert status in (400, 413), (config[:40], body)
    for name in ["..", "%2e%2e", "a%2Fb", ".hidden", "x" * 300, "%00", "nope"]:
        status, _, _ = load(h, name)
        assert status in (400, 404), name
    still_serving(h)


def ensemble(name, calls):
    return {
        "name": name, "platform": "ensemble", "max_batch_size": 64,
        "input": [{"name": "IMAGE", "data_type": "TYPE_STRING", "dims": [1]}],
        "output": [{"name": "LABEL", "data_type": "TYPE_STRING", "dims": [1]}],
        "ensemble_scheduling": {"step": [{"model_name": calls, "model_version": -1,
                                          "input_map": {"IMAGE": "IMAGE"}, "output_map": {"LABEL": "LABEL"}}]},
    }


def test_ensembles_calling_each_other_in_a_cycle_are_refused(hostile):
    h = hostile
    status, _, body = load(h, "fashion_mnist_image", ensemble("fashion_mnist_image", "fashion_mnist_image"))
    assert status == 400 and "fashion_mnist_image → fashion_mnist_image" in error_of(body), body
    # A second ensemble (deployed into the repository) calling the image ensemble...
    (h.repo / "loop").mkdir()
    (h.repo / "loop" / "config.pbtxt").write_text(
        'name: "loop" platform: "ensemble" max_batch_size: 64\n'
        'input [ { name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] } ]\n'
        'output [ { name: "LABEL" data_type: TYPE_STRING dims: [ 1 ] } ]\n'
        'ensemble_scheduling { step [ { model_name: "fashion_mnist_image" model_version: -1 '
        'input_map { key: "IMAGE" value: "IMAGE" } output_map { key: "LABEL" value: "LABEL" } } ] }\n')
    try:
        status, _, body = load(h, "loop")
        assert status == 200, body
        # ...and the image ensemble reloaded to call it back: refused, the cycle named.
        cfg = ensemble("fashion_mnist_image", "loop")
        status, _, body = load(h, "fashion_mnist_image", cfg)
        assert status == 400, body
        assert "fashion_mnist_image → loop → fashion_mnist_image" in error_of(body), error_of(body)
        still_serving(h)
        status, _, body = http(h.server, "POST", "/predict?model=loop", IMAGE, {"Content-Type": "image/png"})
        assert status == 400, body  # loop returns labels only, not class scores
    finally:
        http(h.server, "POST", "/v2/repository/models/loop/unload", b"{}")
        (h.repo / "loop" / "config.pbtxt").unlink()
        (h.repo / "loop").rmdir()


def test_grpc_load_is_checked_the_same_way(hostile):
    h = hostile
    g = grpcclient.InferenceServerClient(h.server.grpc)
    with pytest.raises(InferenceServerException) as e:
        g.load_model("fashion_mnist", config=json.dumps(cnn_config(
            dynamic_batching={"priority_levels": "4294967296", "default_priority_level": "1"})))
    assert "priority_levels" in e.value.message()
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as e:
        g.load_model("fashion_mnist", config=json.dumps(cnn_config(
            output=[{"name": "logits", "data_type": "TYPE_FP32", "dims": [10], "label_filename": "leak.txt"}])))
    assert "inside the model's folder" in e.value.message()
    still_serving(h)


def test_unloading_a_model_an_ensemble_uses_is_refused_then_cascades(hostile):
    h = hostile
    c = httpclient.InferenceServerClient(h.server.http)
    with pytest.raises(InferenceServerException) as e:
        c.unload_model("fashion_mnist")
    assert "fashion_mnist_image" in e.value.message() and "unload_dependents" in e.value.message()
    assert e.value.status() == "409"
    still_serving(h)
    g = grpcclient.InferenceServerClient(h.server.grpc)
    with pytest.raises(InferenceServerException) as e:
        g.unload_model("fashion_postprocess")
    assert e.value.status() == "StatusCode.FAILED_PRECONDITION"
    still_serving(h)
    c.unload_model("fashion_mnist", unload_dependents=True)
    assert not c.is_model_ready("fashion_mnist") and not c.is_model_ready("fashion_mnist_image")
    assert c.is_model_ready("fashion_preprocess")
    c.load_model("fashion_mnist")
    c.load_model("fashion_mnist_image")
    still_serving(h)


def test_state_changes_need_json_from_the_same_origin(hostile):
    h = hostile
    for ctype in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]:
        status, _, body = http(h.server, "POST", "/v2/repository/models/fashion_mnist/unload", b"{}",
                               {"Content-Type": ctype})
        assert status == 415, body
    status, _, body = http(h.server, "POST", "/v2/repository/models/fashion_mnist/unload", b"{}",
                           {"Content-Type": "application/json", "Origin": "http://evil.example"})
    assert status == 403, body
    status, _, body = http(h.server, "POST", "/api/inference/batch", b"{}", {"Content-Type": "text/plain"})
    assert status in (415, 503), body
    still_serving(h)
