"""Where the gateway gets ComfyUI's ``/object_info`` to validate workflows before GPU time.

An ``ObjectInfoSource`` is a callable returning the parsed document, or None when it cannot be
had; the gateway then skips the check rather than refusing jobs (ComfyUI still validates).
``refresh()`` asks for a newer copy: a workflow naming a model file added since the last fetch
is re-checked once before it is refused.

    source = ComfyObjectInfo("http://127.0.0.1:8188")     # `ryla serve`: the running ComfyUI
    source = FileObjectInfo(Path("/opt/object_info.json"))  # Modal: baked into the image
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import httpx

from ryla_modal import defaults
from ryla_modal._transport import DeadlineExceeded, deadline_client, deadline_scope
from ryla_modal.errors import RylaError
from ryla_modal.policy import Deadline
from ryla_modal.validate import load_object_info

log = logging.getLogger("ryla_modal.gateway")


class ObjectInfoSource(Protocol):
    def __call__(self) -> dict[str, Any] | None:
        """The object_info document (cached), or None when it is unavailable."""

    def refresh(self, min_age_s: float) -> dict[str, Any] | None:
        """A fresh copy if the cached one is older than ``min_age_s`` (else None)."""


class ComfyObjectInfo:
    """GET {comfy}/object_info in the background, one fetch at a time; serve the last good copy.

    A request never waits on ComfyUI longer than ``wait_s``: the fetch runs in a thread of its
    own (single flight: concurrent callers share it), a caller that holds a copy gets it at once
    while a newer one is fetched, and a caller with no copy waits at most ``wait_s`` for the
    fetch, then goes on without (None: the workflow goes to ComfyUI unchecked).  A stopped
    ComfyUI (SIGSTOP) therefore costs a submit ``wait_s``, not the 30 s fetch timeout, and never
    holds up the requests behind it.  After a failed fetch the next one waits ``retry_after_s``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = defaults.OBJECT_INFO_TIMEOUT_S,
        retry_after_s: float = defaults.OBJECT_INFO_RETRY_S,
        wait_s: float = defaults.OBJECT_INFO_WAIT_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.wait_s = wait_s
        self._lock = threading.Lock()
        self._info: dict[str, Any] | None = None
        self._fetched_at = 0.0
        self._failed_at: float | None = None
        self._inflight: threading.Event | None = None

    def __call__(self) -> dict[str, Any] | None:
        with self._lock:
            if self._info is not None:
                return self._info
            if self._failed_at is not None and (
                time.monotonic() - self._failed_at < self.retry_after_s
            ):
                return None
            done = self._start_fetch()
        done.wait(self.wait_s)
        with self._lock:
            return self._info

    def refresh(self, min_age_s: float) -> dict[str, Any] | None:
        with self._lock:
            if self._info is not None and time.monotonic() - self._fetched_at < min_age_s:
                return None
            before = self._fetched_at
            done = self._start_fetch()
        done.wait(self.wait_s)
        with self._lock:
            return self._info if self._fetched_at != before else None

    def _start_fetch(self) -> threading.Event:
        """The running fetch's done event, starting one if none runs (call with the lock)."""
        if self._inflight is None:
            done = threading.Event()
            self._inflight = done
            threading.Thread(
                target=self._fetch, args=(done,), name="ryla-object-info", daemon=True
            ).start()
        return self._inflight

    def _fetch(self, done: threading.Event) -> None:
        url = f"{self.base_url}/object_info"
        try:
            data, reason = self._get(url)
            with self._lock:
                if data is None:
                    self._failed_at = time.monotonic()
                else:
                    self._info = data
                    self._fetched_at = time.monotonic()
                    self._failed_at = None
            if data is None:
                log.warning(
                    "object_info unavailable from %s (%s): workflows go to ComfyUI unchecked",
                    url,
                    reason,
                )
        finally:
            with self._lock:
                self._inflight = None
            done.set()

    def _get(self, url: str) -> tuple[dict[str, Any] | None, str]:
        try:  # the whole answer within timeout_s: a ComfyUI that trickles it cannot hold the fetch
            with (
                deadline_scope(Deadline(self.timeout_s, "object_info deadline")),
                deadline_client(timeout=httpx.Timeout(self.timeout_s)) as client,
            ):
                resp = client.get(url)
            data = resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, DeadlineExceeded, ValueError) as exc:
            return None, f"{type(exc).__name__}: {exc}"
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            why = f"HTTP {resp.status_code}" if data is None else "not an object_info document"
            return None, why
        return data, "ok"


class FileObjectInfo:
    """A saved object_info file (baked into the Modal image), read once."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._info: dict[str, Any] | None = None
        self._loaded = False

    def __call__(self) -> dict[str, Any] | None:
        with self._lock:
            if not self._loaded:
                self._loaded = True
                try:
                    self._info = load_object_info(self.path)
                except RylaError as exc:
                    log.warning("object_info unavailable (%s): workflows go unchecked", exc)
            return self._info

    def refresh(self, min_age_s: float) -> dict[str, Any] | None:
        return None  # a file baked into an image does not change


__all__ = ["ComfyObjectInfo", "FileObjectInfo", "ObjectInfoSource"]
