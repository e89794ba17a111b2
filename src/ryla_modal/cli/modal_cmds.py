"""`ryla logs`, `ryla apps`, `ryla stop`, `ryla deploy`: the modal CLI under hard deadlines."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
