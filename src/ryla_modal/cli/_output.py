"""Where the CLI writes, and the pieces every command shares: data to stdout (plain or JSON),
people's things to stderr, printed follow-up commands, and the whole-command deadline.

JSON goes through ``json.dumps`` + ``sys.stdout.write``, never rich, which would eat
``[bracketed]`` text as markup and wrap long lines when piped.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

#: `--out`'s default, left out of printed follow-up commands
DEFAULT_OUT = Path("outputs")


def note(text: str) -> None:
    """A message for people (progress, hints, warnings): stderr."""
    print(text, file=sys.stderr, flush=True)


def print_json(obj: Any) -> None:
    """One JSON document on one line of stdout (NDJSON when called repeatedly)."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def doc(text: str) -> str:
    """Help text with each paragraph on one line, for rich to wrap to the terminal; paragraphs
    with indented lines (lists, examples) keep their lines."""
    paragraphs = []
    for para in text.strip().split("\n\n"):
        lines = para.split("\n")
        keep = any(line.startswith(" ") for line in lines)
        paragraphs.append(para if keep else " ".join(line.strip() for line in lines))
    return "\n\n".join(paragraphs)


def examples(*commands: str) -> str:
    """A help epilog of example command lines, one per line (rich markup escaped)."""
    lines = "\n".join(f"  {c}".replace("[", "\\[") for c in commands)
    return f"Examples:\n\n{lines}"


def command_line(
    *words: str, endpoint: str | None = None, out: Path | None = None, extra: tuple[str, ...] = ()
) -> str:
    """A ``ryla`` command to print for the user to paste: it keeps the ``--endpoint`` (and a
    non-default ``--out``) this run was given, or it would fail with "no endpoint configured"."""
    argv = ["ryla", *words, *extra]
    if out is not None and out != DEFAULT_OUT:
        argv += ["--out", str(out)]
    if endpoint:
        argv += ["--endpoint", endpoint]
    return shlex.join(argv)


def _process_age() -> float:
    """Seconds since this process started (Linux /proc), or 0.0 when that cannot be told.

    Only a fresh process counts: if we were imported into a long-running one (a script calling
    ``main()``), its age says nothing about this command, so anything over a few seconds is
    ignored.
    """
    try:
        with open("/proc/self/stat", encoding="ascii", errors="replace") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0
    return age if 0.0 <= age < 5.0 else 0.0


# A deadline counts from when the user started `ryla`, not from when a command's body runs: the
# interpreter and our imports take a hundred milliseconds or more first.
STARTED = time.monotonic() - _process_age()


def budget(timeout: float) -> float:
    """What is left of ``--timeout`` after our own start-up (never less than a sliver)."""
    return max(0.1, timeout - (time.monotonic() - STARTED))


def deadline_kwargs(timeout: float | None) -> dict[str, Any]:
    """``timeout=`` (the client's whole-call deadline) with what is left of ``--timeout``;
    nothing when the command has no deadline, so the client's own budgets apply (and a client
    without whole-call deadlines still serves the commands that were given none)."""
    return {} if timeout is None else {"timeout": budget(timeout)}
