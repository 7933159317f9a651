"""The HTTP/gRPC server in the background of this Python process."""

from __future__ import annotations

import socket
import time

from . import _infera
from ._infera import InferaError


class Server:
    """A running server; ``stop()`` drains in-flight requests and stops it. Also a context manager."""

    def __init__(self, handle, host: str, http_port: int, grpc_port: int, metrics_port: int):
        self._handle = handle
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port

    @property
    def url(self) -> str:
        """The HTTP address, e.g. for ``tritonclient.http.InferenceServerClient(url)``."""
        return f"{self.host}:{self.http_port}"

    @property
    def running(self) -> bool:
        return not self._handle.finished()

    def stop(self) -> None:
        self._handle.stop()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def serve(
    model_repository=None,
    *,
    host: str = "127.0.0.1",
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    wait: float = 60.0,
    **options,
) -> Server:
    """Starts ``infera serve`` in this process: KServe v2 over HTTP and gRPC, metrics, ``/predict``.

    ``model_repository`` None serves the built-in examples. Other keyword arguments are
    ``infera serve`` flags (``max_batch_size=...`` is ``--max-batch-size``; True is a bare
    flag; a list repeats it). Returns once the server answers, or raises ``InferaError``.
    """
    flags = ["--host", host, "--http-port", str(http_port), "--grpc-port", str(grpc_port)]
    flags += ["--metrics-port", str(metrics_port)]
    if model_repository is not None:
        flags += ["--model-repository", str(model_repository)]
    for key, value in options.items():
        if value is None or value is False:
            continue
        if value is True:
            flags.append(_flag(key))
        elif isinstance(value, (list, tuple)):
            for v in value:
                flags += [_flag(key), str(v)]
        else:
            flags += [_flag(key), str(value)]
    handle = _infera.serve(flags)
    server = Server(handle, host, http_port, grpc_port, metrics_port)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if handle.finished():
            handle.stop()  # raises the server's error
            raise InferaError("the server stopped before it was ready")
        try:
            with socket.create_connection((host, http_port), timeout=0.2):
                return server
        except OSError:
            time.sleep(0.02)
    handle.stop()
    raise InferaError(f"the server did not start listening on {host}:{http_port} within {wait} s")
