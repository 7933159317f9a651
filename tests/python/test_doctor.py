"""`infera doctor` with serve's flags: passes on a good set-up, and on a broken one names each
problem (taken port, a model that does not load, missing TLS files, an unusable data
directory, a bad keys file) with what to do, exiting non-zero."""
import socket
import subprocess

from conftest import BINARY, copy_repo, free_port


def doctor(*args):
    p = subprocess.run([str(BINARY), "doctor", *args], capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def ports():
    return ["--http-port", str(free_port()), "--grpc-port", str(free_port()), "--metrics-port", str(free_port())]


def test_a_good_setup_passes(tmp_path):
    code, out, err = doctor("--model-repository", str(copy_repo(tmp_path)), *ports(),
                            "--data-dir", str(tmp_path / "data"))
    assert code == 0, out + err
    assert "ONNX Runtime 1.31.1 loads from" in out
    assert "model fashion_mnist_image version 1 loads" in out
    assert "data directory" in out and "FAIL" not in out and "all checks passed" in out


def test_a_broken_setup_names_every_problem(tmp_path):
    repo = copy_repo(tmp_path)
    (repo / "simple" / "config.pbtxt").write_text("this is { not a config")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    bad_keys = tmp_path / "keys.toml"
    bad_keys.write_text("[[key]]\nid = 3\n")
    try:
        code, out, err = doctor("--model-repository", str(repo), "--http-port", str(taken),
                                "--grpc-port", str(free_port()), "--metrics-port", "0",
                                "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(tmp_path / "missing.key"),
                                "--data-dir", str(not_a_dir / "data"), "--auth-keys", str(bad_keys))
    finally:
        busy.close()
    assert code == 1
    fails = [l for l in out.splitlines() if l.strip().startswith("FAIL")]
    assert any("model simple" in l for l in fails), out
    assert any(f":{taken}" in l for l in fails), out
    assert any("TLS" in l for l in fails), out
    assert any("data directory" in l for l in fails), out
    assert any("authentication" in l for l in fails), out
    assert out.count("fix:") == len(fails) == 5
    assert "model fashion_mnist_image version 1 loads" in out  # the others still load
    assert "metrics is off" in out
    assert err.strip().splitlines()[-1] == "error: 5 problems found (see FAIL above)"
