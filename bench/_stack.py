"""The stack the ryla benches measure: a ComfyUI and `ryla serve --comfyui-url` in front of it.

One place for both bench/overhead.py and bench/load.py, so they time the same server started
the same way.  ComfyUI is the stand-in (launched by our own launcher) unless
RYLA_BENCH_COMFYUI_URL names a real one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.fakes.comfyui_command import fake_comfyui_command

from ryla_modal.client import RylaClient
from ryla_modal.comfy.process import ComfyProcess, free_port

_SERVE_READY_TRIES = 200  # x 0.1 s


@dataclass(frozen=True)
class Stack:
    comfy_url: str
    ryla_url: str
    token: str
    env: dict[str, str]  # what a `ryla` subprocess needs to reach this serve
    serve_pid: int
    real_comfyui: bool


@contextlib.contextmanager
def served_comfyui(
    work: Path, *, node_seconds: float = 0.0, workers: int | None = None
) -> Iterator[Stack]:
    """ComfyUI and `ryla serve` answering; both stopped after.  Logs go to ``work``.

    ``node_seconds``: the stand-in's time in every node.  ``workers``: serve's job threads.
    """
    comfy: ComfyProcess | None = None
    comfy_url = os.environ.get("RYLA_BENCH_COMFYUI_URL")
    if not comfy_url:
        comfy = ComfyProcess(
            fake_comfyui_command("--node-seconds", str(node_seconds)),
            extra_args=["--output-directory", str(work / "comfy-out")],
            log_path=work / "comfyui.log",
        )
        comfy.start(ready_timeout=60)
        comfy_url = comfy.base_url
    token = secrets.token_hex(16)
    env = {**os.environ, "RYLA_TOKEN": token, "RYLA_CONFIG_DIR": str(work / "cfg")}
    port = free_port()
    argv = [sys.executable, "-m", "ryla_modal.cli", "serve", "--comfyui-url", comfy_url]
    argv += ["--port", str(port), "--data-dir", str(work / "serve")]
    if workers is not None:
        argv += ["--workers", str(workers)]
    url = f"http://127.0.0.1:{port}"
    try:
        with (work / "serve.log").open("wb") as serve_log:
            serve = subprocess.Popen(argv, env=env, stderr=serve_log, start_new_session=True)
        try:
            _wait_for(url, token)
            yield Stack(comfy_url, url, token, env, serve.pid, real_comfyui=comfy is None)
        finally:
            serve.terminate()
            try:
                serve.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait(timeout=10)
    finally:
        if comfy is not None:
            comfy.stop()


def _wait_for(url: str, token: str) -> None:
    with RylaClient(url, token=token) as client:
        for _ in range(_SERVE_READY_TRIES):
            try:
                client.health()
                return
            except Exception:
                time.sleep(0.1)
    raise RuntimeError(f"ryla serve did not answer at {url}; see serve.log")
