"""SIGTERM handled like Ctrl-C, so `timeout`, CI runners and `kill` leave no partial files.

The default SIGTERM action ends the process at once: no ``finally`` runs, and a download in
progress leaves its ``.partial-*.tmp`` file behind.  Raised as KeyboardInterrupt instead, it
unwinds like Ctrl-C: files are cleaned up, the resume hint is printed, the exit code is 130.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
