"""The ``ryla`` command line: thin click glue over the library.

Each noun lives in its own module, named in ``COMMANDS`` and imported only when that command
runs (or ``--help`` lists them all); commands import heavy dependencies (modal, fastapi, uvicorn,
httpx) inside their bodies.  A one-job `ryla generate` is mostly interpreter and import time, so
this is what keeps it fast (bench/overhead.py).  Plain click, not typer: typer 0.29 builds a
pydantic TypeAdapter for every parameter on every run, ~0.2 s; click is installed anyway
(uvicorn needs it).
"""

from __future__ import annotations

import importlib
import sys

import click

from ryla_modal import __version__
from ryla_modal.cli._errors import run_app

#: command name -> "module:attribute" of its click command
COMMANDS: dict[str, str] = {
    "apps": "ryla_modal.cli.modal_cmds:apps_cmd",
    "deploy": "ryla_modal.cli.modal_cmds:deploy_cmd",
    "doctor": "ryla_modal.cli.doctor_cmd:app",
    "generate": "ryla_modal.cli.generate_cmd:generate_cmd",
    "health": "ryla_modal.cli.jobs_cmd:health_cmd",
    "init": "ryla_modal.cli.init_cmd:app",
    "jobs": "ryla_modal.cli.jobs_cmd:jobs_app",
    "logs": "ryla_modal.cli.modal_cmds:logs_cmd",
    "models": "ryla_modal.cli.models_cmd:app",
    "serve": "ryla_modal.cli.serve_cmd:serve_cmd",
    "stop": "ryla_modal.cli.modal_cmds:stop_cmd",
    "validate": "ryla_modal.cli.jobs_cmd:validate_cmd",
    "warm": "ryla_modal.cli.warm_cmd:app",
}

ROOT_HELP = """Run ComfyUI workflows on Modal GPUs: deploy the worker, generate images and videos,
and read logs with hard deadlines.

Examples:

\b
  ryla deploy
  ryla generate examples/workflows/demo_model_free.json --out outputs
  ryla logs ryla-comfyui --timeout 30

Every command takes -h/--help, and --json where it prints data.
"""


class _LazyGroup(click.Group):
    """A group that imports a command's module only when that command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module), attr)
        if not isinstance(command, click.Command):  # a typer app (init, doctor, models, warm)
            return _typer_bridge(cmd_name, command)
        return command


def _typer_bridge(name: str, typer_app: object) -> click.Command:
    """A click command that hands its arguments to a typer app.

    typer 0.29 carries its own copy of click, so its commands cannot sit in this click group
    directly; this bridge lasts until the whole CLI is on typer.
    """
    import typer
    import typer.main
    from typer._click import exceptions as typer_click  # typer's own click

    command = typer.main.get_command(typer_app)  # type: ignore[arg-type]

    @click.command(
        name,
        help=command.help,
        short_help=(command.help or "").split(". ")[0].split(":")[0],
        add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
    @click.pass_context
    def bridge(ctx: click.Context) -> int:
        try:
            result = command.main(
                args=list(ctx.args), prog_name=f"ryla {name}", standalone_mode=False
            )
        except typer.Exit as exc:
            return int(exc.exit_code)
        except typer.Abort:
            raise click.Abort() from None
        except typer_click.ClickException as exc:
            exc.show(file=sys.stderr)
            return int(exc.exit_code)
        return result if isinstance(result, int) else 0

    return bridge


@click.group(
    cls=_LazyGroup,
    name="ryla",
    help=ROOT_HELP,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.version_option(
    __version__,
    "--version",
    "-V",
    prog_name="ryla",
    message="%(prog)s %(version)s",
    help="Print the version and exit.",
)
def app() -> None:
    """Run ComfyUI workflows on Modal GPUs."""


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    return run_app(app, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
