"""Starts real infera servers for the tests: the built binary, on free loopback ports."""
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "model_repository"
BINARY = Path(os.environ.get("INFERA_BIN", ROOT / "target" / "release" / "infera"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortTaken(Exception):
    pass


class Server:
    def __init__(self, repo, *extra, env=None, ca=None):
        # ca: the CA of a TLS server's certificate (or an ssl.SSLContext), for the readiness
        # check over HTTPS.
        self.ca = ca
        # A port picked free can be taken by another process before infera binds it: retry.
        for attempt in range(3):
            try:
                return self._start(repo, *extra, env=env)
            except PortTaken:
                self.log.close()
        raise RuntimeError("could not find free ports for infera")

    def _start(self, repo, *extra, env=None):
        self.repo = Path(repo)
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.http = f"127.0.0.1:{self.http_port}"
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        self.metrics = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.log_path = self.repo.parent / f"infera-{self.http_port}.log"
        # Most tests load and unload models through the API: explicit mode with every model
        # loaded at start, unless a test picks its own mode.
        control = [] if "--model-control-mode" in extra else ["--model-control-mode", "explicit", "--load-model", "*"]
        cmd = [str(BINARY), "serve", "--model-repository", str(repo),
               "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
               "--metrics-port", str(self.metrics_port), *control, *extra]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        deadline = time.time() + 30
        scheme, context = "http", None
        if self.ca:
            import ssl
            context = self.ca if isinstance(self.ca, ssl.SSLContext) else ssl.create_default_context(cafile=str(self.ca))
            scheme = "https"
        while time.time() < deadline:
            if self.proc.poll() is not None:
                log = self.log_path.read_text()
                if "cannot listen" in log:
                    raise PortTaken(log)
                raise RuntimeError(f"infera exited early:\n{log}")
            try:
                with urllib.request.urlopen(f"{scheme}://{self.http}/v2/health/ready", timeout=1,
                                            context=context) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"infera did not become ready:\n{self.log_path.read_text()}")

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def logs(self):
        return self.log_path.read_text()


def copy_repo(tmp_path, name="repo"):
    dst = tmp_path / name
    shutil.copytree(FIXTURES, dst)
    return dst


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One shared server over a copy of the fixture repository (tests must not unload its models)."""
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: build with `cargo build --release` first")
    s = Server(copy_repo(tmp_path_factory.mktemp("shared")), "--max-body-size", str(8 << 20))
    yield s
    s.stop()


@pytest.fixture
def make_server(tmp_path):
    """Starts a private server; stopped at the end of the test."""
    started = []

    def start(repo=None, *extra, env=None):
        s = Server(repo or copy_repo(tmp_path), *extra, env=env)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
