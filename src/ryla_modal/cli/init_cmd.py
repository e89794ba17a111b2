"""`ryla init`: write a commented ryla.toml (and, with --app, an app file) in this folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ryla_modal.cli._output import examples, note

APP_FILE_NAME = "comfyui_app.py"

app = typer.Typer(add_completion=False)


@app.command(
    "init",
    help=(
        "Write a commented ryla.toml here: deploy settings (its deploy table: GPU, ComfyUI commit,"
        " custom nodes, models, secrets, keep-warm) and client settings. --app also writes"
        f" {APP_FILE_NAME}, a copy of the packaged Modal app to customize"
        f" (deploy it with `ryla deploy {APP_FILE_NAME}`). Existing files are kept unless"
        " --force."
    ),
    epilog=examples(
        "ryla init",
        "ryla init --app",
        "ryla init --force",
    ),
)
def init(
    with_app: Annotated[
        bool,
        typer.Option(
            "--app",
            help=f"Also write {APP_FILE_NAME} to customize.",
            rich_help_panel="What to write",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Overwrite files that exist.", rich_help_panel="What to write"
        ),
    ] = False,
    directory: Annotated[
        Path,
        typer.Option(
            "--dir",
            help="Write into this folder instead of the current one.",
            rich_help_panel="What to write",
        ),
    ] = Path("."),
) -> None:
    from ryla_modal.cloud.templates import app_file_text, ryla_toml_text
    from ryla_modal.errors import ConfigError

    files = {directory / "ryla.toml": ryla_toml_text()}
    if with_app:
        files[directory / APP_FILE_NAME] = app_file_text()
    existing = [str(path) for path in files if path.exists()]
    if existing and not force:
        # Check every file before writing any: nothing is half-done.
        raise ConfigError(
            f"{', '.join(existing)} already exists: nothing written",
            hint="pass --force to overwrite",
        )
    directory.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        print(path)
    note("next: edit [deploy] in ryla.toml, then `ryla deploy` and `ryla doctor`")
