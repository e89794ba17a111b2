"""`ryla jobs status|wait|cancel`, `ryla health`, `ryla validate`: the job API's other verbs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ryla_modal.cli._output import examples, note, print_json
from ryla_modal.errors import EXIT_INTERRUPTED

if TYPE_CHECKING:  # pragma: no cover
    from ryla_modal.client import RylaClient
    from ryla_modal.job import Job

_ENDPOINT_HELP = "Gateway URL (default: RYLA_ENDPOINT, ryla.toml, last deploy)."

_endpoint_option = click.option("--endpoint", metavar="URL", help=_ENDPOINT_HELP)


@click.group("jobs", no_args_is_help=True)
def jobs_app() -> None:
    """Look at, wait for, or cancel a job by its id."""


def _client(endpoint: str | None) -> RylaClient:
    from ryla_modal.client import RylaClient

    return RylaClient(endpoint)


def _job_line(job: Job) -> str:
    from ryla_modal.cli._render import describe

    return f"{job.job_id}  {job.status}  {describe(job)}"


@jobs_app.command(
    "status", epilog=examples("ryla jobs status 3f2c...", "ryla jobs status 3f2c... --json")
)
@click.argument("job_id", metavar="JOB_ID")
@_endpoint_option
@click.option("--json", "as_json", is_flag=True, help="The job as JSON on stdout.")
def status_cmd(job_id: str, endpoint: str | None, as_json: bool) -> int:
    """Print a job's status, phase and progress."""
    with _client(endpoint) as client:
        job = client.status(job_id)
    if as_json:
        print_json(job.to_dict())
    else:
        print(_job_line(job))
        if job.error is not None:
            print(f"error: {job.error.type}: {job.error.message}")
    return 0


@jobs_app.command(
    "wait", epilog=examples("ryla jobs wait 3f2c... --out renders", "ryla jobs wait 3f2c... --json")
)
@click.argument("job_id", metavar="JOB_ID")
@_endpoint_option
@click.option(
    "--out",
    "-o",
    metavar="DIR",
    type=click.Path(path_type=Path),
    default=Path("outputs"),
    help="Folder for outputs.",
)
@click.option(
    "--timeout", metavar="S", type=click.FloatRange(min=1), help="Execution budget in seconds."
)
@click.option(
    "--cold-start-timeout",
    metavar="S",
    type=click.FloatRange(min=1),
    help="Cold-start budget in seconds.",
)
@click.option("--download/--no-download", default=True, help="Save the outputs.")
@click.option("--json", "as_json", is_flag=True, help="NDJSON events and the job on stdout.")
def wait_cmd(
    job_id: str,
    endpoint: str | None,
    out: Path,
    timeout: float | None,
    cold_start_timeout: float | None,
    download: bool,
    as_json: bool,
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
        print_json({"type": "result", "job": job.to_dict(), "files": [str(f.path) for f in files]})
    else:
        for f in files:
            print(f.path)
    return 0


@jobs_app.command("cancel", epilog=examples("ryla jobs cancel 3f2c..."))
@click.argument("job_id", metavar="JOB_ID")
@_endpoint_option
@click.option("--json", "as_json", is_flag=True, help="The job as JSON on stdout.")
def cancel_cmd(job_id: str, endpoint: str | None, as_json: bool) -> int:
    """Ask the server to stop a job (ComfyUI is interrupted if it is running)."""
    with _client(endpoint) as client:
        job = client.cancel(job_id)
    if as_json:
        print_json(job.to_dict())
    else:
        print(_job_line(job))
    return 0


@click.command(
    "health",
    help="Check that the deployment answers; --wake starts a GPU container and shows the"
    " cold start.",
    epilog=examples("ryla health", "ryla health --wake --json"),
)
@_endpoint_option
@click.option("--wake", is_flag=True, help="Start a GPU container now (a cold start).")
@click.option(
    "--cold-start-timeout", metavar="S", type=click.FloatRange(min=1), help="Budget for --wake, s."
)
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
def health_cmd(
    endpoint: str | None, wake: bool, cold_start_timeout: float | None, as_json: bool
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
            health["wake"] = {
                "job_id": job.job_id,
                "status": job.status,
                "timings": job.timings.to_dict(),
            }
    if as_json:
        print_json(health)
    else:
        print(f"{client.settings.endpoint}: {health.get('status')} ({health.get('executor')})")
        if "wake" in health:
            took = health["wake"]["timings"]["total"] or 0.0
            print(f"a GPU container is warm ({took:.1f}s)")
    return 0


@click.command(
    "validate",
    help="Check a workflow against the deployment's nodes and model files, without a GPU."
    "\n\nWORKFLOW is a workflow JSON file (API or UI format), or - for stdin.",
    epilog=examples("ryla validate examples/workflows/sd15_txt2img.json"),
)
@click.argument("workflow", metavar="WORKFLOW")
@_endpoint_option
@click.option(
    "--set",
    "overrides",
    metavar="NODE.INPUT=VALUE",
    multiple=True,
    help="Change one input, as for `ryla generate`. Repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="The server's report on stdout.")
def validate_cmd(
    workflow: str, endpoint: str | None, overrides: tuple[str, ...], as_json: bool
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
