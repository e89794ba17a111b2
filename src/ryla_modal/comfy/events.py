"""One websocket to ComfyUI shared by every prompt a runner follows, demultiplexed by prompt id.

A socket per job cost a handshake on each job's critical path, two threads per job, and — since
ComfyUI broadcasts every ``status`` message to every socket — work that grew with the square of
the jobs in flight.  Here a runner submits all its prompts under one ``client_id``; one reader
thread takes each message off the socket and hands it to the subscription of the prompt it names.
ComfyUI runs one prompt at a time, so a binary frame that names no prompt (legacy event 1
previews) belongs to the prompt that was executing when it arrived.

A subscription behaves like a socket of its own (``recv``/``close``): when the shared socket
drops, every subscription gets ``SocketClosed`` after the messages that came before it, and its
follower falls back to polling /history and subscribes again, which reconnects (one connect at a
time, and none within ``retry_s`` of a failed one, so a down ComfyUI is not hammered by N jobs).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import uuid

from ryla_modal import defaults
from ryla_modal.comfy.api import (
    TERMINAL_EVENTS,
    BinaryFrame,
    ComfyAPI,
    EventSocket,
    Message,
    SocketClosed,
)

_CLOSED = object()  # queued after the last message a subscription will get from this socket
_READ_SLICE_S = 1.0  # the reader looks at ``closed`` at least this often


class Subscription:
    """One prompt's messages from the shared socket, in the order they arrived."""

    def __init__(self, hub: EventHub, prompt_id: str) -> None:
        self.prompt_id = prompt_id
        self._hub = hub
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._closed = False

    def _put(self, item: object) -> None:
        self._queue.put(item)

    def recv(self, timeout: float) -> Message | None:
        """The next message, None if none came within ``timeout``; SocketClosed once it dropped."""
        if self._closed:
            raise SocketClosed(f"the event socket for {self.prompt_id} is closed")
        try:
            item = self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if item is _CLOSED:
            self._closed = True
            raise SocketClosed("ComfyUI's event socket dropped")
        return item  # type: ignore[return-value]  # only messages and _CLOSED are queued

    def close(self) -> None:
        self._hub._unsubscribe(self)


class EventHub:
    """The shared socket of one runner: ``client_id`` goes into every prompt it submits."""

    def __init__(
        self,
        api: ComfyAPI,
        *,
        client_id: str | None = None,
        retry_s: float = defaults.COMFY_WS_CONNECT_RETRY_S,
    ) -> None:
        self.api = api
        self.client_id = client_id or uuid.uuid4().hex
        self.retry_s = retry_s
        self._lock = threading.Lock()  # guards the fields below; connects happen under it
        self._subs: dict[str, Subscription] = {}
        self._socket: EventSocket | None = None
        self._failed_at: float | None = None
        self._closed = False
        self._executing: str | None = None  # touched by the reader thread only

    def subscribe(
        self, prompt_id: str, *, open_timeout: float = defaults.COMFY_WS_OPEN_TIMEOUT_S
    ) -> Subscription:
        """Start routing ``prompt_id``'s messages; connects first if needed (SocketClosed if not).

        Subscribe before submitting the prompt: messages for a prompt nobody subscribed to are
        dropped.
        """
        with self._lock:
            if self._closed:
                raise SocketClosed("the event hub is closed")
            if self._socket is None:
                self._connect(open_timeout)
            sub = Subscription(self, prompt_id)
            old = self._subs.get(prompt_id)
            if old is not None:
                old._put(_CLOSED)  # one follower per prompt: the newer one wins
            self._subs[prompt_id] = sub
            return sub

    def _connect(self, open_timeout: float) -> None:
        now = time.monotonic()
        if self._failed_at is not None and now - self._failed_at < self.retry_s:
            ago = now - self._failed_at
            raise SocketClosed(f"ComfyUI's event socket could not be opened {ago:.1f} s ago")
        try:
            sock = self.api.open_events(self.client_id, open_timeout=open_timeout)
        except SocketClosed:
            self._failed_at = time.monotonic()
            raise
        self._failed_at = None
        self._socket = sock
        reader = threading.Thread(
            target=self._read, args=(sock,), name="ryla-comfy-events", daemon=True
        )
        reader.start()

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if self._subs.get(sub.prompt_id) is sub:
                del self._subs[sub.prompt_id]

    def _read(self, sock: EventSocket) -> None:
        """Route messages until the socket drops or the hub closes; bounded by those two."""
        try:
            while not self._closed:
                try:
                    msg = sock.recv(_READ_SLICE_S)
                except SocketClosed:
                    return
                if msg is not None:
                    self._route(msg)
        finally:
            sock.close()
            with self._lock:
                if self._socket is sock:
                    self._socket = None
                    for sub in self._subs.values():
                        sub._put(_CLOSED)
                    self._subs.clear()

    def _route(self, msg: Message) -> None:
        if isinstance(msg, BinaryFrame):
            prompt_id = msg.prompt_id or self._executing
        else:
            data = msg["data"]
            raw = data.get("prompt_id")
            prompt_id = None if raw is None else str(raw)
            if prompt_id is not None:
                kind = msg["type"]
                if kind in TERMINAL_EVENTS or (kind == "executing" and data.get("node") is None):
                    if self._executing == prompt_id:
                        self._executing = None
                elif kind in ("execution_start", "executing", "progress", "executed"):
                    self._executing = prompt_id
        if prompt_id is None:
            return  # status broadcasts and the like: no follower needs them
        with self._lock:
            sub = self._subs.get(prompt_id)
        if sub is not None:
            sub._put(msg)

    def close(self) -> None:
        """Stop the reader and close the socket; later ``subscribe`` calls raise SocketClosed."""
        with self._lock:
            self._closed = True
            sock, self._socket = self._socket, None
            for sub in self._subs.values():
                sub._put(_CLOSED)
            self._subs.clear()
        if sock is not None:
            with contextlib.suppress(Exception):
                sock.close()
