"""The options more than one command takes, declared once so each flag means one thing everywhere.

Short flags: ``-t`` is always ``--timeout`` (the whole command's deadline), ``-o`` ``--out``,
``-n`` ``--count``, ``-e`` ``--env``, ``-f`` ``--follow``, ``-y`` ``--yes``.  Defaults that come
from settings (the endpoint, the phase budgets) are shown as ``[default: …]`` through
``show_default`` so every page renders them alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ryla_modal import defaults

WORKFLOW = "Workflow"
DEADLINES = "Deadlines"
OUTPUT = "Output"
CONNECTION = "Connection"

Endpoint = Annotated[
    str | None,
    typer.Option(
        "--endpoint",
        metavar="URL",
        help="Gateway URL.",
        show_default="RYLA_ENDPOINT, ryla.toml, the last `ryla deploy`",
        rich_help_panel=CONNECTION,
    ),
]

Json = Annotated[
    bool,
    typer.Option("--json", help="Machine-readable JSON on stdout.", rich_help_panel=OUTPUT),
]

Out = Annotated[
    Path,
    typer.Option("--out", "-o", metavar="DIR", help="Folder for outputs.", rich_help_panel=OUTPUT),
]

Overrides = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="NODE.INPUT=VALUE",
        help="Change one input; NODE is an id, a unique class_type or a title. Repeatable.",
        rich_help_panel=WORKFLOW,
    ),
]

AllowNewInputs = Annotated[
    bool,
    typer.Option(
        "--allow-new-inputs",
        help="Let --set add an input the node does not have yet (an optional one).",
        rich_help_panel=WORKFLOW,
    ),
]

ColdStartTimeout = Annotated[
    float | None,
    typer.Option(
        "--cold-start-timeout",
        metavar="S",
        min=1,
        help="Seconds for a GPU container to pick the job up and start ComfyUI.",
        show_default=f"{defaults.COLD_START_TIMEOUT_S:g}",
        rich_help_panel=DEADLINES,
    ),
]

ExecutionTimeout = Annotated[
    float | None,
    typer.Option(
        "--execution-timeout",
        metavar="S",
        min=1,
        help="Seconds for the job to run once it started.",
        show_default=f"{defaults.EXECUTION_TIMEOUT_S:g}",
        rich_help_panel=DEADLINES,
    ),
]

#: ``--timeout`` of the commands that talk to the job API: none by default (the phase budgets
#: and the per-request budget bound every wait on their own).
ApiTimeout = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        "-t",
        metavar="S",
        min=0.1,
        help="Deadline for the whole command, in seconds (none unless given).",
        show_default=False,
        rich_help_panel=DEADLINES,
    ),
]


def modal_timeout(default: float) -> object:
    """``--timeout`` of the commands that run the modal CLI: always a deadline, ``default`` s."""
    return typer.Option(
        "--timeout",
        "-t",
        metavar="S",
        min=0.1,
        help="Deadline for the whole command, in seconds.",
        show_default=f"{default:g}",
        rich_help_panel=DEADLINES,
    )


Environment = Annotated[
    str | None,
    typer.Option(
        "--env",
        "-e",
        metavar="ENV",
        help="Modal environment.",
        show_default="the modal profile's",
        rich_help_panel=CONNECTION,
    ),
]
