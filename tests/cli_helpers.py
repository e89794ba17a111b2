"""Running `ryla` as a user does, in a subprocess, for the CLI test files: a clean environment,
one runner, and a gateway in front of a private ComfyUI stand-in."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ComfyServer, stub_process
from tests.gateway_fixtures import Gateway, running_gateway

RYLA = [sys.executable, "-m", "ryla_modal.cli"]


def ryla_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No endpoint anywhere (an empty config folder, no RYLA_*/MODAL_* variables), one retry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RYLA_", "MODAL_"))}
    env.update({"RYLA_CONFIG_DIR": str(tmp_path / "cfg"), "RYLA_RETRIES": "1"})
    env.update(extra)
    return env


def ryla(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 60, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``ryla ARGS`` to its end (a hang fails the test at ``timeout``); no terminal on stdin."""
    return subprocess.run(
        [*RYLA, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )


@contextlib.contextmanager
def cli_gateway(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Gateway]:
    """A gateway on uvicorn in front of its own stand-in, for one test module."""
    stub: ComfyServer = stub_process(tmp_path_factory.mktemp(f"{name}-stub"))
    stub.process.start(ready_timeout=20)
    try:
        with running_gateway(stub, tmp_path_factory.mktemp(f"{name}-gw"), workers=2) as gw:
            yield gw
    finally:
        stub.stop()
