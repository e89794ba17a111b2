"""Record what a ComfyUI (stand-in or real) sends on ``/ws``, from a background thread.

Like the transcripts' recorder: open the socket (optionally send ``feature_flags`` first), keep
every message in order, and let the test wait for a count or a condition under a deadline.

Example::

    with WsRecorder(base_url, client_id) as ws:
        ... POST /prompt ...
        ws.wait_for(lambda m: m["type"] == "executing" and m["data"]["node"] is None)
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

Message = dict[str, Any]


class WsRecorder:
    def __init__(
        self,
        base_url: str,
        client_id: str | None = None,
        *,
        first_message: Message | None = None,
        open_timeout: float = 5.0,
    ) -> None:
        from websockets.sync.client import connect

        url = base_url.replace("http://", "ws://", 1) + "/ws"
        if client_id is not None:
            url += f"?clientId={client_id}"
        self._stack = contextlib.ExitStack()  # websockets 17 wants connect() entered
        self._ws = self._stack.enter_context(
            connect(url, open_timeout=open_timeout, close_timeout=1, max_size=None)
        )
        if first_message is not None:
            self._ws.send(json.dumps(first_message))
        self.messages: list[Message] = []
        self.binary: list[bytes] = []
        self.closed = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for frame in self._ws:
                with self._cond:
                    if isinstance(frame, bytes):
                        self.binary.append(frame)
                    else:
                        self.messages.append(json.loads(frame))
                    self._cond.notify_all()
        except Exception:  # a dropped connection ends the recording like a clean close
            pass
        finally:
            self.closed.set()
            with self._cond:
                self._cond.notify_all()

    def snapshot(self) -> list[Message]:
        with self._cond:
            return list(self.messages)

    def wait_count(self, count: int, timeout: float = 10.0) -> list[Message]:
        """Block until ``count`` messages arrived; AssertionError (with what came) if not."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0 or (self.closed.is_set() and len(self.messages) < count):
                    raise AssertionError(
                        f"expected {count} ws messages within {timeout} s, got"
                        f" {len(self.messages)}: {[m.get('type') for m in self.messages]}"
                    )
                self._cond.wait(left)
            return list(self.messages)

    def wait_for(
        self, predicate: Callable[[Message], bool], timeout: float = 10.0, start: int = 0
    ) -> Message:
        """The first message from index ``start`` on that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for message in self.messages[start:]:
                    if predicate(message):
                        return message
                left = deadline - time.monotonic()
                if left <= 0 or self.closed.is_set():
                    raise AssertionError(
                        f"no matching ws message within {timeout} s; got"
                        f" {[m.get('type') for m in self.messages]}"
                    )
                self._cond.wait(left)

    def settle(self, quiet: float = 0.3, timeout: float = 5.0) -> list[Message]:
        """Wait until no message has arrived for ``quiet`` seconds (the recorder's 0.5 s)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = len(self.messages)
            while time.monotonic() < deadline:
                self._cond.wait(quiet)
                if len(self.messages) == seen:
                    break
                seen = len(self.messages)
            return list(self.messages)

    def close(self) -> None:
        self._stack.close()
        self._thread.join(timeout=2)

    def __enter__(self) -> WsRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
