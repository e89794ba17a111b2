"""A tiny scripted HTTP/1.1 server on 127.0.0.1 that records every request it gets.

Tests give it a function ``(method, path, query, body) -> (status, headers, body)``; it answers each
request with what the function returns and logs ``(monotonic time, method, path with query)``,
so a test can count requests at the server (retries, polls) instead of trusting the client.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

# a body is bytes, or chunks written as they come (the headers must then carry content-length)
Answer = tuple[int, dict[str, str], bytes | Iterable[bytes]]
App = Callable[[str, str, dict[str, list[str]], bytes], Answer]


def json_answer(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Answer:
    return (
        status,
        {"content-type": "application/json", **(headers or {})},
        json.dumps(data).encode(),
    )


def job_record(job_id: str, status: str = "running", **fields: Any) -> dict[str, Any]:
    """A job in the API's shape (``phase`` follows ``status`` unless given)."""
    now = time.time()
    job: dict[str, Any] = {
        "job_id": job_id,
        "status": status,
        "phase": "executing" if status == "running" else None,
        "created_at": now,
        "updated_at": now,
        "progress": None,
        "outputs": [],
        "error": None,
        "timings": {},
    }
    return {**job, **fields}


def job_answer(job_id: str, status: str = "running", **fields: Any) -> Answer:
    return json_answer(job_record(job_id, status, **fields))


class ScriptedServer:
    """``with ScriptedServer(app) as server: ... server.requests``."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.requests: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                payload = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                with outer._lock:
                    outer.requests.append((time.monotonic(), self.command, self.path))
                status, headers, body = outer.app(
                    self.command, parts.path, parse_qs(parts.query), payload
                )
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if isinstance(body, bytes):
                    self.send_header("content-length", str(len(body)))
                    body = [body]
                self.end_headers()
                try:
                    for chunk in body:
                        self.wfile.write(chunk)
                        self.wfile.flush()
                except OSError:  # the client went away mid-body
                    self.close_connection = True

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def paths(self) -> list[str]:
        with self._lock:
            return [path for _, _, path in self.requests]

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
