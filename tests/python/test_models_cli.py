"""`infera models list|load|unload|reload` against a running server with keys: the index as a
table and as JSON, unload and load seen in the index, a config given on the command line, and
clear one-line errors (no key, a reader key, an unknown model, no server)."""
import json
import subprocess

from conftest import BINARY, Server, copy_repo, free_port
from test_auth import keys_create


def models(s, *args, key=None):
    env_args = ["--url", f"http://{s.http}"] if s else ["--url", f"http://127.0.0.1:{free_port()}"]
    if key:
        env_args += ["--key", key]
    p = subprocess.run([str(BINARY), "models", *args, *env_args], capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def test_operators_manage_models_from_the_command_line(tmp_path):
    keys = tmp_path / "keys.toml"
    ops = keys_create(keys, "ops", "operator")
    reader = keys_create(keys, "reader", "reader")
    s = Server(copy_repo(tmp_path), "--auth-keys", str(keys))
    try:
        code, out, err = models(s, "list", key=ops)
        assert code == 0, err
        header, *rows = out.splitlines()
        assert header.split() == ["NAME", "VERSION", "STATE", "REASON"]
        assert any(r.split()[:3] == ["simple", "1", "READY"] for r in rows), out

        assert models(s, "unload", "iris", key=ops)[:2] == (0, "unloaded iris\n")
        code, out, _ = models(s, "list", "--json", key=ops)
        iris = next(m for m in json.loads(out) if m["name"] == "iris")
        assert iris["state"] == "UNAVAILABLE"
        assert models(s, "load", "iris", key=ops)[:2] == (0, "loaded iris\n")
        assert models(s, "reload", "iris", key=ops)[0] == 0
        code, out, _ = models(s, "list", "--json", key=ops)
        assert next(m for m in json.loads(out) if m["name"] == "iris")["state"] == "READY"

        # A config from the command line: simple with a smaller batch size.
        config = json.dumps({"name": "simple", "platform": "onnxruntime_onnx", "max_batch_size": 4,
                             "input": [{"name": f"INPUT{i}", "data_type": "TYPE_INT32", "dims": [16]} for i in (0, 1)],
                             "output": [{"name": f"OUTPUT{i}", "data_type": "TYPE_INT32", "dims": [16]} for i in (0, 1)]})
        (tmp_path / "simple.json").write_text(config)
        code, out, err = models(s, "load", "simple", "--config", f"@{tmp_path / 'simple.json'}", key=ops)
        assert code == 0, err

        # Clear refusals, one line each, exit 1.
        code, _, err = models(s, "unload", "simple")
        assert code == 1 and "--key" in err and "401" in err and len(err.strip().splitlines()) == 1
        code, _, err = models(s, "unload", "simple", key=reader)
        assert code == 1 and "operator" in err and "403" in err
        code, _, err = models(s, "load", "no-such-model", key=ops)
        assert code == 1 and "no-such-model" in err
        code, _, err = models(s, "load", "simple", "--config", "{not json", key=ops)
        assert code == 1 and "JSON" in err
    finally:
        s.stop()
    code, _, err = models(None, "list")
    assert code == 1 and "cannot reach infera" in err
