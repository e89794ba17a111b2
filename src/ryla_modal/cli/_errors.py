"""One top-level error handler: a known error becomes one actionable line and an exit code.

``RYLA_DEBUG=1`` shows the traceback too.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

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


def run_app(app: typer.Typer, argv: list[str]) -> int:
    """Run the typer app with our error mapping and return the exit code."""
    debug = os.environ.get("RYLA_DEBUG", "") not in ("", "0")
    try:
        result = app(args=argv, prog_name="ryla", standalone_mode=False)
    except RylaError as exc:
        if debug:
            traceback.print_exc()
        print(error_line(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except typer.Exit as exc:
        return int(exc.exit_code)
    except Exception as exc:  # click's usage errors and aborts
        code = _click_exit_code(exc)
        if code is None:
            if debug:
                raise
            print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
            print("hint: run again with RYLA_DEBUG=1 for the traceback", file=sys.stderr)
            return EXIT_OTHER
        return code
    if isinstance(result, int):
        return result
    return 0


def _click_exit_code(exc: Exception) -> int | None:
    """Map click's own exceptions (vendored inside typer) without importing click by name."""
    show = getattr(exc, "show", None)
    exit_code = getattr(exc, "exit_code", None)
    if callable(show) and isinstance(exit_code, int):  # UsageError, BadParameter, ClickException
        show(file=sys.stderr)
        return EXIT_USAGE if exit_code == 2 else exit_code
    if type(exc).__name__ == "Abort":
        print("aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return None
