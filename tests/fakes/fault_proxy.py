"""A small HTTP/1.1 fault proxy between a client and the gateway, for network-failure tests.

It forwards requests to an upstream on 127.0.0.1 and, for requests that match an armed fault,
misbehaves the way real networks and Modal's web endpoints do:

- ``delay``: wait before forwarding (a cold start in front of the gateway);
- ``status``: answer 429/502/503/504 itself, optionally with ``Retry-After``, without forwarding;
- ``reset``: reset the connection without forwarding;
- ``drop_response``: forward (the gateway accepts the request), then reset instead of answering —
  the lost-response case that must not start a second job;
- ``redirect``: forward, keep the answer, and reply ``303`` to a result URL that serves it, as
  Modal does for requests still running after 150 s (``hops`` > 1: a chain of 303s to it);
- ``redirect_loop``: answer ``303`` to a URL that answers ``303`` to itself, forever;
- ``silence``: read the request, never answer, keep the connection open;
- ``trickle``: forward, then send the answer one byte every ``delay_s``;
- ``headers_then_silence``: forward, send the status line and headers, then nothing;
- ``reset_mid_body``: forward, send the head and half the body, then reset;
- ``truncate_json``: forward, answer 200 with the first half of the body (a matching
  Content-Length: valid HTTP, broken JSON);
- ``html``: answer ``status`` with an HTML error page, as a proxy in front of a gateway does.

``reset_connects(n)`` resets the next ``n`` connections as soon as they are accepted, before a
request is read.

Usage::

    with FaultProxy(upstream_port) as proxy:
        proxy.arm("POST", "/jobs", "drop_response", times=1)
        client = RylaClient(proxy.url)
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import threading
import uuid
from dataclasses import dataclass, field


@dataclass
class Fault:
    method: str
    path_pattern: re.Pattern[str]
    action: str
    times: int
    status: int = 503
    retry_after: str | None = None
    delay_s: float = 0.0
    hops: int = 1
    hits: int = 0


@dataclass
class _Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass
class ProxyLog:
    seen: list[tuple[str, str, str]] = field(default_factory=list)  # (method, target, what)


class FaultProxy:
    """Runs on its own event loop in a daemon thread; ``url`` is where clients connect."""

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.faults: list[Fault] = []
        self.log = ProxyLog()
        self._results: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._reset_connects = 0
        self._held: list[asyncio.StreamWriter] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- control --------------------------------------------------------------------------
    def arm(
        self,
        method: str,
        path_regex: str,
        action: str,
        *,
        times: int = 1,
        status: int = 503,
        retry_after: str | None = None,
        delay_s: float = 0.0,
        hops: int = 1,
    ) -> Fault:
        if action not in ACTIONS:
            raise ValueError(f"unknown fault action {action!r}")
        fault = Fault(
            method.upper(),
            re.compile(path_regex),
            action,
            times,
            status=status,
            retry_after=retry_after,
            delay_s=delay_s,
            hops=hops,
        )
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self._reset_connects = 0

    def reset_connects(self, n: int) -> None:
        """Reset the next ``n`` connections right after accepting them."""
        with self._lock:
            self._reset_connects = n

    def _take_connect_reset(self) -> bool:
        with self._lock:
            if self._reset_connects > 0:
                self._reset_connects -= 1
                return True
        return False

    def _take_fault(self, req: _Request) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times <= 0:
                    continue
                if fault.method not in ("*", req.method):
                    continue
                if not fault.path_pattern.fullmatch(req.path):
                    continue
                fault.times -= 1
                fault.hits += 1
                return fault
        return None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fault proxy did not start within 10 s")

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def shutdown() -> None:
            server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        fut = asyncio.run_coroutine_threadsafe(shutdown(), loop)
        with contextlib.suppress(Exception):
            fut.result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP ------------------------------------------------------------------------------
    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
        body = await reader.readexactly(length) if length else b""
        return _Request(method.upper(), target, headers, body)

    async def _forward(self, req: _Request) -> bytes:
        """Send the request upstream on a fresh connection and return the raw response."""
        reader, writer = await asyncio.open_connection(*self.upstream)
        try:
            headers = [
                (k, v) for k, v in req.headers if k.lower() not in ("connection", "keep-alive")
            ]
            headers.append(("Connection", "close"))
            head = f"{req.method} {req.target} HTTP/1.1\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in headers
            )
            writer.write(head.encode("latin-1") + b"\r\n" + req.body)
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(-1), timeout=60)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        return _dechunk(raw)

    async def _misdeliver(
        self, fault: Fault, response: bytes, writer: asyncio.StreamWriter
    ) -> None:
        """Deliver a forwarded answer badly (trickle, cut, broken); the connection ends after."""
        head, _, body = response.partition(b"\r\n\r\n")
        head += b"\r\n\r\n"
        if fault.action == "trickle":
            for i in range(len(response)):
                writer.write(response[i : i + 1])
                await writer.drain()
                await asyncio.sleep(fault.delay_s)
        elif fault.action == "headers_then_silence":
            writer.write(head)
            await writer.drain()
            self._held.append(writer)
            await asyncio.Event().wait()
        elif fault.action == "reset_mid_body":
            writer.write(head + body[: len(body) // 2])
            await writer.drain()
            await asyncio.sleep(0.05)
            self._reset(writer)
        elif fault.action == "truncate_json":
            cut = body[: max(1, len(body) // 2)]
            writer.write(_simple(200, cut))
            await writer.drain()

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # linger 0: close() sends RST, which the client sees as "connection reset"
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._take_connect_reset():
            self.log.seen.append(("-", "-", "reset_connect"))
            self._reset(writer)
            return
        try:
            while True:
                req = await self._read_request(reader)
                if req is None:
                    break
                if req.path.startswith("/_proxy/loop/"):
                    self.log.seen.append((req.method, req.target, "loop"))
                    writer.write(_simple(303, b"", {"Location": req.path}))
                    await writer.drain()
                    continue
                if req.path.startswith("/_proxy/hop/"):
                    _, _, _, token, left = req.path.split("/", 4)
                    n = int(left)
                    self.log.seen.append((req.method, req.target, "hop"))
                    where = f"/_proxy/hop/{token}/{n - 1}" if n > 1 else f"/_proxy/result/{token}"
                    writer.write(_simple(303, b"", {"Location": where}))
                    await writer.drain()
                    continue
                if req.path.startswith("/_proxy/result/"):
                    stored = self._results.pop(req.path.rsplit("/", 1)[-1], None)
                    self.log.seen.append((req.method, req.target, "result"))
                    writer.write(stored or _simple(404, b""))
                    await writer.drain()
                    continue
                fault = self._take_fault(req)
                action = fault.action if fault else "forward"
                self.log.seen.append((req.method, req.target, action))
                if fault is not None and fault.action == "reset":
                    self._reset(writer)
                    return
                if fault is not None and fault.action == "silence":
                    self._held.append(writer)  # closed when the proxy stops
                    await asyncio.Event().wait()
                if fault is not None and fault.action == "redirect_loop":
                    writer.write(_simple(303, b"", {"Location": "/_proxy/loop/x"}))
                    await writer.drain()
                    continue
                if fault is not None and fault.action == "html":
                    page = (
                        b"<html><head><title>502 Bad Gateway</title></head><body><center>"
                        b"<h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
                    )
                    extra = {"Content-Type": "text/html"}
                    writer.write(_simple(fault.status, page, extra, json_type=False))
                    await writer.drain()
                    continue
                if fault is not None and fault.action == "status":
                    extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                    writer.write(_simple(fault.status, b'{"error": "injected"}', extra))
                    await writer.drain()
                    continue
                if fault is not None and fault.action == "delay":
                    await asyncio.sleep(fault.delay_s)
                response = await self._forward(req)
                if fault is not None and fault.action == "drop_response":
                    self._reset(writer)
                    return
                if fault is not None and fault.action == "redirect":
                    token = uuid.uuid4().hex
                    self._results[token] = response
                    where = (
                        f"/_proxy/hop/{token}/{fault.hops - 1}"
                        if fault.hops > 1
                        else f"/_proxy/result/{token}"
                    )
                    writer.write(_simple(303, b"", {"Location": where}))
                    await writer.drain()
                    continue
                if fault is not None and fault.action in BODY_ACTIONS:
                    await self._misdeliver(fault, response, writer)
                    return
                writer.write(response)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


ACTIONS = frozenset(
    {
        "delay",
        "status",
        "reset",
        "drop_response",
        "redirect",
        "redirect_loop",
        "silence",
        "trickle",
        "headers_then_silence",
        "reset_mid_body",
        "truncate_json",
        "html",
    }
)
BODY_ACTIONS = frozenset({"trickle", "headers_then_silence", "reset_mid_body", "truncate_json"})


def _simple(
    status: int, body: bytes, headers: dict[str, str] | None = None, *, json_type: bool = True
) -> bytes:
    reasons = {200: "OK", 303: "See Other", 404: "Not Found", 429: "Too Many Requests"}
    reasons |= {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
    reason = reasons.get(status, "Error")
    head = f"HTTP/1.1 {status} {reason}\r\ncontent-length: {len(body)}\r\n"
    head += "content-type: application/json\r\n" if body and json_type else ""
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    return head.encode("latin-1") + b"\r\n" + body


def _dechunk(raw: bytes) -> bytes:
    """Turn an upstream response into one with a content-length, so keep-alive works."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [line for line in lines[1:] if line]
    chunked = any(
        h.lower().startswith("transfer-encoding:") and "chunked" in h.lower() for h in headers
    )
    if chunked:
        out = bytearray()
        rest = body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out += rest[:size]
            rest = rest[size + 2 :]
        body = bytes(out)
    kept = [
        h
        for h in headers
        if not h.lower().startswith(("transfer-encoding:", "content-length:", "connection:"))
    ]
    kept.append(f"content-length: {len(body)}")
    return (lines[0] + "\r\n" + "".join(k + "\r\n" for k in kept) + "\r\n").encode("latin-1") + body
