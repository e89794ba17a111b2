"""ComfyUI's process never sees our secrets: custom nodes run there and can read its environment.

The stand-in is launched by the real launcher with ``RYLA_TOKEN`` & co. set in our own
environment; its environment is then read back from ``/proc/<pid>/environ``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ryla_modal.comfy.process import child_environ
from tests.conftest import ComfyServer

SECRETS = {
    "RYLA_TOKEN": "tok-5d41402abc4b2a76",
    "RYLA_MODAL_KEY": "wk-123",
    "RYLA_MODAL_SECRET": "ws-456",
    "RYLA_HF_TOKEN": "hf-789",
    "RYLA_SOME_API_KEY": "k-0",
    "ryla_token": "lower-case-too",
}
KEPT = {"RYLA_ENDPOINT": "http://127.0.0.1:1", "RYLA_APP": "ryla-comfyui", "HF_HOME": "/tmp/hf"}


def _environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(): v.decode(errors="replace") for k, v in pairs}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/environ")
def test_launched_comfyui_does_not_inherit_secrets(
    launch_stub: Callable[..., ComfyServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {**SECRETS, **KEPT}.items():
        monkeypatch.setenv(name, value)
    server = launch_stub()
    pid = server.process.pid
    assert pid is not None
    env = _environ_of(pid)
    leaked = sorted(name for name in SECRETS if name in env)
    assert leaked == [], f"secrets in ComfyUI's environment: {leaked}"
    assert not any(value in env.values() for value in SECRETS.values())
    for name, value in KEPT.items():
        assert env.get(name) == value, name
    assert env.get("PATH") == os.environ.get("PATH")


def test_child_environ_keeps_what_is_not_ours() -> None:
    env = child_environ({**SECRETS, **KEPT, "HF_TOKEN": "x", "PATH": "/bin"})
    # HF_TOKEN is the user's own for ComfyUI's model downloads, not a secret of ours.
    assert env == {**KEPT, "HF_TOKEN": "x", "PATH": "/bin"}
