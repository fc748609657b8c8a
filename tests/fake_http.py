"""A local HTTP server for the download tests: it serves files held in memory, with or without range support, and
misbehaves on request — so no test ever touches the internet.

    with serve() as server:                      # 127.0.0.1, a free port, one thread; shut down and joined on exit
        server.files["/models/w-1234abcd.pth"] = data
        server.script("/models/w-1234abcd.pth", "503", "cut:100", "ok")   # one action per request, the last repeats
        ... download from server.url("/models/w-1234abcd.pth") ...
        server.served("/models/w-1234abcd.pth")  # body bytes sent for that path, over all requests

Actions: "ok"; an HTTP status such as "404" or "503"; "cut:N" (announce the whole answer, send N bytes of its body,
hang up: a truncated transfer, or a download killed after N bytes); "hold:N" (send N bytes, then wait until
`server.release` is set, then hang up: a transfer in progress, for a test to kill its client); "drop" (hang up
without answering).
`server.ranges = False` makes it answer every `Range` request with the whole file and HTTP 200, as servers that do
not support ranges do. Every request is logged in `server.requests` as (path, Range header, status, body bytes).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple
from urllib.parse import urlsplit


class Request(NamedTuple):
    path: str
    range: str | None
    status: int
    nbytes: int  # body bytes actually sent


class FakeServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.ranges = True
        self.requests: list[Request] = []
        self._scripts: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self.release = threading.Event()  # ends every "hold:N" answer (set when the server stops, at the latest)
        self.base_url = ""  # http://127.0.0.1:PORT, set by serve()

    def url(self, path: str) -> str:
        return self.base_url + path

    def script(self, path: str, *actions: str) -> None:
        """The answers to the next requests for `path`, in order; the last one repeats."""
        self._scripts[path] = list(actions)

    def next_action(self, path: str) -> str:
        with self._lock:
            script = self._scripts.get(path, ["ok"])
            return script.pop(0) if len(script) > 1 else script[0]

    def log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def served(self, path: str | None = None) -> int:
        """Body bytes sent for `path` (all paths when None)."""
        return sum(r.nbytes for r in self.requests if path is None or r.path == path)

    def hits(self, path: str | None = None) -> int:
        return sum(1 for r in self.requests if path is None or r.path == path)


def byte_range(header: str, n: int) -> tuple[int, int] | None:
    """[start, stop) for a `Range: bytes=a-b | a- | -k` header on an n-byte file; None if not satisfiable."""
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if m is None or m.group(1) == m.group(2) == "":
        raise ValueError(f"test server: unsupported Range {header!r}")
    first, last = m.groups()
    if first == "":  # suffix: the last k bytes
        return (max(0, n - int(last)), n) if int(last) > 0 and n > 0 else None
    start, stop = int(first), (min(n, int(last) + 1) if last else n)
    return (start, stop) if start < n and start < stop else None


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        fake = self.server.fake
        path = urlsplit(self.path).path
        asked = self.headers.get("Range")
        action = fake.next_action(path)
        body = fake.files.get(path)
        if body is None:
            action = "404"
        if action == "drop":
            fake.log(Request(path, asked, 0, 0))
            self.close_connection = True
            return
        if action.isdigit():
            message = f"status {action}".encode()
            self._answer(int(action), message, {})
            fake.log(Request(path, asked, int(action), len(message)))
            return

        status, headers, part = 200, {"Accept-Ranges": "bytes" if fake.ranges else "none"}, body
        if asked is not None and fake.ranges:
            span = byte_range(asked, len(body))
            if span is None:
                self._answer(416, b"", {"Content-Range": f"bytes */{len(body)}"})
                fake.log(Request(path, asked, 416, 0))
                return
            status, part = 206, body[span[0] : span[1]]
            headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{len(body)}"
        sent = part if action == "ok" else part[: int(action.split(":")[1])]
        self._answer(status, sent, headers, length=len(part))
        fake.log(Request(path, asked, status, len(sent)))
        if action.startswith("hold:"):
            self.wfile.flush()
            fake.release.wait(timeout=30)
        if len(sent) < len(part):
            self.close_connection = True

    def _answer(self, status: int, body: bytes, headers: dict[str, str], length: int | None = None) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins every handler thread: nothing is left running after a test
    fake: FakeServer

    def handle_error(self, request, client_address) -> None:  # a client that hung up first is not a test failure
        pass


@contextlib.contextmanager
def serve() -> Iterator[FakeServer]:
    """A FakeServer on 127.0.0.1 (a free port) for the duration of the `with` block."""
    fake = FakeServer()
    server = _Server(("127.0.0.1", 0), _Handler)
    server.fake = fake
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-http")
    thread.start()
    try:
        yield fake
    finally:
        fake.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive(), "the test HTTP server did not stop"


def closed_port_url(path: str = "/") -> str:
    """A URL on 127.0.0.1 where nothing listens: connecting is refused at once, as when offline."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"
