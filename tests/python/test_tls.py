"""TLS on every port, with the real clients: tritonclient HTTPS and gRPC over TLS with API
keys, curl with a client certificate (mTLS) standing for a key, certificates rotated while
clients keep connecting, and perf_analyzer over both at concurrency 1 and 16.
Certificates are made here with Debian's openssl."""
import csv
import json
import os
import socket
import ssl
import subprocess
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import BINARY, Server, copy_repo
from test_auth import bearer, keys_create, simple_inputs


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(d):
    """A CA, a server certificate for 127.0.0.1/localhost, and a client certificate."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=infera test CA", cwd=d)
    server_cert(d, "server", serial="1001")
    (d / "client.ext").write_text("subjectAltName=DNS:edge.factory.local\nextendedKeyUsage=clientAuth\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=edge.factory.local", cwd=d)
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "2001",
            "-days", "2", "-extfile", "client.ext", "-out", "client.pem", cwd=d)


def server_cert(d, name, serial):
    (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", "/CN=localhost", cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", serial,
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)


def served_serial(server, d):
    """The serial number of the certificate the HTTP port presents to a new connection."""
    ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
    host, port = server.http.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
            der = t.getpeercert(binary_form=True)
    pem = ssl.DER_cert_to_PEM_cert(der)
    out = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=pem, capture_output=True, text=True)
    return out.stdout.strip().split("=")[-1]


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    make_pki(d)
    keys = d / "keys.toml"
    k = {"user": keys_create(keys, "user", "infer"),
         "edge": keys_create(keys, "edge", "infer", "--certificate", "edge.factory.local")}
    s = Server(copy_repo(d), "--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server.key"),
               "--tls-client-ca", str(d / "ca.pem"), "--tls-client-auth", "optional", "--auth-keys", str(keys),
               ca=d / "ca.pem")
    yield {"server": s, "dir": d, "keys": k}
    s.stop()


def test_tritonclient_over_https_and_grpc_tls_with_keys(tls):
    s, d, k = tls["server"], tls["dir"], tls["keys"]
    c = httpclient.InferenceServerClient(s.http, ssl=True, ssl_options={"ca_certs": str(d / "ca.pem")})
    r = c.infer("simple", simple_inputs(httpclient), headers=bearer(k["user"]))
    assert r.as_numpy("OUTPUT0").tolist() == [[2] * 16]
    g = grpcclient.InferenceServerClient(s.grpc, ssl=True, root_certificates=str(d / "ca.pem"))
    r = g.infer("simple", simple_inputs(grpcclient), headers=bearer(k["user"]))
    assert r.as_numpy("OUTPUT1").tolist() == [[0] * 16]
    # Plain HTTP on a TLS port gets nowhere.
    plain = httpclient.InferenceServerClient(s.http)
    with pytest.raises(Exception):
        plain.is_server_live()
    assert s.proc.poll() is None


def curl(s, d, path, *extra):
    p = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "--cacert", str(d / "ca.pem"), *extra,
                        f"https://{s.http}{path}"], capture_output=True, text=True, timeout=30)
    body, _, code = p.stdout.rpartition("\n")
    return int(code or 0), body, p.stderr


def test_a_client_certificate_stands_for_its_key(tls):
    s, d = tls["server"], tls["dir"]
    doc = json.dumps({"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}
                                 for n in ("INPUT0", "INPUT1")]})
    code, body, err = curl(s, d, "/v2/models/simple/infer", "--cert", str(d / "client.pem"), "--key",
                           str(d / "client.key"), "-H", "Content-Type: application/json", "-d", doc)
    assert code == 200, (body, err)
    assert json.loads(body)["outputs"][0]["data"] == [2] * 16
    code, body, err = curl(s, d, "/v2/models/simple/infer", "-d", doc)
    assert code == 401, (body, err)
    assert curl(s, d, "/v2/health/ready")[0] == 200


def test_client_certificates_can_be_required(tmp_path):
    make_pki(tmp_path)
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    ctx.load_cert_chain(str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
    s = Server(copy_repo(tmp_path), "--tls-cert", str(tmp_path / "server.pem"), "--tls-key",
               str(tmp_path / "server.key"), "--tls-client-ca", str(tmp_path / "ca.pem"), ca=ctx)
    try:
        code, _, err = curl(s, tmp_path, "/v2/health/ready")
        assert code == 0, err  # the handshake fails without a client certificate
        code, _, _ = curl(s, tmp_path, "/v2/health/ready", "--cert", str(tmp_path / "client.pem"),
                          "--key", str(tmp_path / "client.key"))
        assert code == 200
    finally:
        s.stop()


def test_a_rotated_certificate_is_used_without_a_failed_request(tls):
    s, d, k = tls["server"], tls["dir"], tls["keys"]
    before = served_serial(s, d)
    failures, done, stop = [], [0], threading.Event()

    def client():
        while not stop.is_set():
            try:
                # A new connection each time, so each sees the certificate of the moment.
                c = httpclient.InferenceServerClient(s.http, ssl=True, ssl_options={"ca_certs": str(d / "ca.pem")})
                c.infer("simple", simple_inputs(httpclient), headers=bearer(k["user"]))
                c.close()
                done[0] += 1
            except Exception as e:  # noqa: BLE001
                failures.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        server_cert(d, "next", serial="1002")
        # Replace both files by rename, as certificate managers do.
        os.replace(d / "next.key", d / "server.key")
        os.replace(d / "next.pem", d / "server.pem")
        deadline = time.time() + 15
        while served_serial(s, d) == before:
            assert time.time() < deadline, "the new certificate was not picked up"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert served_serial(s, d) == "03EA"
    assert not failures, failures[:3]
    assert done[0] > 5


@pytest.mark.parametrize("proto", ["grpc", "http"])
def test_perf_analyzer_over_tls_with_a_key(tls, tmp_path, proto):
    s, d, k = tls["server"], tls["dir"], tls["keys"]
    url = s.grpc if proto == "grpc" else f"https://{s.http}"
    ssl_args = (["--ssl-grpc-use-ssl", "--ssl-grpc-root-certifications-file", str(d / "ca.pem")] if proto == "grpc"
                else ["--ssl-https-ca-certificates-file", str(d / "ca.pem"), "--ssl-https-verify-peer", "1",
                      "--ssl-https-verify-host", "0"])
    for c in (1, 16):
        out = tmp_path / f"{proto}-{c}.csv"
        p = subprocess.run(["perf_analyzer", "-m", "simple", "-u", url, "-i", proto, "--concurrency-range", f"{c}:{c}",
                            "--measurement-interval", "1000", "--stability-percentage", "999", "--max-trials", "3",
                            "-H", f"authorization:Bearer {k['user']}", *ssl_args, "-f", str(out)],
                           capture_output=True, text=True, timeout=180)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        row = next(csv.DictReader(open(out)))
        assert float(row["Inferences/Second"]) > 0
        assert "error" not in p.stdout.lower(), p.stdout[-2000:]
