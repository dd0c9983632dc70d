"""A real HTTP file server on 127.0.0.1 with Range support and fault injection, for download tests.

No test ever reaches the internet: the download code is exercised against this server, which can
cut a transfer mid-way, answer a fixed status, or ignore Range requests.
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RANGE_RE = re.compile(r"^\s*bytes=(\d+)-(\d*)\s*$")
_SEND_CHUNK = 1 << 16


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    loopback: LoopbackServer

    def handle_error(self, request, client_address) -> None:
        # A client that hangs up mid-transfer is expected here; keep the test output clean.
        pass


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one response per connection, so a cut is an ordinary end of stream.
    protocol_version = "HTTP/1.0"
    server: _Server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - name fixed by the base class
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        loop = self.server.loopback
        path = unquote(urlsplit(self.path).path)
        range_header = self.headers.get("Range")
        with loop.lock:
            loop.requests.append((path, range_header))
            status = loop.status.get(path)
            ignore_range = path in loop.ignore_range
            cut = loop.cut_after.pop(path, None) if body else None

        if status is not None:
            self._small(status, f"injected status {status}\n")
            return
        file = (loop.root / path.lstrip("/")).resolve()
        if not file.is_relative_to(loop.root) or not file.is_file():
            self._small(404, "not found\n")
            return

        size = file.stat().st_size
        start, end = 0, size - 1
        partial = False
        match = _RANGE_RE.match(range_header) if range_header and not ignore_range else None
        if match:
            start = int(match.group(1))
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if match.group(2):
                end = min(int(match.group(2)), size - 1)
            if end < start:
                self._small(416, "bad range\n")
                return
            partial = True

        length = end - start + 1
        self.send_response(206 if partial else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body:
            return
        # The full length was announced; a cut sends less and then closes the connection.
        to_send = length if cut is None else min(cut, length)
        try:
            with open(file, "rb") as fh:
                fh.seek(start)
                while to_send > 0:
                    block = fh.read(min(_SEND_CHUNK, to_send))
                    if not block:
                        break
                    self.wfile.write(block)
                    to_send -= len(block)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def _small(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class LoopbackServer:
    """Serve files under ``root`` at ``url``; set the fault-injection fields between requests."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.cut_after: dict[str, int] = {}
        self.status: dict[str, int] = {}
        self.ignore_range: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> LoopbackServer:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.loopback = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="loopback-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = None
        self._thread = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
