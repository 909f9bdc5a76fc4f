"""Tiny HTTP backends for the gateway tests: each says which service it is and echoes the request."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from itsm_shared.docs import swagger_ui_html


class StubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, service: str, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), StubHandler)
        self.service = service
        self.lock = threading.Condition()
        self.in_flight = 0
        # Requests to .../hold wait for this, so a test can keep requests in flight.
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def holding(self) -> int:
        with self.lock:
            return self.in_flight


class StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StubServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)  # also sends Server: BaseHTTP/... which the gateway must strip
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Powered-By", "stub")
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        body = self._read_body()
        path = self.path.split("?")[0]
        if path.endswith("/hold"):
            with self.server.lock:
                self.server.in_flight += 1
                self.server.lock.notify_all()
            self.server.release.wait(timeout=30)
            with self.server.lock:
                self.server.in_flight -= 1
        if path.endswith("/docs"):
            openapi_url = path.removesuffix("/docs") + "/openapi.json"
            html = swagger_ui_html(
                title=f"{self.server.service} docs", openapi_url=openapi_url, assets_url=path + "/assets"
            )
            self._reply(200, html.encode(), "text/html; charset=utf-8")
            return
        echo = {
            "service": self.server.service,
            "method": self.command,
            "path": self.path,
            "body_bytes": len(body),
            "headers": dict(self.headers.items()),
        }
        self._reply(200, json.dumps(echo).encode(), "application/json")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815 - http.server names


@contextmanager
def stub_backend(service: str, port: int = 0) -> Iterator[StubServer]:
    """A stub answering as `service`, on `port` (0: a free one)."""
    server = StubServer(service, port)
    thread = threading.Thread(target=server.serve_forever, name=f"stub-{service}", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
