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
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from ryla_modal import defaults
from ryla_modal.errors import ComfyUIUnavailable, ConfigError

_TAIL_BLOCK = 8192
_TAIL_MAX_BYTES = 256 * 1024


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
    agree on what ready means.  ``client`` reuses a connection pool across repeated probes.
    """
    url = f"{base_url.rstrip('/')}/system_stats"
    try:
        if client is None:
            with httpx.Client(trust_env=False) as own:
                resp = own.get(url, timeout=httpx.Timeout(timeout))
        else:
            resp = client.get(url, timeout=httpx.Timeout(timeout))
    except httpx.HTTPError as exc:
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
        with httpx.Client(trust_env=False) as client:
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
