"""What the hostile-client suites share: a server set up to be attacked, and the checks
every case ends with (alive, peak RSS bounded, nothing read outside the repository)."""
import ctypes
import ctypes.util
import gzip
import json
import os
import socket
import struct
import zlib
from pathlib import Path

import pytest

from conftest import Server, copy_repo

# Peak resident memory allowed for the example repository, whatever the clients did.
MAX_RSS_MB = 400
MAX_BODY = 8 << 20

IN_ACCESS, IN_OPEN = 0x1, 0x20
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class Honeypot:
    """Files outside the repository, watched with inotify: any open or read of them (or of
    their folder) by anyone shows up as an event."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.secret = path / "secret.txt"
        self.secret.write_text("root:x:0:0:HONEYPOT-CONTENT\n")
        self.missing = path / "missing.txt"
        self.fd = _libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0, ctypes.get_errno()
        wd = _libc.inotify_add_watch(self.fd, str(path).encode(), IN_ACCESS | IN_OPEN)
        assert wd >= 0, ctypes.get_errno()

    def touched(self):
        """Names opened or read since the last call."""
        names = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return names
            i = 0
            while i < len(buf):
                _, mask, _, n = struct.unpack_from("iIII", buf, i)
                name = buf[i + 16:i + 16 + n].rstrip(b"\0").decode()
                names.append((name or ".", hex(mask)))
                i += 16 + n


def peak_rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def http(server, method, path, body=b"", headers=None, timeout=30):
    """One request on its own connection: (status, headers, body). Never raises on 4xx/5xx."""
    host, port = server.http.split(":")
    head = {"Host": server.http, "Connection": "close", "Content-Length": str(len(body))}
    head.update(headers or {})
    req = f"{method} {path} HTTP/1.1\r\n".encode() + b"".join(
        f"{k}: {v}\r\n".encode() for k, v in head.items()) + b"\r\n"
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(req)
        try:
            s.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        try:
            while chunk := s.recv(1 << 16):
                data += chunk
        except ConnectionResetError:
            pass
    top, _, payload = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0] else 0
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    if hdrs.get("transfer-encoding") == "chunked":
        out, rest = b"", payload
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size or b"0", 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        payload = out
    return status, hdrs, payload


def error_of(payload):
    return json.loads(payload)["error"]


def gzip_bomb(size):
    """`size` bytes of spaces, compressed to a few KB."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b" " * (1 << 20)
    out = b"".join(z.compress(chunk) for _ in range(size >> 20))
    return out + z.flush()


def deflate_bomb(size):
    z = zlib.compressobj(9, zlib.DEFLATED, 15)
    chunk = b" " * (1 << 20)
    return b"".join(z.compress(chunk) for _ in range(size >> 20)) + z.flush()


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_gray(width, height):
    """A valid gray PNG of any shape, all zeros, built row by row with little memory."""
    z = zlib.compressobj(9)
    row = b"\0" * (1 + width)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


class Hostile:
    """A server over a copy of the example (fixture) repository, with a honeypot beside it
    and symlinks from inside the repository to it."""

    def __init__(self, tmp, *extra):
        self.repo = copy_repo(tmp, "repo")
        self.honeypot = Honeypot(tmp / "honeypot")
        for model in ("fashion_mnist", "fashion_postprocess"):
            os.symlink(self.honeypot.secret, self.repo / model / "leak.txt")
            os.symlink(self.honeypot.missing, self.repo / model / "dangling.txt")
        self.server = Server(self.repo, "--max-body-size", str(MAX_BODY), *extra)

    def check(self):
        """What every case ends with."""
        s = self.server
        assert s.proc.poll() is None, f"the server died:\n{s.logs()[-3000:]}"
        status, _, _ = http(s, "GET", "/v2/health/live")
        assert status == 200
        rss = peak_rss_mb(s.proc.pid)
        assert rss < MAX_RSS_MB, f"peak RSS {rss:.0f} MB"
        touched = self.honeypot.touched()
        assert not touched, f"files outside the repository were opened: {touched}"

    def stop(self):
        self.server.stop()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    h = Hostile(tmp_path_factory.mktemp("hostile"))
    yield h
    h.stop()


@pytest.fixture(autouse=True)
def checked(request):
    """After every case of a module that uses `hostile`: alive, bounded, nothing leaked."""
    yield
    if "hostile" in request.fixturenames:
        request.getfixturevalue("hostile").check()


def gz(data):
    return gzip.compress(data)
