"""The ComfyUI app for ``modal deploy modal_apps/comfyui_app.py``: the packaged app, re-exported.

The declarations live in ``ryla_modal.cloud.app`` (shipped in the wheel, deployed by a plain
``ryla deploy``).  This file is the same app, not a copy: Modal records each function's module,
so containers import ``ryla_modal.cloud.app`` either way.  To change the app itself (image steps,
extra functions), write your own file with ``ryla init --app`` and ``ryla deploy THAT_FILE``.
"""

from __future__ import annotations

from ryla_modal.cloud.app import (
    ComfyWorker,
    app,
    check_workflows,
    container_env,
    download_models,
    gateway,
    image,
    models,
    outputs,
    secrets,
    settings,
)

__all__ = [
    "ComfyWorker",
    "app",
    "check_workflows",
    "container_env",
    "download_models",
    "gateway",
    "image",
    "models",
    "outputs",
    "secrets",
    "settings",
]
