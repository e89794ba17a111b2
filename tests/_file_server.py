"""A small HTTP file server on 127.0.0.1 for inputs by URL, with the misbehaviours that matter.

Routes: ``/files/<name>`` (the bytes registered under that name, with a content-length),
``/chunked/<name>`` (the same without one: its size is only known by counting),
``/redirect/<name>`` (302 to ``/files/<name>``), ``/drip`` (one byte every ``drip_s``, for as
long as the client stays), ``/status/<code>``.  ``hits`` counts requests per path.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer:
    def __init__(self, *, drip_s: float = 0.2) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: Counter[str] = Counter()
        self.drip_s = drip_s
        self.stopping = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet tests

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                owner.hits[path] = owner.hits.get(path, 0) + 1
                kind, _, name = path.lstrip("/").partition("/")
                data = owner.files.get(name)
                if kind == "files" and data is not None:
                    self._send(200, data)
                elif kind == "chunked" and data is not None:
                    self._chunked(data)
                elif kind == "redirect":
                    self.send_response(302)
                    self.send_header("location", f"/files/{name}")
                    self.send_header("content-length", "0")
                    self.end_headers()
                elif kind == "drip":
                    self._drip()
                elif kind == "status" and name.isdigit():
                    self._send(int(name), b"nope")
                else:
                    self._send(404, b"not found")

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/octet-stream")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _chunked(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for i in range(0, len(body), 4096):
                    part = body[i : i + 4096]
                    self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")

            def _drip(self) -> None:
                self.send_response(200)
                self.send_header("content-length", "1000000")
                self.end_headers()
                with contextlib.suppress(OSError):
                    for _ in range(100_000):  # bounded; the client gives up long before
                        if owner.stopping.wait(owner.drip_s):
                            return
                        self.wfile.write(b"x")
                        self.wfile.flush()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> FileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def file_server(**kw: float) -> Iterator[FileServer]:
    server = FileServer(**kw).start()
    try:
        yield server
    finally:
        server.stop()
