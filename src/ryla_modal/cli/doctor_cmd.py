"""`ryla doctor`: check the set-up from modal to the endpoint, one line per check with its fix."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from ryla_modal.cli import _options as opt
from ryla_modal.cli._output import examples, print_json

app = typer.Typer(add_completion=False)


@app.command(
    "doctor",
    help=(
        "Check the set-up, one line per check with its fix: modal installed (version), a Modal"
        " token, ryla.toml's settings, the Secrets and Volumes they name, the app deployed"
        " (version), the endpoint answering /health, the proxy-auth credentials accepted, logs"
        " coming back, and with WORKFLOW that the deployment has its nodes and models. Each"
        " check has its own deadline; the whole run ends within 30 s. Exit 0 only when every"
        " check passes, else 1."
    ),
    epilog=examples(
        "ryla doctor",
        "ryla doctor workflow.json",
        "ryla doctor --json",
    ),
)
def doctor(
    workflow: Annotated[
        Path | None,
        typer.Argument(help="An API-format workflow the deployment must be able to run."),
    ] = None,
    environment: opt.Environment = None,
    as_json: opt.Json = False,
) -> None:
    from ryla_modal.cloud.doctor import DoctorInputs, run_checks

    checks = run_checks(
        DoctorInputs(
            environ=dict(os.environ),
            cwd=Path.cwd(),
            workflow_path=workflow,
            environment=environment,
        )
    )
    ok = all(check.ok for check in checks)
    if as_json:
        print_json({"ok": ok, "checks": [check.to_json() for check in checks]})
    else:
        for check in checks:
            mark = "ok  " if check.ok else "FAIL"
            line = f"{mark} {check.name}: {check.detail}"
            if not check.ok and check.fix:
                line += f"\n     fix: {check.fix}"
            print(line)
        failed = [c.name for c in checks if not c.ok]
        summary = "all checks passed" if ok else f"{len(failed)} failed: {', '.join(failed)}"
        print(summary, file=sys.stderr)
    raise typer.Exit(0 if ok else 1)
