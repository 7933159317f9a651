"""Hostile clients at the connection level: headers sent a byte at a time, connections left
idle, too many connections, and a shutdown that must end on time whatever clients do."""
import signal
import socket
import time

import numpy as np
import pytest

from conftest import Server, copy_repo
from hostile import http


@pytest.fixture(scope="module")
def tight(tmp_path_factory):
    """Short timeouts and few connections, so the limits show within a test."""
    s = Server(copy_repo(tmp_path_factory.mktemp("tight")), "--header-timeout-secs", "2",
               "--idle-timeout-secs", "3", "--max-connections", "16", "--max-streams", "8")
    yield s
    s.stop()


def connect(server):
    host, port = server.http.split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def closed_within(sock, seconds):
    """Reads until the server closes; the time it took, or None if it stayed open."""
    start = time.time()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except socket.timeout:
        return None
    except ConnectionResetError:
        pass
    return time.time() - start


def test_headers_that_never_finish_are_cut_off(tight):
    s = connect(tight)
    s.sendall(b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    for _ in range(3):
        time.sleep(0.5)
        try:
            s.sendall(b"a")
        except OSError:
            break
    took = closed_within(s, 6)
    assert took is not None, "a client sending headers forever kept its connection"
    s.close()
    assert http(tight, "GET", "/v2/health/ready")[0] == 200


def test_idle_connections_are_closed(tight):
    s = connect(tight)
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"200" in s.recv(4096).split(b"\r\n")[0]
    took = closed_within(s, 8)
    assert took is not None and took < 7, took
    s.close()


def test_a_stalled_body_is_cut_off(tight):
    s = connect(tight)
    s.sendall(b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{\"inp")
    took = closed_within(s, 8)
    assert took is not None, "a body that never arrives held its connection"
    s.close()


def test_too_many_connections_get_503_and_the_server_recovers(tight):
    held = [connect(tight) for _ in range(16)]
    time.sleep(0.3)
    try:
        extra = connect(tight)
        answer = extra.recv(4096)
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer[:100]
        assert b"too many open connections" in answer
    finally:
        for c in held:
            c.close()
    time.sleep(0.3)
    assert http(tight, "GET", "/v2/health/ready")[0] == 200


def test_shutdown_drains_then_exits_at_the_deadline_whatever_clients_do(tmp_path):
    s = Server(copy_repo(tmp_path), "--exit-timeout-secs", "3", "--idle-timeout-secs", "600")
    # A client that started a request and then hangs on: it must not hold the exit.
    hang = connect(s)
    hang.sendall(b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
    start = time.time()
    s.proc.send_signal(signal.SIGTERM)
    code = s.proc.wait(timeout=15)
    took = time.time() - start
    hang.close()
    assert code == 0, s.logs()[-2000:]
    assert took < 6, f"exit took {took:.1f}s with a 3 s deadline"
    logs = s.logs()
    assert "new inference gets 503" in logs, logs[-2000:]
    assert "exiting anyway" in logs or "connections still open" in logs, logs[-2000:]
    s.stop()


def test_inference_during_the_drain_gets_503(tmp_path):
    s = Server(copy_repo(tmp_path), "--exit-timeout-secs", "5")
    import tritonclient.grpc as grpcclient
    g = grpcclient.InferenceServerClient(s.grpc)
    a = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
    a.set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
    b = grpcclient.InferInput("INPUT1", [1, 16], "INT32")
    b.set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
    g.infer("simple", [a, b])
    # A stream opened before the stop keeps its connection through the drain; requests
    # sent on it after the stop are refused with the server's shutting-down message.
    results = []
    g.start_stream(callback=lambda result, error: results.append((result, error)))
    g.async_stream_infer("simple", [a, b])
    time.sleep(0.5)
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    g.async_stream_infer("simple", [a, b])
    time.sleep(1)
    g.stop_stream(cancel_requests=True)
    s.proc.wait(timeout=15)
    errors = [str(e) for _, e in results if e is not None]
    assert results and results[0][1] is None, results
    assert any("shutting down" in e for e in errors), (results, s.logs()[-2000:])
    s.stop()
