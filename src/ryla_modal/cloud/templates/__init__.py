"""The files `ryla init` writes: the commented ryla.toml and a customizable copy of the app."""

from __future__ import annotations

import string
from importlib import resources

from ryla_modal import defaults

_APP_HEADER = """# Written by `ryla init --app`: a copy of the packaged Modal app
# (ryla_modal.cloud.app) to customize. Deploy it with `ryla deploy comfyui_app.py`;
# a plain `ryla deploy` still deploys the packaged app. Settings still come from
# ryla.toml's [deploy] table and RYLA_* variables.
"""


def ryla_toml_text() -> str:
    """The commented ryla.toml, with today's defaults filled in (it parses as the defaults)."""
    raw = resources.files(__package__).joinpath("ryla.toml").read_text(encoding="utf-8")
    return string.Template(raw).substitute(
        app=defaults.DEFAULT_APP_NAME,
        gpu=defaults.MODAL_GPU,
        comfyui_commit=defaults.COMFYUI_COMMIT,
        scaledown_window=defaults.MODAL_SCALEDOWN_WINDOW_S,
    )


def app_file_text() -> str:
    """The packaged app's source, headed by a note on how to deploy the copy."""
    source = resources.files("ryla_modal.cloud").joinpath("app.py").read_text(encoding="utf-8")
    return _APP_HEADER + source


__all__ = ["app_file_text", "ryla_toml_text"]
