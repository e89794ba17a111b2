"""The ``ryla`` command line: thin typer glue over the library.

Each noun lives in its own module and registers its commands here.  Commands import heavy
dependencies (modal, fastapi, uvicorn, websockets) inside their bodies so ``ryla --help`` is fast.
"""

from __future__ import annotations

import sys

import typer

from ryla_modal import __version__
from ryla_modal.cli import generate_cmd, jobs_cmd, modal_cmds, serve_cmd
from ryla_modal.cli._errors import run_app

app = typer.Typer(
    name="ryla",
    help=(
        "Run ComfyUI workflows on Modal GPUs: deploy the worker, generate images and videos,"
        " and read logs with hard deadlines.\n\n"
        "Examples:\n\n"
        "  ryla deploy\n\n"
        "  ryla generate examples/workflows/demo_model_free.json --out outputs\n\n"
        "  ryla logs ryla-comfyui --timeout 30"
    ),
    no_args_is_help=True,
    # Plain click help: rendering it through rich costs ~0.14 s of a 0.21 s `ryla --help`
    # (bench/startup.py), and plain text pipes cleanly.
    rich_markup_mode=None,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        print(f"ryla {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        "-V",
        help="Print the version and exit.",
        callback=_version_callback,
        is_eager=True,
    ),
) -> None:
    """Run ComfyUI workflows on Modal GPUs."""


generate_cmd.register(app)
jobs_cmd.register(app)
modal_cmds.register(app)
serve_cmd.register(app)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    return run_app(app, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
