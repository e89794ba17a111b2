"""An httpx transport whose every socket operation is bounded by the request's total deadline.

httpx's read timeout restarts at every read, so a server that drips one byte every few seconds —
of the body, or of the status line and headers — never trips it.  Here each connect, TLS
handshake, write and read of the sync client's sockets is given at most what is left of the
deadline of the request in progress (a context variable set by the client around the request and
its retries), and raises `DeadlineExceeded` once it has passed: a trickle ends at the deadline
whatever its pace.  ``abort()`` shuts every live socket down, which wakes a read blocked in another
thread at once (closing the socket would not), so Ctrl-C can unwind downloads running on threads.
The async client needs none of this: ``asyncio.timeout`` cancels the whole exchange.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import weakref
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

from ryla_modal.policy import Deadline

_CURRENT: ContextVar[Deadline | None] = ContextVar("ryla_request_deadline", default=None)


class DeadlineExceeded(TimeoutError):
    """The request's total deadline passed while it was still sending or receiving."""


class Aborted(ConnectionError):
    """The client was closed while this request was in flight."""


@contextlib.contextmanager
def deadline_scope(deadline: Deadline) -> Iterator[None]:
    """Every socket operation of this thread's requests inside the block obeys ``deadline``."""
    token = _CURRENT.set(deadline)
    try:
        yield
    finally:
        _CURRENT.reset(token)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: _Backend) -> None:
        self._inner = inner
        self._backend = backend
        backend.register(self)

    def _call(self, op: Any, timeout: float | None, *args: Any, **kwargs: Any) -> Any:
        self._backend.check()
        deadline = _CURRENT.get()
        remaining = deadline.remaining() if deadline is not None else None
        if deadline is None or remaining is None:
            return op(*args, timeout=timeout, **kwargs)
        if remaining <= 0:
            raise DeadlineExceeded(f"the {deadline.describe()} passed")
        capped = timeout is None or remaining <= timeout
        try:
            return op(*args, timeout=remaining if capped else timeout, **kwargs)
        except httpcore.TimeoutException:
            if capped:  # it was the deadline, not httpx's own per-read timeout, that ran out
                raise DeadlineExceeded(f"the {deadline.describe()} passed") from None
            raise
        except httpcore.NetworkError:
            self._backend.check()  # a socket shut down by abort() reads as "aborted"
            raise

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self._call(self._inner.read, timeout, max_bytes)
        self._backend.check()
        return bytes(data)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._call(self._inner.write, timeout, buffer)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        inner = self._call(self._inner.start_tls, timeout, ssl_context, server_hostname)
        return _Stream(inner, self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    def shutdown(self) -> None:
        sock = self._inner.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner
        self._streams: weakref.WeakSet[_Stream] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._aborted = False

    def register(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.add(stream)

    def check(self) -> None:
        if self._aborted:
            raise Aborted("the client was closed while this request was in flight")

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            streams = list(self._streams)
        for stream in streams:
            stream.shutdown()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        inner = _Probe(self)._call(
            self._inner.connect_tcp,
            timeout,
            host,
            port,
            local_address=local_address,
            socket_options=socket_options,
        )
        return _Stream(inner, self)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:  # pragma: no cover - the client speaks TCP only
        inner = _Probe(self)._call(
            self._inner.connect_unix_socket, timeout, path, socket_options=socket_options
        )
        return _Stream(inner, self)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _Probe(_Stream):
    """The deadline logic of `_Stream`, for connecting (there is no stream yet)."""

    def __init__(self, backend: _Backend) -> None:  # no inner stream, not registered
        self._backend = backend


class DeadlineTransport(httpx.HTTPTransport):
    """`httpx.HTTPTransport` with deadline-bounded sockets and ``abort()``.

    httpx offers no public way to choose httpcore's network backend, so the pool's backend is
    wrapped after construction; tests/test_client_deadlines.py fails loudly if httpx moves it.
    """

    def __init__(self, *, verify: ssl.SSLContext | bool) -> None:
        super().__init__(verify=verify)
        pool = self._pool
        inner = getattr(pool, "_network_backend", None)
        if not isinstance(inner, httpcore.NetworkBackend):  # pragma: no cover - httpx changed
            raise RuntimeError("httpx's connection pool has no network backend to wrap")
        self._backend = _Backend(inner)
        pool._network_backend = self._backend

    def abort(self) -> None:
        """Fail every request in flight, from any thread, now."""
        self._backend.abort()


def deadline_client(**options: Any) -> httpx.Client:
    """An httpx.Client (no proxies, no environment) whose sockets obey ``deadline_scope``.

    For a request whose whole answer must arrive by a deadline: httpx's own timeout is per
    read, and a peer that sends a byte now and then never trips it.
    """
    return httpx.Client(trust_env=False, transport=DeadlineTransport(verify=True), **options)
