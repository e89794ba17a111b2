"""Launch ComfyUI, wait until it answers, watch it, stop it.

The command is configurable (``[python, "main.py"]`` for a real checkout, the stand-in server in
tests), so the tests exercise the very code that runs in the container.  Readiness is GET
/system_stats, polled at most every ``COMFY_READY_POLL_S`` under a deadline; everything ComfyUI
prints goes to a log file whose tail is attached to every error.

Example::

    with ComfyProcess.for_checkout(Path("/opt/ComfyUI"), extra_args=["--cpu"]) as comfy:
        runner = ComfyRunner(comfy.base_url, process=comfy)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from ryla_modal import defaults
from ryla_modal._transport import DeadlineExceeded, deadline_client, deadline_scope
from ryla_modal.errors import ComfyUIUnavailable, ConfigError, JobCancelled
from ryla_modal.policy import Deadline

_TAIL_BLOCK = 8192
_TAIL_MAX_BYTES = 256 * 1024
_PR_SET_PDEATHSIG = 1
_SILENT_PROBES = 2  # probes in a row without an answer before ComfyUI counts as unresponsive

log = logging.getLogger("ryla_modal.comfy")


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux SIGKILL the child when the forking thread ends.

    ``prctl(PR_SET_PDEATHSIG)`` fires when the *thread* that forked exits, not the process:
    whoever passes this must fork from a thread that lives as long as the child should (the
    main thread, or ``ComfyMonitor``'s).  libc is looked up here, before the fork, so the child
    only calls a function pointer.  None off Linux (no such call; the process group stop is
    all there is).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody would stop us
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def free_port(host: str = defaults.COMFY_HOST) -> int:
    """A port the OS just reported free on ``host`` (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on ``host:port``.

    Binds with SO_REUSEADDR, as aiohttp does: a port left in TIME_WAIT counts as free, a listener
    (on this address or on 0.0.0.0) does not.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def read_tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a (possibly huge, possibly growing) text file."""
    if lines <= 0:
        return ""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            end = fh.tell()
            data = b""
            pos = end
            # Read backwards block by block until we hold enough newlines (or the cap).
            while pos > 0 and data.count(b"\n") <= lines and len(data) < _TAIL_MAX_BYTES:
                step = min(_TAIL_BLOCK, pos)
                pos -= step
                fh.seek(pos)
                data = fh.read(step) + data
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def check_ready(
    base_url: str,
    *,
    timeout: float = defaults.COMFY_READY_PROBE_TIMEOUT_S,
    client: httpx.Client | None = None,
) -> None:
    """The one readiness probe: GET /system_stats answers 200, else ComfyUIUnavailable (why).

    Every place that asks "does ComfyUI answer?" calls this (the launcher's wait, the Modal
    worker's health check before a job, a local warm-up, ``ryla serve --comfyui-url``), so they
    agree on what ready means.  ``timeout`` bounds the whole probe, a trickling answer included
    (httpx's own timeout is per read); ``client`` (a ``deadline_client``) reuses a connection
    pool across repeated probes.
    """
    url = f"{base_url.rstrip('/')}/system_stats"
    try:
        with deadline_scope(Deadline(timeout, "readiness probe")):
            if client is None:
                with deadline_client() as own:
                    resp = own.get(url, timeout=httpx.Timeout(timeout))
            else:
                resp = client.get(url, timeout=httpx.Timeout(timeout))
    except (httpx.HTTPError, DeadlineExceeded) as exc:
        raise ComfyUIUnavailable(f"no ComfyUI answers at {base_url}: {exc}") from exc
    if resp.status_code != 200:
        raise ComfyUIUnavailable(f"{url} answered HTTP {resp.status_code}; is this ComfyUI?")


#: Our own secrets by name: ``RYLA_TOKEN``, ``RYLA_MODAL_KEY``, ``RYLA_MODAL_SECRET``, and any
#: later ``RYLA_*`` that holds a token, key, secret or password.
_SECRET_NAME = re.compile(r"^RYLA_.*(TOKEN|SECRET|KEY|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)


def child_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without our secrets, for ComfyUI's process.

    ComfyUI runs third-party custom nodes in its own process; anything in its environment is
    theirs to read.  The gateway's bearer token and Modal proxy credentials are ours alone.
    What the caller passes as ``env`` is still added on top: that is a deliberate choice.
    """
    return {k: v for k, v in environ.items() if not _SECRET_NAME.match(k)}


class ComfyProcess:
    """One ComfyUI server process: ``start()`` returns once it answers, ``stop()`` ends it.

    ``command`` is the program without the listen arguments (e.g. ``[python, "main.py"]``);
    ``--listen HOST --port PORT`` and then ``extra_args`` are appended.  ``env`` is added on top
    of the current environment, from which our own secrets (``RYLA_TOKEN`` & co., see
    ``child_environ``) are removed.  Output (stdout and stderr) goes to ``log_path``, or to a temp
    file that is kept after stop so the log can still be read.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        cwd: Path | None = None,
        host: str = defaults.COMFY_HOST,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        die_with_parent: bool = False,
    ) -> None:
        if not command:
            raise ConfigError("ComfyProcess needs a command to run (e.g. [python, 'main.py'])")
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.cwd = cwd
        self.argv: list[str] = [
            *command,
            "--listen",
            host,
            "--port",
            str(self.port),
            *extra_args,
        ]
        self._extra_env = dict(env or {})
        #: SIGKILL ComfyUI when the thread that launched it ends (``ryla serve`` SIGKILLed)
        self.die_with_parent = die_with_parent
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="comfyui-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None

    @classmethod
    def for_checkout(
        cls,
        comfyui_dir: Path,
        python: str = sys.executable,
        *,
        host: str = defaults.COMFY_HOST,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        die_with_parent: bool = False,
    ) -> ComfyProcess:
        """A process running ``python main.py`` inside a ComfyUI checkout."""
        comfyui_dir = Path(comfyui_dir)
        if not (comfyui_dir / "main.py").is_file():
            raise ConfigError(f"{comfyui_dir} is not a ComfyUI checkout: it has no main.py")
        return cls(
            [python, "main.py"],
            cwd=comfyui_dir,
            host=host,
            port=port,
            extra_args=extra_args,
            log_path=log_path,
            env=env,
            die_with_parent=die_with_parent,
        )

    # --- facts ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has ended, else None."""
        return self._proc.poll() if self._proc is not None else None

    def log_tail(self, lines: int = defaults.COMFY_LOG_TAIL_LINES) -> str:
        if self._log_fh is not None:
            with contextlib.suppress(ValueError, OSError):
                self._log_fh.flush()
        return read_tail(self.log_path, lines)

    def log_offset(self) -> int:
        """Where the log ends now: mark a job's start and end with it, then ``log_lines``."""
        if self._log_fh is not None:
            with contextlib.suppress(ValueError, OSError):
                self._log_fh.flush()
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_lines(
        self, start: int, end: int | None = None, *, max_lines: int = defaults.COMFY_LOG_TAIL_LINES
    ) -> list[str]:
        """The log's lines between two ``log_offset`` marks (the last ``max_lines`` of them).

        A restart truncates the log (offsets past its end give nothing).
        """
        stop = self.log_offset() if end is None else end
        if stop <= start:
            return []
        begin = max(start, stop - _TAIL_MAX_BYTES)  # bounded: a chatty job cannot fill memory
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(begin)
                data = fh.read(stop - begin)
        except OSError:
            return []
        lines = data.decode("utf-8", errors="replace").splitlines()
        return lines[-max_lines:] if max_lines > 0 else []

    # --- life cycle -------------------------------------------------------------------------

    def start(self, *, ready_timeout: float = defaults.COMFY_READY_TIMEOUT_S) -> None:
        """Launch and block until GET /system_stats answers 200, or raise ComfyUIUnavailable."""
        if self._proc is not None and self._proc.poll() is None:
            return
        # The real ComfyUI only reports a taken port after its whole start (seconds); say it now.
        try:
            busy = port_in_use(self.host, self.port)
        except OSError as exc:
            raise ComfyUIUnavailable(
                f"cannot use {self.host}:{self.port} for ComfyUI: {exc.strerror or exc}"
            ) from exc
        if busy:
            raise ComfyUIUnavailable(
                f"port {self.port} on {self.host} is already in use; ComfyUI cannot listen there",
                hint="stop whatever listens there, or leave the port unset to pick a free one",
            )
        env = {**child_environ(os.environ), "PYTHONUNBUFFERED": "1", **self._extra_env}
        self._log_fh = self.log_path.open("wb")
        try:
            self._proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent() if self.die_with_parent else None,
            )
        except OSError as exc:
            self._close_log()
            raise ComfyUIUnavailable(f"could not launch ComfyUI ({self.argv[0]}): {exc}") from exc
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop(grace=defaults.KILL_GRACE_S)
            raise

    def _wait_ready(self, ready_timeout: float) -> None:
        assert self._proc is not None
        started = time.monotonic()
        deadline = started + ready_timeout
        with deadline_client() as client:
            while True:
                probe_at = time.monotonic()
                self._raise_if_exited("ComfyUI exited before it was ready")
                left = deadline - probe_at
                if left <= 0:
                    raise ComfyUIUnavailable(
                        f"ComfyUI did not answer GET /system_stats within {ready_timeout:g} s"
                        f" (pid {self._proc.pid}, {self.base_url})",
                        log_tail=self.log_tail(),
                        hint="raise the ready timeout if it is still loading, else read the log",
                    )
                budget = min(defaults.COMFY_READY_PROBE_TIMEOUT_S, left)
                try:
                    check_ready(self.base_url, timeout=budget, client=client)
                    return
                except ComfyUIUnavailable:
                    pass  # not listening yet, or half started: try again
                # At most one probe per COMFY_READY_POLL_S, never past the deadline.
                pause = probe_at + defaults.COMFY_READY_POLL_S - time.monotonic()
                if pause > 0:
                    time.sleep(min(pause, max(0.0, deadline - time.monotonic())))

    def _raise_if_exited(self, what: str) -> None:
        assert self._proc is not None
        code = self._proc.poll()
        if code is not None:
            raise ComfyUIUnavailable(
                f"{what}: {_describe_exit(code)} (command: {self.argv[0]} ...)",
                log_tail=self.log_tail(),
            )

    def check_alive(self) -> None:
        """Raise ComfyUIUnavailable (exit status + log tail) if the process is not running."""
        if self._proc is None:
            raise ComfyUIUnavailable("ComfyUI was not started")
        self._raise_if_exited("ComfyUI is no longer running")

    def stop(self, grace: float = defaults.COMFY_STOP_GRACE_S) -> None:
        """SIGTERM to the whole process group, SIGKILL after ``grace``; safe to call twice."""
        proc = self._proc
        if proc is None:
            self._close_log()
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, grace))
            # Children (custom-node workers) may outlive the leader; the group goes together.
            _signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=defaults.COMFY_STOP_GRACE_S)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_fh is not None:
            with contextlib.suppress(OSError):
                self._log_fh.close()
            self._log_fh = None

    def __enter__(self) -> ComfyProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ComfyProcess(pid={self.pid}, url={self.base_url!r}, log={str(self.log_path)!r})"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exit code {code}"


# --- watching a ComfyUI: its state for /health, restarts of the one we launched ---------------

#: ComfyUI answers GET /system_stats
COMFY_OK = "ok"
#: it holds its port but does not answer in time (stopped, swapping, stuck in a node)
COMFY_UNRESPONSIVE = "unresponsive"
#: nothing listens (refused): not started yet, or gone
COMFY_DOWN = "down"
#: our ComfyUI exited and is being started again
COMFY_RESTARTING = "restarting"
#: our ComfyUI exited and every restart failed: jobs fail at once until ``ryla serve`` restarts
COMFY_FAILED = "failed"


@dataclass(frozen=True)
class RestartPolicy:
    """How a ComfyUI we launched is restarted when it exits: bounded attempts, capped backoff.

    ``max_attempts`` counts restarts in a row; a ComfyUI that stayed up ``stable_after_s``
    starts a new count, so a crash a day does not use the budget up.
    """

    max_attempts: int = defaults.COMFY_RESTART_MAX_ATTEMPTS
    initial_backoff_s: float = defaults.COMFY_RESTART_BACKOFF_S
    max_backoff_s: float = defaults.COMFY_RESTART_BACKOFF_MAX_S
    stable_after_s: float = defaults.COMFY_RESTART_STABLE_S

    def backoff(self, attempt: int) -> float:
        """The pause before restart number ``attempt`` (0-based) of a streak."""
        return float(min(self.max_backoff_s, self.initial_backoff_s * (2 ** min(attempt, 30))))


class ComfyMonitor:
    """Watches one ComfyUI from its own thread: probes it, restarts the one we launched.

    ``state`` is one of ``ok``, ``unresponsive`` (two probes in a row got no answer in
    ``probe_timeout_s``), ``down`` (refused), ``restarting``, ``failed`` (shown by GET
    /health).  ``wait_up`` lets a job that arrives while ComfyUI is down or restarting
    wait for it within the job's budget instead of failing at once.  Restarts run on this
    monitor's thread, which lives as long as the server: a ComfyUI launched with
    ``die_with_parent`` dies with the thread that forked it.
    """

    def __init__(
        self,
        base_url: str,
        *,
        process: ComfyProcess | None = None,
        restart: RestartPolicy | None = None,
        probe_every_s: float = defaults.COMFY_PROBE_EVERY_S,
        probe_timeout_s: float = defaults.COMFY_READY_PROBE_TIMEOUT_S,
        ready_timeout_s: float = defaults.COMFY_READY_TIMEOUT_S,
        fresh_s: float = defaults.COMFY_PROBE_FRESH_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.process = process
        self.restart = restart or RestartPolicy()
        self.probe_every_s = probe_every_s
        self.probe_timeout_s = probe_timeout_s
        self.ready_timeout_s = ready_timeout_s
        self.fresh_s = fresh_s
        self.restarts = 0
        self._state = COMFY_OK
        self._last_ok = time.monotonic()
        self._up_since = time.monotonic()
        self._streak = 0
        self._silent = 0  # probes in a row that timed out
        self._waiters = 0
        self._probing = False  # a probe is in flight (its answer is shared)
        self._probe_generation = 0  # probes finished so far
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._client = deadline_client()
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> str:
        with self._cond:
            return self._state_locked()

    def _state_locked(self) -> str:
        if self._state == COMFY_OK and self._process_dead():
            return COMFY_DOWN  # between its death and the monitor's next look
        return self._state

    def start(self) -> None:
        """Begin watching (and restarting) in a thread of its own."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="ryla-comfy-monitor")
            self._thread.daemon = True
            self._thread.start()

    def close(self) -> None:
        """Stop watching: no restart begins after this (call before stopping the process)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def join(self, timeout: float = defaults.COMFY_STOP_GRACE_S) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
        self._client.close()

    def wait_up(
        self,
        timeout: float,
        on_wait: Callable[[], None] | None = None,
        *,
        answered_at: float | None = None,
        recheck: bool = False,
        cancel: threading.Event | None = None,
    ) -> bool:
        """Return once ComfyUI looks usable; True if this call had to wait for it.

        A fresh sign of life returns at once: ``answered_at`` (when ComfyUI last answered the
        caller's own requests, ``ComfyAPI.answered_at``) or, for a ComfyUI we launched, our last
        probe, within ``fresh_s``, the process alive.  Under load the jobs' own requests keep
        that fresh, so they cost ComfyUI no probe each.  Otherwise one probe decides, and always
        with ``recheck``: the caller just found ComfyUI silent.  (A ComfyUI at a URL can vanish
        unseen within ``fresh_s``: its job then finds it gone before submitting anything,
        ComfyUINotReached, and the lifecycle asks again with ``recheck``.)  While ComfyUI is
        down or restarting it waits (woken by the monitor, re-probing at most every
        ``probe_every_s``) up to ``timeout``, then raises ComfyUIUnavailable.  An
        ``unresponsive`` ComfyUI does not make it wait: the runner's own deadlines handle it.
        ``on_wait`` is called once, when it begins to wait; ``cancel`` set ends the wait with
        JobCancelled within ``probe_every_s`` (a job cancelled while ComfyUI is down).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = answered_at if answered_at is not None else float("-inf")
            if self.process is not None:  # its exit is known at once; a URL's is not
                seen = max(seen, self._last_ok)
            if (
                not recheck
                and self._state == COMFY_OK
                and not self._process_dead()
                and time.monotonic() - seen < self.fresh_s
            ):
                return False
        waited = False
        while True:
            state = self._probe_now()
            if state == COMFY_FAILED:
                raise ComfyUIUnavailable(
                    f"ComfyUI exited and could not be restarted ({self.restart.max_attempts}"
                    " attempts); restart `ryla serve`",
                    log_tail=self.process.log_tail() if self.process is not None else "",
                )
            if state in (COMFY_OK, COMFY_UNRESPONSIVE):
                return waited
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.is_set():
                raise ComfyUIUnavailable(
                    f"ComfyUI at {self.base_url} did not come back within {timeout:g} s"
                    f" (it is {state})",
                    log_tail=self.process.log_tail() if self.process is not None else "",
                )
            if cancel is not None and cancel.is_set():
                raise JobCancelled(f"cancelled while it waited for ComfyUI (it is {state})")
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            with self._cond:
                self._waiters += 1
                try:
                    self._cond.wait(min(left, self.probe_every_s))
                finally:
                    self._waiters -= 1

    # --- the monitor thread ---------------------------------------------------------------

    def _process_dead(self) -> bool:
        return self.process is not None and self.process.returncode is not None

    def _set(self, state: str) -> None:
        with self._cond:
            before, self._state = self._state, state
            if state == COMFY_OK:
                self._last_ok = time.monotonic()
            self._cond.notify_all()
        if before != state:
            level = logging.INFO if state == COMFY_OK else logging.WARNING
            log.log(level, "ComfyUI at %s is %s (was %s)", self.base_url, state, before)

    def _probe_now(self) -> str:
        """One readiness probe, shared: callers that arrive while one is in flight take its answer.

        A burst of N jobs then costs ComfyUI (and this process) one probe, not N.  The answer
        comes after they arrived, which is as fresh as a probe of their own.
        """
        with self._cond:
            if self._probing:
                generation = self._probe_generation
                give_up = time.monotonic() + self.probe_timeout_s + 1.0
                while self._probing and self._probe_generation == generation:
                    left = give_up - time.monotonic()
                    if left <= 0:
                        break  # that probe is stuck past its own timeout: probe ourselves
                    self._cond.wait(left)
                else:
                    return self._state_locked()
            self._probing = True
        try:
            return self._probe_once()
        finally:
            with self._cond:
                self._probing = False
                self._probe_generation += 1
                self._cond.notify_all()

    def _probe_once(self) -> str:
        """One readiness probe (unless the process is known dead); updates and returns state."""
        with self._cond:
            if self._state in (COMFY_RESTARTING, COMFY_FAILED):
                return self._state
        if self._process_dead():
            return COMFY_DOWN  # the monitor thread restarts it
        try:
            check_ready(self.base_url, timeout=self.probe_timeout_s, client=self._client)
        except ComfyUIUnavailable as exc:
            cause = exc.__cause__
            refused = isinstance(cause, httpx.TransportError) and not isinstance(
                cause, httpx.TimeoutException
            )
            with self._cond:
                if self._state in (COMFY_RESTARTING, COMFY_FAILED):
                    return self._state
                self._silent = 0 if refused else self._silent + 1
                silent = self._silent
            if refused:
                self._set(COMFY_DOWN)
            elif silent >= _SILENT_PROBES:  # one slow answer on a busy machine is not silence
                self._set(COMFY_UNRESPONSIVE)
        else:
            with self._cond:
                if self._state in (COMFY_RESTARTING, COMFY_FAILED):
                    return self._state
                self._silent = 0
            self._set(COMFY_OK)
        return self.state

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._process_dead():
                with self._cond:
                    gave_up = self._state == COMFY_FAILED
                if not gave_up:
                    self._restart_streak()
            else:
                self._probe_now()
            with self._cond:
                pause = self.probe_every_s / 4 if self._waiters else self.probe_every_s
            self._stop.wait(pause)

    def _restart_streak(self) -> None:
        proc = self.process
        assert proc is not None
        if time.monotonic() - self._up_since >= self.restart.stable_after_s:
            self._streak = 0
        why = _describe_exit(proc.returncode) if proc.returncode is not None else "gone"
        while not self._stop.is_set():
            if self._streak >= self.restart.max_attempts:
                self._set(COMFY_FAILED)
                log.error(
                    "ComfyUI could not be restarted (%d attempts in a row); jobs fail until"
                    " `ryla serve` is restarted (log: %s)",
                    self._streak,
                    proc.log_path,
                )
                return
            pause = self.restart.backoff(self._streak)
            self._streak += 1
            self._set(COMFY_RESTARTING)
            log.warning(
                "ComfyUI exited (%s); restarting it in %.1f s (attempt %d of %d)",
                why,
                pause,
                self._streak,
                self.restart.max_attempts,
            )
            if self._stop.wait(pause):
                return
            try:
                proc.start(ready_timeout=self.ready_timeout_s)
            except ComfyUIUnavailable as exc:
                why = str(exc).splitlines()[0]
                continue
            self.restarts += 1
            self._up_since = time.monotonic()
            log.info("ComfyUI restarted (pid %s); %d restarts so far", proc.pid, self.restarts)
            self._set(COMFY_OK)
            return
