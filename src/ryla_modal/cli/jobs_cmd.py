"""`ryla jobs status|wait|cancel`, `ryla health`, `ryla validate`: the job API's other verbs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ryla_modal.cli._output import note, print_json
from ryla_modal.errors import EXIT_INTERRUPTED

if TYPE_CHECKING:  # pragma: no cover
    from ryla_modal.client import RylaClient
    from ryla_modal.gateway.schemas import Job

_ENDPOINT_HELP = "Gateway URL (default: RYLA_ENDPOINT, ryla.toml, last deploy)."

jobs_app = typer.Typer(
    name="jobs",
    help="Look at, wait for, or cancel a job by its id.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")
    app.command(
        "health",
        help="Check that the deployment answers; --wake starts a GPU container and shows the"
        " cold start.",
        epilog="Examples:\n\n  ryla health\n\n  ryla health --wake --json",
    )(health_cmd)
    app.command(
        "validate",
        help="Check a workflow against the deployment's nodes and model files, without a GPU.",
        epilog="Examples:\n\n  ryla validate examples/workflows/sd15_txt2img.json",
    )(validate_cmd)


def _client(endpoint: str | None) -> RylaClient:
    from ryla_modal.client import RylaClient

    return RylaClient(endpoint)


def _job_line(job: Job) -> str:
    from ryla_modal.cli._render import describe

    return f"{job.job_id}  {job.status}  {describe(job)}"


@jobs_app.command(
    "status", epilog="Examples:\n\n  ryla jobs status 3f2c...\n\n  ryla jobs status 3f2c... --json"
)
def status_cmd(
    job_id: str = typer.Argument(..., metavar="JOB_ID"),
    endpoint: str | None = typer.Option(None, "--endpoint", help=_ENDPOINT_HELP),
    as_json: bool = typer.Option(False, "--json", help="The job as JSON on stdout."),
) -> int:
    """Print a job's status, phase and progress."""
    with _client(endpoint) as client:
        job = client.status(job_id)
    if as_json:
        print_json(job.model_dump())
    else:
        print(_job_line(job))
        if job.error is not None:
            print(f"error: {job.error.type}: {job.error.message}")
    return 0


@jobs_app.command(
    "wait",
    epilog="Examples:\n\n  ryla jobs wait 3f2c... --out renders\n\n  ryla jobs wait 3f2c... --json",
)
def wait_cmd(
    job_id: str = typer.Argument(..., metavar="JOB_ID"),
    endpoint: str | None = typer.Option(None, "--endpoint", help=_ENDPOINT_HELP),
    out: Path = typer.Option(Path("outputs"), "--out", "-o", help="Folder for outputs."),  # noqa: B008
    timeout: float | None = typer.Option(None, "--timeout", min=1, help="Execution budget, s."),
    cold_start_timeout: float | None = typer.Option(
        None, "--cold-start-timeout", min=1, help="Cold-start budget, s."
    ),
    download: bool = typer.Option(True, "--download/--no-download", help="Save the outputs."),
    as_json: bool = typer.Option(False, "--json", help="NDJSON events and the job on stdout."),
) -> int:
    """Wait for a job (again) and save its outputs: how `ryla generate` is resumed."""
    from ryla_modal.cli._render import make_renderer

    renderer = make_renderer(as_json=as_json)
    try:
        with _client(endpoint) as client:
            job = client.wait(
                job_id,
                on_event=lambda ev: renderer.event("job", ev),
                cold_start_timeout=cold_start_timeout,
                execution_timeout=timeout,
            )
            files = (
                client.download(job, out, on_event=lambda ev: renderer.event("job", ev))
                if download
                else []
            )
    except KeyboardInterrupt:
        renderer.close()
        note(f"stopped waiting; the job keeps running. Resume with: ryla jobs wait {job_id}")
        return EXIT_INTERRUPTED
    finally:
        renderer.close()
    if as_json:
        print_json(
            {"type": "result", "job": job.model_dump(), "files": [str(f.path) for f in files]}
        )
    else:
        for f in files:
            print(f.path)
    return 0


@jobs_app.command("cancel", epilog="Examples:\n\n  ryla jobs cancel 3f2c...")
def cancel_cmd(
    job_id: str = typer.Argument(..., metavar="JOB_ID"),
    endpoint: str | None = typer.Option(None, "--endpoint", help=_ENDPOINT_HELP),
    as_json: bool = typer.Option(False, "--json", help="The job as JSON on stdout."),
) -> int:
    """Ask the server to stop a job (ComfyUI is interrupted if it is running)."""
    with _client(endpoint) as client:
        job = client.cancel(job_id)
    if as_json:
        print_json(job.model_dump())
    else:
        print(_job_line(job))
    return 0


def health_cmd(
    endpoint: str | None = typer.Option(None, "--endpoint", help=_ENDPOINT_HELP),
    wake: bool = typer.Option(False, "--wake", help="Start a GPU container now (cold start)."),
    cold_start_timeout: float | None = typer.Option(
        None, "--cold-start-timeout", min=1, help="Budget for --wake, s."
    ),
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout."),
) -> int:
    from ryla_modal.cli._render import make_renderer

    with _client(endpoint) as client:
        health: dict[str, Any] = client.health()
        if wake:
            renderer = make_renderer(as_json=as_json)
            try:
                job = client.wake(
                    on_event=lambda ev: renderer.event("wake", ev),
                    cold_start_timeout=cold_start_timeout,
                )
            finally:
                renderer.close()
            health["wake"] = {"job_id": job.job_id, "status": job.status, "timings": job.timings}
    if as_json:
        print_json(health)
    else:
        print(f"{client.settings.endpoint}: {health.get('status')} ({health.get('executor')})")
        if "wake" in health:
            took = sum(health["wake"]["timings"].values())
            print(f"a GPU container is warm ({took:.1f}s)")
    return 0


def validate_cmd(
    workflow: str = typer.Argument(..., metavar="WORKFLOW", help="Workflow JSON file, or -."),
    endpoint: str | None = typer.Option(None, "--endpoint", help=_ENDPOINT_HELP),
    overrides: list[str] = typer.Option(  # noqa: B008
        [], "--set", help="NODE.INPUT=VALUE, as for `ryla generate`."
    ),
    as_json: bool = typer.Option(False, "--json", help="The server's report on stdout."),
) -> int:
    from ryla_modal.cli.generate_cmd import load_for_endpoint
    from ryla_modal.errors import WorkflowValidationError

    wf = load_for_endpoint(workflow, endpoint)
    if overrides:
        wf = wf.with_overrides(overrides)
    with _client(endpoint) as client:
        report = client.validate(wf)
    if as_json:
        print_json(report)
    if report.get("ok"):
        if not as_json:
            print(f"{workflow}: valid ({len(wf)} nodes)")
        return 0
    error = WorkflowValidationError(
        f"{workflow}: {report.get('error', {}).get('message', 'invalid workflow')}",
        error=report.get("error"),
        node_errors=report.get("node_errors") or {},
    )
    if not as_json:
        for line in error.summary_lines():
            note(line)
    raise error
