"""Process liveness checks for tests that promise "no process of ours is left alive"."""

from __future__ import annotations

import os
import time


def pid_alive(pid: int) -> bool:
    """True while ``pid`` names a running (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # The state letter follows the parenthesised command name, which may itself hold spaces.
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def wait_dead(pids: list[int], within: float = 3.0) -> list[int]:
    """Wait (bounded) for ``pids`` to die; return the ones still alive."""
    end = time.monotonic() + within
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < end:
        time.sleep(0.02)
        alive = [p for p in alive if pid_alive(p)]
    return alive
