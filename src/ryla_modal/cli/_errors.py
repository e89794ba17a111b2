"""One top-level error handler: a known error becomes one actionable line and an exit code.

``RYLA_DEBUG=1`` shows the traceback too.
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from ryla_modal.errors import EXIT_INTERRUPTED, EXIT_OTHER, EXIT_USAGE, RylaError


def error_line(exc: RylaError) -> str:
    """One line that says what went wrong and what to do next; details (a log tail) follow."""
    first, _, rest = exc.message.partition("\n")
    text = f"error: {first}"
    if exc.hint:
        text += f" — hint: {exc.hint}"
    if rest:
        text += "\n" + rest
    return text


def run_app(app: click.Command, argv: list[str]) -> int:
    """Run the click app with our error mapping and return the exit code."""
    debug = os.environ.get("RYLA_DEBUG", "") not in ("", "0")
    try:
        result = app.main(args=argv, prog_name="ryla", standalone_mode=False)
    except RylaError as exc:
        if debug:
            traceback.print_exc()
        print(error_line(exc), file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, click.Abort):  # click turns a Ctrl-C at a prompt into Abort
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except click.ClickException as exc:  # usage errors, bad parameters
        exc.show(file=sys.stderr)
        return EXIT_USAGE if exc.exit_code == 2 else exc.exit_code
    except Exception as exc:
        if debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        print("hint: run again with RYLA_DEBUG=1 for the traceback", file=sys.stderr)
        return EXIT_OTHER
    if isinstance(result, int):  # a command's return value, or click's Exit code
        return result
    return 0
