"""Run a command under a hard deadline, streaming its lines as they arrive.

The ``modal`` CLI can hang for minutes (a silent TCP peer) or forever (an HTTP/2 server that never
answers, ``modal app logs -f``), and scripts that call us must not.  So every command here runs
in its own process group with stdin closed; stdout and stderr are read without blocking, line by
line, and handed to a callback; at the deadline the whole group gets SIGTERM and, after a short
grace, SIGKILL.  The call returns by ``timeout + kill_grace`` plus a few milliseconds even when a
grandchild keeps the pipes open, and nothing of the group outlives it.

POSIX only (process groups, ``killpg``).  Secrets belong in ``env``, never in ``argv``.

Example::

    result = run_command(["modal", "app", "list"], timeout=10, on_line=print_line)
    if result.timed_out: ...
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ryla_modal import defaults

#: ``on_line(stream, line)``: stream is ``"stdout"`` or ``"stderr"``; the line has no newline.
LineCallback = Callable[[str, str], None]

STDOUT = "stdout"
STDERR = "stderr"
_EXIT = "exit"
# Without a pidfd we cannot wait on the child's exit in the selector, so we look this often.
_EXIT_POLL_S = 0.05
# After SIGKILL a process normally dies at once; this bounds the wait for its exit status.
_REAP_WAIT_S = 1.0


@dataclass(frozen=True)
class CommandResult:
    """What a command did before it ended or was stopped.

    ``exit_code`` follows ``subprocess``: negative for a signal (``-15`` after our SIGTERM),
    ``None`` if the process could not even be reaped after SIGKILL.
    """

    argv: tuple[str, ...]
    exit_code: int | None
    lines: tuple[tuple[str, str], ...]
    stderr_tail: str
    timed_out: bool
    duration_s: float
    interrupted: bool = False
    pid: int = 0
    #: True when lines were dropped because more than ``keep_lines`` arrived.
    truncated: bool = field(default=False)

    @property
    def stdout_lines(self) -> list[str]:
        return [text for stream, text in self.lines if stream == STDOUT]

    @property
    def stderr_lines(self) -> list[str]:
        return [text for stream, text in self.lines if stream == STDERR]

    @property
    def stdout(self) -> str:
        return "\n".join(self.stdout_lines)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.interrupted


def redact(argv: Iterable[str], secrets: Iterable[str] = ()) -> list[str]:
    """A copy of argv safe to show: known secret values and the value after ``--*secret*`` /
    ``--*token*`` flags become ``***``.  A second line of defence; secrets go in ``env``."""
    hidden = [s for s in secrets if s and len(s) >= 4]
    out: list[str] = []
    mask_next = False
    for arg in argv:
        if mask_next:
            out.append("***")
            mask_next = False
            continue
        low = arg.lower()
        if low.startswith("--") and any(w in low for w in ("secret", "token", "password")):
            if "=" in arg:
                out.append(arg.split("=", 1)[0] + "=***")
            else:
                out.append(arg)
                mask_next = True
            continue
        for s in hidden:
            arg = arg.replace(s, "***")
        out.append(arg)
    return out


def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    on_line: LineCallback | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    kill_grace: float = defaults.KILL_GRACE_S,
    keep_lines: int | None = None,
    on_start: Callable[[int], None] | None = None,
) -> CommandResult:
    """Run ``argv`` (never through a shell) and return by ``timeout + kill_grace``.

    Ctrl-C is forwarded to the group as SIGINT (SIGKILL after the grace, or at once on a second
    Ctrl-C) and the result comes back with ``interrupted=True``; the caller decides how to exit.
    An exception from ``on_line`` kills the group at once and propagates.  ``keep_lines`` bounds
    the lines kept in the result (the newest are kept); the callback sees every line.

    Raises ``OSError`` (e.g. ``FileNotFoundError``) if the program cannot be started.
    """
    if not argv:
        raise ValueError("argv is empty")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    started = time.monotonic()
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,  # own session and process group: killpg reaches grandchildren
        close_fds=True,
    )
    runner = _Runner(proc, started + timeout, kill_grace, on_line, keep_lines)
    try:
        if on_start is not None:
            on_start(proc.pid)
        runner.loop()
    except BaseException:
        runner.signal_group(signal.SIGKILL)
        raise
    finally:
        runner.close()
    return CommandResult(
        argv=tuple(argv),
        exit_code=proc.returncode,
        lines=tuple(runner.lines),
        stderr_tail="\n".join(runner.stderr_tail),
        timed_out=runner.timed_out,
        duration_s=time.monotonic() - started,
        interrupted=runner.interrupted,
        pid=proc.pid,
        truncated=runner.truncated,
    )


class _Runner:
    """The read/deadline loop for one process; private to :func:`run_command`."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        deadline: float,
        grace: float,
        on_line: LineCallback | None,
        keep_lines: int | None,
    ) -> None:
        self.proc = proc
        self.pgid = proc.pid  # start_new_session makes the child its group's leader
        self.deadline = deadline
        self.grace = max(0.0, grace)
        self.on_line = on_line
        self.lines: deque[tuple[str, str]] = deque(maxlen=keep_lines)
        self.keep_lines = keep_lines
        self.truncated = False
        self.stderr_tail: deque[str] = deque(maxlen=defaults.PROC_STDERR_TAIL_LINES)
        self.timed_out = False
        self.interrupted = False
        self.exited = False
        self.exited_at = 0.0
        self.stop_at: float | None = None  # set once we signalled: SIGKILL time, then give-up time
        self.killed = False
        self.buffers: dict[str, bytes] = {STDOUT: b"", STDERR: b""}
        self.open_streams: set[str] = set()
        self.sel = selectors.DefaultSelector()
        assert proc.stdout is not None and proc.stderr is not None
        for name, pipe in ((STDOUT, proc.stdout), (STDERR, proc.stderr)):
            os.set_blocking(pipe.fileno(), False)
            self.sel.register(pipe.fileno(), selectors.EVENT_READ, name)
            self.open_streams.add(name)
        self.pidfd: int | None = None
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is not None:
            with contextlib.suppress(OSError):  # old kernels: fall back to polling
                self.pidfd = pidfd_open(proc.pid)
                self.sel.register(self.pidfd, selectors.EVENT_READ, _EXIT)

    # --- the loop ------------------------------------------------------------------------------

    def loop(self) -> None:
        while True:
            try:
                if self._step():
                    return
            except KeyboardInterrupt:
                self._on_interrupt()

    def _step(self) -> bool:
        """One wait + one round of events and deadline checks; True when we are done."""
        now = time.monotonic()
        if self.exited and not self.open_streams:
            return True
        wake = self._next_wake(now)
        if self.pidfd is None and not self.exited:
            wake = min(wake, now + _EXIT_POLL_S)
        for key, _ in self.sel.select(max(0.0, wake - now)):
            name = key.data
            if name == _EXIT:
                self._mark_exited()
            else:
                self._read(name, key.fd)
        if self.pidfd is None and not self.exited and self._has_exited():
            self._mark_exited()
        return self._check_times(time.monotonic())

    def _next_wake(self, now: float) -> float:
        wakes = [self.deadline] if not self.timed_out and self.stop_at is None else []
        if self.stop_at is not None:
            wakes.append(self.stop_at)
        if self.exited:
            wakes.append(self.exited_at + self.grace)
        return min(wakes) if wakes else now + 1.0

    def _check_times(self, now: float) -> bool:
        if self.exited and not self.open_streams:
            return True
        if self.exited and now >= self.exited_at + self.grace:
            # The command is gone but something it started still holds a pipe: stop reading;
            # close() kills the rest of the group.
            return True
        if self.stop_at is None and now >= self.deadline:
            self.timed_out = True
            self._begin_stop(signal.SIGTERM, now)
        elif self.stop_at is not None and now >= self.stop_at:
            if self.killed:
                return True  # SIGKILL sent and still no exit (D state?): give up waiting
            self._kill(now)
        return False

    def _begin_stop(self, sig: signal.Signals, now: float) -> None:
        self.signal_group(sig)
        self.stop_at = now + self.grace

    def _kill(self, now: float) -> None:
        self.signal_group(signal.SIGKILL)
        self.killed = True
        self.stop_at = now + _REAP_WAIT_S

    def _on_interrupt(self) -> None:
        now = time.monotonic()
        if not self.interrupted and self.stop_at is None:
            self.interrupted = True
            self._begin_stop(signal.SIGINT, now)
        else:  # a second Ctrl-C, or one during the grace: no more waiting
            self.interrupted = True
            if not self.killed:
                self._kill(now)

    # --- reading -------------------------------------------------------------------------------

    def _read(self, name: str, fd: int) -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close_stream(name, fd)
            return
        buf = self.buffers[name] + chunk
        *complete, rest = buf.split(b"\n")
        if len(rest) > defaults.PROC_MAX_LINE_BYTES:  # a "line" with no end: hand it over in parts
            complete.append(rest)
            rest = b""
        self.buffers[name] = rest
        for raw in complete:
            self._emit(name, raw)

    def _close_stream(self, name: str, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(fd)
        self.open_streams.discard(name)
        if self.buffers[name]:
            rest, self.buffers[name] = self.buffers[name], b""
            self._emit(name, rest)

    def _emit(self, name: str, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if self.keep_lines is not None and len(self.lines) == self.keep_lines:
            self.truncated = True
        self.lines.append((name, text))
        if name == STDERR:
            self.stderr_tail.append(text)
        if self.on_line is not None:
            self.on_line(name, text)

    # --- the process ---------------------------------------------------------------------------

    def _has_exited(self) -> bool:
        """Whether the child has exited, without reaping it (so its pgid stays reserved)."""
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def _mark_exited(self) -> None:
        if not self.exited:
            self.exited = True
            self.exited_at = time.monotonic()
            if self.pidfd is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(self.pidfd)

    def signal_group(self, sig: signal.Signals) -> None:
        # The leader is not reaped before close(), so its pid cannot name another group yet.
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)

    def close(self) -> None:
        """Kill whatever is left of the group, reap the child, release every descriptor."""
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=_REAP_WAIT_S)
        for name in list(self.open_streams):  # flush partial lines of pipes still open
            if self.buffers[name]:
                rest, self.buffers[name] = self.buffers[name], b""
                with contextlib.suppress(Exception):
                    self._emit(name, rest)
        self.open_streams.clear()
        self.sel.close()
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
