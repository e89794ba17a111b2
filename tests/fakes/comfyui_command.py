"""How to launch the ComfyUI stand-in through our launcher (``ComfyProcess``)."""

from __future__ import annotations

import sys
from pathlib import Path

FAKE_COMFYUI = Path(__file__).resolve().parent / "fake_comfyui.py"


def fake_comfyui_command(*extra: str) -> list[str]:
    """``[python, .../fake_comfyui.py, *extra]``; the launcher appends ``--listen``/``--port``."""
    return [sys.executable, str(FAKE_COMFYUI), *extra]
