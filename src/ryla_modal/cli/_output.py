"""Where the CLI writes: data to stdout (plain or JSON), people's things to stderr.

JSON goes through ``json.dumps`` + ``sys.stdout.write``, never rich, which would eat
``[bracketed]`` text as markup and wrap long lines when piped.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def note(text: str) -> None:
    """A message for people (progress, hints, warnings): stderr."""
    print(text, file=sys.stderr, flush=True)


def print_json(obj: Any) -> None:
    """One JSON document on one line of stdout (NDJSON when called repeatedly)."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def examples(*commands: str) -> str:
    """A help epilog of example command lines, kept one per line (click's ``\\b`` marker)."""
    return "Examples:\n\n\b\n" + "\n".join(f"  {c}" for c in commands) + "\n"
