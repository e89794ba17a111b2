"""One top-level error handler: a known error becomes one actionable line and an exit code.

``RYLA_DEBUG=1`` shows the traceback too.  Usage errors come from typer (which carries its own
click since 0.26): every one of them is a `typer.TyperException` with an ``exit_code``.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import TYPE_CHECKING

import typer

from ryla_modal.errors import (
    EXIT_INTERRUPTED,
    EXIT_OTHER,
    EXIT_USAGE,
    RylaError,
    WorkflowValidationError,
)

if TYPE_CHECKING:  # pragma: no cover
    from typer._click.core import Command as ClickCommand


_LISTED = "fix the nodes listed above"


def error_line(exc: RylaError) -> str:
    """One line that says what went wrong and what to do next; details (a log tail) follow.

    A rejected workflow's node errors come first, one line each, so the hint's "listed above"
    is true, and they are not repeated inside the error line; without node errors the hint
    does not mention them.
    """
    first, _, rest = exc.message.partition("\n")
    hint = exc.hint
    lines: list[str] = []
    if isinstance(exc, WorkflowValidationError):
        first, rest, lines = _without_repeats(first, rest, node_error_lines(exc))
        if hint and _LISTED in hint and not any(line.startswith("node ") for line in lines):
            hint = hint.replace(_LISTED + "; ", "").replace(_LISTED, "").strip() or None
    text = "\n".join([*lines, f"error: {first}"])
    if hint:
        text += f" — hint: {hint}"
    if rest.strip():
        text += "\n" + rest
    return text


def _without_repeats(first: str, rest: str, lines: list[str]) -> tuple[str, str, list[str]]:
    """Say each node error once: servers fold them into the message ("...; node 3 (X): ...")
    and list them again in ``node_errors``."""
    shown = {line.strip() for line in lines}

    def repeat(piece: str) -> bool:
        piece = piece.strip()
        return piece in shown or piece.startswith("node prompt (")

    first = "; ".join(piece for piece in first.split("; ") if not repeat(piece)).rstrip(":")
    rest = "\n".join(line for line in rest.splitlines() if not repeat(line))
    # an error about the whole workflow that the line itself already says
    lines = [
        line
        for line in lines
        if not (line.startswith("workflow: ") and line.removeprefix("workflow: ") in first)
    ]
    return first, rest, lines


def node_error_lines(exc: WorkflowValidationError) -> list[str]:
    """One line per node error; an error about the whole workflow (ComfyUI files those under
    "prompt", with no class) says "workflow:" rather than "node prompt ():"."""
    lines: list[str] = []
    for node_id, entry in sorted(exc.node_errors.items(), key=lambda kv: str(kv[0])):
        if not isinstance(entry, dict):
            continue
        class_type = entry.get("class_type")
        if node_id == "prompt" or not class_type:
            where = "workflow" if node_id == "prompt" else f"node {node_id}"
        else:
            where = f"node {node_id} ({class_type})"
        for err in entry.get("errors") or []:
            message = str(err.get("message", "")) if isinstance(err, dict) else str(err)
            details = str(err.get("details", "") or "") if isinstance(err, dict) else ""
            line = f"{where}: {message}"
            if details and details not in message:
                line += f": {details}"
            lines.append(line)
    return lines


def run_app(app: ClickCommand, argv: list[str]) -> int:
    """Run the click command typer built, with our error mapping; return the exit code."""
    from ryla_modal.cli._typer import Interrupted

    debug = os.environ.get("RYLA_DEBUG", "") not in ("", "0")
    try:
        result = app.main(args=argv, prog_name="ryla", standalone_mode=False)
    except RylaError as exc:
        if debug:
            traceback.print_exc()
        print(error_line(exc), file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, Interrupted, typer.Abort):  # Abort: Ctrl-C at a prompt
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except typer.TyperException as exc:  # usage errors, bad parameters (typer's click)
        show = getattr(exc, "show", None)
        if callable(show):
            show(file=sys.stderr)
        else:  # pragma: no cover - every typer exception we meet is a click one
            print(f"error: {exc.format_message()}", file=sys.stderr)
        return EXIT_USAGE if exc.exit_code == 2 else exc.exit_code
    except Exception as exc:
        if debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        print("hint: run again with RYLA_DEBUG=1 for the traceback", file=sys.stderr)
        return EXIT_OTHER
    if isinstance(result, int):  # a command's return value, or typer's Exit code
        return result
    return 0
