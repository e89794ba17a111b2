"""The launcher: ready when /system_stats answers, errors that carry the log, a clean stop.

Most tests launch the ComfyUI stand-in through ``ComfyProcess``; a few use tiny inline servers
to reach states the stand-in has no switch for (ignores SIGTERM, answers 503 while loading).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from ryla_modal import defaults
from ryla_modal.comfy.process import ComfyProcess, port_in_use, read_tail
from ryla_modal.errors import ComfyUIUnavailable, ConfigError
from tests.conftest import ComfyServer

# A server that answers 503 on /system_stats for LOAD_S seconds (like a half-started app),
# counts the probes, can ignore SIGTERM, and starts a child process in its group.
MINI_SERVER = textwrap.dedent(
    """
    import argparse, http.server, json, os, signal, subprocess, sys, time
    p = argparse.ArgumentParser()
    p.add_argument("--listen"); p.add_argument("--port", type=int)
    p.add_argument("--load-s", type=float, default=0.0)
    p.add_argument("--ignore-term", action="store_true")
    p.add_argument("--child-pidfile")
    a = p.parse_args()
    if a.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if a.child_pidfile:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open(a.child_pidfile, "w").write(str(child.pid))
    t0 = time.monotonic()
    probes = []
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/probes":
                body, code = json.dumps(probes).encode(), 200
            else:
                probes.append(time.monotonic())
                code = 200 if time.monotonic() - t0 >= a.load_s else 503
                body = b"{}"
            self.send_response(code)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    print("mini server listening", flush=True)
    http.server.ThreadingHTTPServer((a.listen, a.port), H).serve_forever()
    """
)


def mini(tmp_path: Path, *extra: str) -> ComfyProcess:
    return ComfyProcess(
        [sys.executable, "-c", MINI_SERVER], extra_args=extra, log_path=tmp_path / "mini.log"
    )


def test_start_returns_once_system_stats_answers(launch_stub: Callable[..., ComfyServer]) -> None:
    server = launch_stub("--startup-delay", "0.4")
    resp = httpx.get(f"{server.base_url}/system_stats", timeout=5)
    assert resp.status_code == 200
    assert server.process.returncode is None
    server.process.check_alive()


def test_stop_ends_the_process_and_is_idempotent(launch_stub: Callable[..., ComfyServer]) -> None:
    server = launch_stub()
    proc = server.process
    proc.stop(grace=2.0)
    assert proc.returncode is not None
    proc.stop()
    with pytest.raises(ComfyUIUnavailable, match="no longer running"):
        proc.check_alive()
    assert not port_in_use(proc.host, proc.port)


def test_never_ready_fails_at_the_deadline_with_the_log_tail(
    launch_stub: Callable[..., ComfyServer],
) -> None:
    server = launch_stub("--never-ready", start=False)
    started = time.monotonic()
    with pytest.raises(ComfyUIUnavailable) as info:
        server.process.start(ready_timeout=1.5)
    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 4.0
    assert "within 1.5 s" in str(info.value)
    assert info.value.log_tail.strip(), "the error must carry what ComfyUI printed"
    assert info.value.log_tail in str(info.value)
    assert server.process.returncode is not None, "a process that never got ready is stopped"


def test_port_in_use_is_reported_at_once(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = ComfyProcess(
            [sys.executable, "-c", MINI_SERVER], port=port, log_path=tmp_path / "m.log"
        )
        started = time.monotonic()
        with pytest.raises(ComfyUIUnavailable, match=f"port {port} .* already in use"):
            proc.start(ready_timeout=30)
        assert time.monotonic() - started < 1.0
        assert proc.pid is None, "nothing is launched on a taken port"


def test_port_taken_by_another_stand_in(launch_stub: Callable[..., ComfyServer]) -> None:
    first = launch_stub()
    second = launch_stub(start=False, port=first.process.port)
    started = time.monotonic()
    with pytest.raises(ComfyUIUnavailable, match=str(first.process.port)):
        second.process.start(ready_timeout=30)
    assert time.monotonic() - started < 1.0
    first.process.check_alive()


def test_early_exit_reports_exit_code_and_log(tmp_path: Path) -> None:
    script = "import sys; print('Traceback: cannot import torch', flush=True); sys.exit(3)"
    proc = ComfyProcess([sys.executable, "-c", script], log_path=tmp_path / "c.log")
    started = time.monotonic()
    with pytest.raises(ComfyUIUnavailable) as info:
        proc.start(ready_timeout=30)
    assert time.monotonic() - started < 5.0, "an early exit must not wait for the deadline"
    assert "exited before it was ready: exit code 3" in str(info.value)
    assert "cannot import torch" in info.value.log_tail


def test_a_process_that_dies_later_is_detected(launch_stub: Callable[..., ComfyServer]) -> None:
    server = launch_stub()
    assert server.process.pid is not None
    os.kill(server.process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while server.process.returncode is None and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(ComfyUIUnavailable, match="killed by SIGKILL"):
        server.process.check_alive()


def test_readiness_probes_are_spaced_not_a_tight_loop(tmp_path: Path) -> None:
    """A count, not a timing: over a 1 s load at most one probe per COMFY_READY_POLL_S (+2)
    reaches the server.  A slow machine makes fewer probes, never more; the spacing itself is
    measured by bench/launch.py."""
    load_s = 1.0
    proc = mini(tmp_path, "--load-s", str(load_s))
    try:
        proc.start(ready_timeout=10)
        probes = httpx.get(f"{proc.base_url}/probes", timeout=5).json()
    finally:
        proc.stop(grace=1.0)
    assert len(probes) >= 2  # it did wait through the 503s
    assert len(probes) <= load_s / defaults.COMFY_READY_POLL_S + 2, len(probes)


def test_stop_escalates_to_sigkill_and_takes_the_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    proc = mini(tmp_path, "--ignore-term", "--child-pidfile", str(pidfile))
    proc.start(ready_timeout=10)
    child = int(pidfile.read_text())
    started = time.monotonic()
    proc.stop(grace=0.5)
    assert time.monotonic() - started < 5.0
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child), "the child in ComfyUI's process group must be gone too"


def test_for_checkout_needs_main_py(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no main\.py"):
        ComfyProcess.for_checkout(tmp_path)
    (tmp_path / "main.py").write_text("print('hi')\n")
    proc = ComfyProcess.for_checkout(tmp_path, "python3", extra_args=["--cpu"], port=8555)
    assert proc.argv == ["python3", "main.py", "--listen", "127.0.0.1", "--port", "8555", "--cpu"]
    assert proc.cwd == tmp_path
    assert proc.base_url == "http://127.0.0.1:8555"


def test_read_tail_of_a_large_log(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_text("".join(f"line {i}\n" for i in range(200_000)))
    assert read_tail(log, 3) == "line 199997\nline 199998\nline 199999"
    assert read_tail(tmp_path / "missing.log", 3) == ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
