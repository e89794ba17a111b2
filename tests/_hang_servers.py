"""Network peers that make a client hang: a closed port and a TCP peer that never speaks."""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


def closed_port() -> int:
    """A port on 127.0.0.1 that was just bound and closed: connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SilentPeer:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte (nor closes them)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="silent-peer", daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)  # held open, never written to

    def __enter__(self) -> SilentPeer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()
        self._sock.close()


class TricklePeer:
    """Answers every request one byte every ``interval_s``, forever: ``headers`` drips the status
    line itself, ``body`` sends whole headers (a large content-length) and then drips the body.

    Each byte arrives well within any per-read timeout, so only a total deadline ends the wait.
    """

    def __init__(self, what: str, interval_s: float = 0.2) -> None:
        if what not in ("headers", "body"):
            raise ValueError(f"unknown trickle {what!r}")
        self.what = what
        self.interval_s = interval_s
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, name="trickle-peer", daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._drip, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _drip(self, conn: socket.socket) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        with conn:
            conn.settimeout(5)
            try:
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    request += chunk
                if self.what == "body":
                    conn.sendall(head + b"content-length: 1000000\r\n\r\n")
                    drip = b"{" + b" " * 999_999
                else:
                    drip = head + b"x-padding: " + b"a" * 1_000_000
                for i in range(len(drip)):  # bounded: a million bytes at interval_s each
                    if self._stop.wait(self.interval_s):
                        return
                    conn.sendall(drip[i : i + 1])
            except OSError:
                return

    def __enter__(self) -> TricklePeer:
        self._accept.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._accept.join(5)
        for t in self._threads:
            t.join(5)
        self._sock.close()
