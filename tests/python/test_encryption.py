"""Encryption at rest: batch-job results, errors and input lists are AES-256-GCM records on
disk, unreadable without the key (checked here with an independent reader built on
`cryptography`), decrypted for an authorised caller, resumable after kill -9 with results
identical to a plain job; a flipped byte is an error, never wrong data. Encrypted model files
(`infera encrypt`) serve the same outputs as the plain ones."""
import os
import signal
import struct
import subprocess
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import reference
from conftest import BINARY, Server, copy_repo
from test_batch_jobs import N, api, download, start, uninterrupted, wait_for, world  # noqa: F401

KEY = bytes(range(32))


def open_sealed(data, key=KEY):
    """The documented format, read independently of infera."""
    assert data[:8] == b"INFSEAL1"
    key_id, file_id = struct.unpack("<I", data[8:12])[0], data[12:28]
    out, pos, seq, ended = b"", 28, 0, False
    while pos < len(data):
        assert not ended, "data after the last record"
        n, last = struct.unpack("<IB", data[pos:pos + 5])
        nonce, ct = data[pos + 5:pos + 17], data[pos + 17:pos + 17 + n]
        aad = file_id + struct.pack("<IQB", key_id, seq, last)
        out += AESGCM(key).decrypt(nonce, ct, aad)
        pos, seq, ended = pos + 17 + n, seq + 1, bool(last)
    return out, ended


def key_file(tmp_path, key=KEY, name="at-rest.key"):
    p = tmp_path / name
    p.write_bytes(key)
    p.chmod(0o600)
    return p


def crypt(cmd, key, src, dst):
    return subprocess.run([str(BINARY), cmd, "--key-file", str(key), "--input", str(src), "--output", str(dst)],
                          capture_output=True, text=True, timeout=60)


def test_encrypted_job_survives_kill_9_and_matches_a_plain_one(world, uninterrupted, tmp_path):
    key = key_file(tmp_path)
    data = tmp_path / "data"
    s = start(world, data, "--job-workers", "1", "--encryption-key-file", str(key))
    try:
        _, job = api(s, "POST", "/api/inference/batch",
                     {"model": "fashion_mnist_image", "inputs": [str(world["photos"])], "priority": "high"})
        job_id = job["job_id"]
        while True:
            _, j = api(s, "GET", f"/api/inference/job/{job_id}")
            if j["progress"]["done"] >= N // 3 or j["status"] not in ("queued", "running"):
                break
        assert j["status"] == "running", "the job ended before the kill; make it longer"
        s.stop(signal.SIGKILL)
        s = start(world, data, "--job-workers", "1", "--encryption-key-file", str(key))
        done = wait_for(s, job_id)
        assert done["status"] == "succeeded" and done["restarts"] == 1, done
        assert download(s, job_id) == uninterrupted[1]
        assert download(s, job_id, "errors") == uninterrupted[2]
        _, page = api(s, "GET", f"/api/inference/job/{job_id}?offset=0&limit=5")
        assert len(page["results"]["rows"]) == 5 and page["errors"][0]["filename"].endswith("broken.png")

        folder = data / "jobs" / job_id
        stored = {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}
        assert set(stored) >= {"predictions.csv", "errors.csv"}, stored.keys()
        for name, raw in stored.items():
            assert raw.startswith(b"INFSEAL1"), name
            for secret in (b"predicted_class", b"img_0", b"photos", b"broken"):
                assert secret not in raw, (name, secret)
        # The documented format, opened without infera: the key opens it, another does not.
        plain, ended = open_sealed(stored["predictions.csv"])
        assert ended and plain == uninterrupted[1]
        with pytest.raises(Exception):
            open_sealed(stored["predictions.csv"], key=bytes(32))
        # infera decrypt gives the same bytes; with the wrong key it refuses.
        out = tmp_path / "p.csv"
        r = crypt("decrypt", key, folder / "predictions.csv", out)
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == uninterrupted[1]
        r = crypt("decrypt", key_file(tmp_path, bytes(32), "wrong.key"), folder / "predictions.csv", tmp_path / "x.csv")
        assert r.returncode == 1 and "damaged" in r.stderr and r.stderr.count("\n") == 1

        # A flipped byte: a 500 that says so, never different rows.
        results = folder / "predictions.csv"
        raw = bytearray(stored["predictions.csv"])
        raw[len(raw) // 2] ^= 0x01
        results.write_bytes(bytes(raw))
        with pytest.raises(urllib.error.HTTPError) as e:
            download(s, job_id)
        assert e.value.code == 500 and b"damaged" in e.value.read()
        # Pages are checked record by record: rows before the damage are authentic, the page
        # that reaches it is an error.
        status, page = api(s, "GET", f"/api/inference/job/{job_id}?offset=0&limit=10")
        assert status == 200 and len(page["results"]["rows"]) == 10
        status, page = api(s, "GET", f"/api/inference/job/{job_id}?offset={N // 2 - 100}&limit=200")
        assert status == 500 and "damaged" in page["error"], page
        r = crypt("decrypt", key, results, tmp_path / "y.csv")
        assert r.returncode == 1 and "damaged" in r.stderr
        # Cut off the end: detected too.
        results.write_bytes(stored["predictions.csv"][:-40])
        with pytest.raises(urllib.error.HTTPError) as e:
            download(s, job_id)
        assert e.value.code == 500
    finally:
        s.stop()


def test_an_encrypted_model_serves_the_same_outputs(tmp_path):
    key = key_file(tmp_path)
    repo = copy_repo(tmp_path)
    plain = repo / "fashion_mnist" / "1" / "model.onnx"
    r = crypt("encrypt", key, plain, plain.with_name("model.onnx.enc"))
    assert r.returncode == 0, r.stderr
    sealed = plain.with_name("model.onnx.enc").read_bytes()
    assert sealed.startswith(b"INFSEAL1") and plain.read_bytes()[:64] not in sealed
    plain.unlink()
    x = np.random.default_rng(7).uniform(0, 255, (4, 1, 28, 28)).astype(np.float32)
    want = reference.run("fashion_mnist", {"input": x})["logits"]
    s = Server(repo, "--encryption-key-file", str(key))
    try:
        c = httpclient.InferenceServerClient(s.http)
        i = httpclient.InferInput("input", list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        got = c.infer("fashion_mnist", [i]).as_numpy("logits")
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        # The ensemble that uses it (/predict) works too.
        assert c.is_model_ready("fashion_mnist_image")
    finally:
        s.stop()
    # Without the key the model is not served, and the index says why; the rest serve.
    s = Server(repo)
    try:
        c = httpclient.InferenceServerClient(s.http)
        assert not c.is_model_ready("fashion_mnist") and c.is_model_ready("simple")
        index = {m["name"]: m for m in c.get_model_repository_index()}
        assert "--encryption-key-file" in index["fashion_mnist"].get("reason", ""), index["fashion_mnist"]
    finally:
        s.stop()
    # A tampered model file does not load.
    bad = bytearray(sealed)
    bad[len(bad) // 2] ^= 0x80
    plain.with_name("model.onnx.enc").write_bytes(bytes(bad))
    s = Server(repo, "--encryption-key-file", str(key))
    try:
        c = httpclient.InferenceServerClient(s.http)
        assert not c.is_model_ready("fashion_mnist")
        index = {m["name"]: m for m in c.get_model_repository_index()}
        assert "damaged" in index["fashion_mnist"].get("reason", ""), index["fashion_mnist"]
    finally:
        s.stop()


def test_key_file_mistakes_are_one_line_errors(tmp_path):
    bad = tmp_path / "short.key"
    bad.write_text("abc\n")
    r = subprocess.run([str(BINARY), "serve", "--encryption-key-file", str(bad)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1 and "32 random bytes" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    key = key_file(tmp_path)
    src = tmp_path / "a.bin"
    src.write_bytes(os.urandom(100))
    assert crypt("encrypt", key, src, tmp_path / "a.enc").returncode == 0
    r = crypt("encrypt", key, tmp_path / "a.enc", tmp_path / "b.enc")
    assert r.returncode == 1 and "already encrypted" in r.stderr
    r = crypt("decrypt", key, src, tmp_path / "c")
    assert r.returncode == 1 and "not an infera-encrypted file" in r.stderr
