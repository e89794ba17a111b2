"""The ``ryla`` command line: thin typer glue over the library.

Each noun lives in its own module, named in ``COMMANDS`` and imported only when that command
runs; ``ryla --help`` lists them from the registry without importing any.  Commands import heavy
dependencies (modal, fastapi, uvicorn, httpx) inside their bodies, and `_typer.to_click` keeps
typer's per-parameter pydantic adapters off the path.  A one-job `ryla generate` is mostly
interpreter and import time, so this is what keeps it fast (bench/overhead.py, bench/startup.py).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ryla_modal import __version__
from ryla_modal.cli._errors import run_app
from ryla_modal.cli._output import doc
from ryla_modal.cli._typer import (
    Entry,
    LazyGroup,
    import_rich_help,
    print_help_when_bare,
    to_click,
)

_SETUP, _WORKFLOW, _DEPLOYMENT, _LOCAL = "Set up", "Workflow", "Deployment", "Local"

#: command name -> where its typer app lives and its line in `ryla --help`, in help order
COMMANDS: dict[str, Entry] = {
    "init": Entry(
        "ryla_modal.cli.init_cmd:app",
        "Write a commented ryla.toml (and, with --app, an app file to customize).",
        _SETUP,
    ),
    "doctor": Entry(
        "ryla_modal.cli.doctor_cmd:app",
        "Check the set-up, one line per check with its fix.",
        _SETUP,
    ),
    "generate": Entry(
        "ryla_modal.cli.generate_cmd:app", "Run a workflow and save every output.", _WORKFLOW
    ),
    "validate": Entry(
        "ryla_modal.cli.jobs_cmd:validate_app",
        "Check a workflow against the deployment's nodes, without a GPU.",
        _WORKFLOW,
    ),
    "jobs": Entry(
        "ryla_modal.cli.jobs_cmd:jobs_app",
        "List, show, wait for or cancel jobs, and read one job's logs.",
        _WORKFLOW,
    ),
    "deploy": Entry(
        "ryla_modal.cli.modal_cmds:deploy_app",
        "Deploy the Modal app and record its endpoint.",
        _DEPLOYMENT,
    ),
    "health": Entry(
        "ryla_modal.cli.jobs_cmd:health_app",
        "Check that the deployment answers; --wake starts a GPU container.",
        _DEPLOYMENT,
    ),
    "logs": Entry(
        "ryla_modal.cli.modal_cmds:logs_app",
        "Print or follow an app's logs, always by the deadline.",
        _DEPLOYMENT,
    ),
    "models": Entry(
        "ryla_modal.cli.models_cmd:app",
        "Add model files to the deployment's models volume, or list them.",
        _DEPLOYMENT,
    ),
    "warm": Entry(
        "ryla_modal.cli.warm_cmd:app",
        "Keep GPU containers running so jobs skip the cold start, or stop.",
        _DEPLOYMENT,
    ),
    "apps": Entry("ryla_modal.cli.modal_cmds:apps_app", "List the Modal apps.", _DEPLOYMENT),
    "stop": Entry(
        "ryla_modal.cli.modal_cmds:stop_app", "Stop a deployed app and its containers.", _DEPLOYMENT
    ),
    "serve": Entry(
        "ryla_modal.cli.serve_cmd:app",
        "Serve the job API locally, in front of a local ComfyUI.",
        _LOCAL,
    ),
}

ROOT_HELP = """Run ComfyUI workflows on Modal GPUs: deploy the worker, generate images and videos,
and read logs with hard deadlines.

Every command takes -h/--help, and --json where it prints data.  -t/--timeout is always the
whole command's deadline."""

ROOT_EPILOG = """Examples:

  ryla init
  ryla deploy
  ryla generate examples/workflows/demo_model_free.json --out outputs
  ryla jobs list --status running
  ryla logs ryla-comfyui --timeout 30"""


def _version(value: bool) -> None:
    if value:
        print(f"ryla {__version__}")
        raise typer.Exit(0)


root = typer.Typer(
    name="ryla",
    cls=LazyGroup,
    help=doc(ROOT_HELP),
    epilog=ROOT_EPILOG,
    invoke_without_command=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@root.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", is_eager=True, callback=_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    print_help_when_bare(ctx)


def app() -> LazyGroup:
    """The root click group (built on each call: cheap, and tests get a fresh one)."""
    group = to_click(root)
    assert isinstance(group, LazyGroup)
    group.registry = COMMANDS
    return group


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if "-h" in args or "--help" in args:
        import_rich_help()
    return run_app(app(), args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
