"""`ryla jobs list|show|status|wait|cancel|logs`, `ryla health`, `ryla validate`: the job API's
other verbs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from ryla_modal import defaults
from ryla_modal.cli import _options as opt
from ryla_modal.cli._output import (
    DEFAULT_OUT,
    budget,
    command_line,
    deadline_kwargs,
    doc,
    examples,
    note,
    print_json,
)
from ryla_modal.cli._typer import print_help_when_bare
from ryla_modal.errors import EXIT_INTERRUPTED, EXIT_TIMEOUT, RylaTimeout

if TYPE_CHECKING:  # pragma: no cover
    from ryla_modal.client import RylaClient
    from ryla_modal.job import Job

JOBS_HELP = """Find, look at, wait for or cancel jobs, and read one job's logs.

A job's id is printed when it is submitted (`ryla generate --no-wait`); `ryla jobs list` finds it
again."""

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")

JobId = Annotated[str, typer.Argument(help="The job's id (printed by `ryla generate`).")]

jobs_app = typer.Typer(
    name="jobs",
    help=doc(JOBS_HELP),
    rich_markup_mode="rich",
    add_completion=False,
    invoke_without_command=True,
    epilog=examples("ryla jobs list", "ryla jobs show 3f2c...", "ryla jobs wait 3f2c..."),
)


@jobs_app.callback()
def _jobs(ctx: typer.Context) -> None:
    print_help_when_bare(ctx)


def _api(client: RylaClient) -> Any:
    """The client, for the methods that came with `GET /jobs` and `GET /jobs/{id}/logs`
    (``list_jobs``, ``job_logs``): typed loosely so this module does not depend on which
    branch brought them first."""
    return cast(Any, client)


def _client(endpoint: str | None) -> RylaClient:
    from ryla_modal.client import RylaClient

    return RylaClient(endpoint)


def _job_line(job: Job) -> str:
    from ryla_modal.cli._render import describe

    return f"{job.job_id}  {job.status}  {describe(job)}"


# --- list / show / status -------------------------------------------------------------------------


@jobs_app.command(
    "list",
    help=doc(
        """List jobs, newest first, as a table: id, status, phase, progress, age, outputs.

At most --limit jobs a page; when there are more, the command for the next page is printed.
--json prints {"jobs": [...], "next": ID|null}."""
    ),
    epilog=examples(
        "ryla jobs list",
        "ryla jobs list --status running",
        "ryla jobs list --limit 50 --json",
    ),
)
def list_cmd(
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            metavar="STATUS",
            help=f"Only jobs with this status: {', '.join(JOB_STATUSES)}.",
            rich_help_panel=opt.WORKFLOW,
        ),
    ] = None,
    limit: Annotated[
        int,
        typer.Option(
            "--limit", metavar="N", min=1, max=200, help="Jobs a page.", rich_help_panel=opt.OUTPUT
        ),
    ] = 20,
    before: Annotated[
        str | None,
        typer.Option(
            "--before",
            metavar="JOB_ID",
            help="Start after this job (the next page).",
            rich_help_panel=opt.OUTPUT,
        ),
    ] = None,
    timeout: opt.ApiTimeout = None,
    as_json: opt.Json = False,
    endpoint: opt.Endpoint = None,
) -> int:
    if status is not None and status not in JOB_STATUSES:
        raise typer.BadParameter(
            f"{status!r} is not one of {', '.join(JOB_STATUSES)}", param_hint="--status"
        )
    with _client(endpoint) as client:
        page = _api(client).list_jobs(status, limit, before, **deadline_kwargs(timeout))
    if as_json:
        print_json({"jobs": [job.to_dict() for job in page.jobs], "next": page.next})
        return 0
    if not page.jobs:
        note("no jobs" + (f" with status {status}" if status else ""))
        return 0
    now = time.time()
    rows: list[tuple[str, ...]] = [("ID", "STATUS", "PHASE", "PROGRESS", "AGE", "OUTPUTS")]
    rows += [
        (
            job.job_id,
            job.status,
            job.phase or "-",
            _progress(job),
            _age(now - job.created_at),
            str(len(job.outputs)),
        )
        for job in page.jobs
    ]
    _table(rows)
    if page.next:
        extra: tuple[str, ...] = ("--status", status) if status else ()
        if limit != 20:
            extra += ("--limit", str(limit))
        note(
            "more: "
            + command_line("jobs", "list", endpoint=endpoint, extra=(*extra, "--before", page.next))
        )
    return 0


@jobs_app.command(
    "show",
    help="Print one job: status, phase, progress, outputs, error and the time each phase took.",
    epilog=examples("ryla jobs show 3f2c...", "ryla jobs show 3f2c... --json"),
)
def show_cmd(
    job_id: JobId,
    timeout: opt.ApiTimeout = None,
    as_json: opt.Json = False,
    endpoint: opt.Endpoint = None,
) -> int:
    with _client(endpoint) as client:
        job = client.status(job_id, **deadline_kwargs(timeout))
    if as_json:
        print_json(job.to_dict())
        return 0
    from ryla_modal.cli._render import describe

    now = time.time()
    print(f"job       {job.job_id}")
    print(f"status    {job.status} ({describe(job)})")
    print(f"phase     {job.phase or '-'}")
    print(f"created   {_age(now - job.created_at)} ago")
    print(f"updated   {_age(now - job.updated_at)} ago")
    if job.outputs:
        print(f"outputs   {len(job.outputs)}")
        for out in job.outputs:
            print(f"  {out.index}  {out.filename}  {out.mime}  {out.size} bytes")
    if job.error is not None:
        print(f"error     {job.error.type}: {job.error.message}")
    phases = job.timings.labelled()  # the summary's labels: "ComfyUI start (cold)", ...
    if phases or job.timings.total is not None:
        print("timings")
        width = max([len(label) for label, _ in phases] + [5]) + 2
        for label, seconds in phases:
            print(f"  {label:<{width}}{seconds:9.3f} s")
        if job.timings.total is not None:
            print(f"  {'total':<{width}}{job.timings.total:9.3f} s")
    return 0


@jobs_app.command(
    "status",
    help="Print a job's status, phase and progress on one line.",
    epilog=examples("ryla jobs status 3f2c...", "ryla jobs status 3f2c... --json"),
)
def status_cmd(
    job_id: JobId,
    timeout: opt.ApiTimeout = None,
    as_json: opt.Json = False,
    endpoint: opt.Endpoint = None,
) -> int:
    with _client(endpoint) as client:
        job = client.status(job_id, **deadline_kwargs(timeout))
    if as_json:
        print_json(job.to_dict())
    else:
        print(_job_line(job))
        if job.error is not None:
            print(f"error: {job.error.type}: {job.error.message}")
    return 0


# --- wait / cancel --------------------------------------------------------------------------------


@jobs_app.command(
    "wait",
    help="Wait for a job (again) and save its outputs: how `ryla generate` is resumed.",
    epilog=examples("ryla jobs wait 3f2c... --out renders", "ryla jobs wait 3f2c... --json"),
)
def wait_cmd(
    job_id: JobId,
    timeout: opt.ApiTimeout = None,
    cold_start_timeout: opt.ColdStartTimeout = None,
    execution_timeout: opt.ExecutionTimeout = None,
    out: opt.Out = DEFAULT_OUT,
    download: Annotated[
        bool,
        typer.Option(
            "--download/--no-download", help="Save the outputs.", rich_help_panel=opt.OUTPUT
        ),
    ] = True,
    as_json: opt.Json = False,
    endpoint: opt.Endpoint = None,
) -> int:
    from ryla_modal.cli._render import make_renderer
    from ryla_modal.cli._signals import sigterm_as_interrupt

    renderer = make_renderer(as_json=as_json)
    try:
        with sigterm_as_interrupt(), _client(endpoint) as client:
            job = client.wait(
                job_id,
                on_event=lambda ev: renderer.event("job", ev),
                cold_start_timeout=cold_start_timeout,
                execution_timeout=execution_timeout,
                **deadline_kwargs(timeout),
            )
            files = (
                client.download(
                    job,
                    out,
                    on_event=lambda ev: renderer.event("job", ev),
                    **deadline_kwargs(timeout),
                )
                if download
                else []
            )
    except KeyboardInterrupt:
        renderer.close()
        note(
            "stopped waiting; the job keeps running. Resume with: "
            + command_line("jobs", "wait", job_id, endpoint=endpoint, out=out)
        )
        return EXIT_INTERRUPTED
    except RylaTimeout as exc:
        renderer.close()
        from ryla_modal.cli.generate_cmd import timed_out

        raise timed_out(exc, job_id, endpoint=endpoint, out=out) from exc
    finally:
        renderer.close()
    if as_json:
        print_json({"type": "result", "job": job.to_dict(), "files": [str(f.path) for f in files]})
    else:
        for f in files:
            print(f.path)
    return 0


@jobs_app.command(
    "cancel",
    help="Ask the server to stop a job (ComfyUI is interrupted if it is running).",
    epilog=examples("ryla jobs cancel 3f2c..."),
)
def cancel_cmd(
    job_id: JobId,
    timeout: opt.ApiTimeout = None,
    as_json: opt.Json = False,
    endpoint: opt.Endpoint = None,
) -> int:
    with _client(endpoint) as client:
        job = client.cancel(job_id, **deadline_kwargs(timeout))
    if as_json:
        print_json(job.to_dict())
    else:
        print(_job_line(job))
    return 0


# --- logs -----------------------------------------------------------------------------------------

JOB_LOGS_HELP = f"""Print the log lines of one job.

On Modal: the worker's lines for that job only (`modal app logs APP --function-call ID`), under
the same hard deadline and retries as `ryla logs`.  Under `ryla serve`: ComfyUI's lines for that
job's run.  --follow keeps printing new lines until --timeout (the normal end of a follow) or, under
`ryla serve`, until the job ends.  Without --follow, exit {EXIT_TIMEOUT} if the deadline passed
first.

--json prints {{"type": "line", "line": "..."}} per line, then {{"type": "end", "job_id",
"source", "lines", "timed_out"}}."""


@jobs_app.command(
    "logs",
    help=doc(JOB_LOGS_HELP),
    epilog=examples(
        "ryla jobs logs 3f2c...",
        "ryla jobs logs 3f2c... --follow --timeout 600",
        "ryla jobs logs 3f2c... --json",
    ),
)
def logs_cmd(
    job_id: JobId,
    timeout: Annotated[
        float, opt.modal_timeout(defaults.MODAL_LOGS_TIMEOUT_S)
    ] = defaults.MODAL_LOGS_TIMEOUT_S,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Keep printing new lines.", rich_help_panel=opt.OUTPUT),
    ] = False,
    as_json: opt.Json = False,
    endpoint: opt.Endpoint = None,
) -> int:
    from ryla_modal.cli.modal_cmds import emit_line

    with _client(endpoint) as client:
        found: dict[str, Any] = _api(client).job_logs(job_id, timeout=budget(timeout))
        call_id = found.get("call_id")
        if call_id:
            from ryla_modal.cli.modal_cmds import run_modal_logs

            return run_modal_logs(
                client.settings.app,
                timeout=timeout,
                follow=follow,
                function_call=str(call_id),
                as_json=as_json,
                end={"job_id": job_id, "source": found.get("source", "modal")},
            )
        lines = [str(line) for line in found.get("lines") or []]
        for line in lines:
            emit_line(line, as_json=as_json)
        timed_out = False
        if follow:
            timed_out = _follow_local(client, job_id, len(lines), timeout, as_json)
    if as_json:
        print_json(
            {
                "type": "end",
                "job_id": job_id,
                "source": found.get("source"),
                "lines": len(lines),
                "timed_out": timed_out,
            }
        )
    if timed_out:
        note(f"stopped following after {timeout:g}s (--timeout)")
    return 0


def _follow_local(
    client: RylaClient, job_id: str, printed: int, timeout: float, as_json: bool
) -> bool:
    """Print new lines until the job ends or the deadline passes; True when the deadline did."""
    from ryla_modal.cli.modal_cmds import emit_line

    deadline = time.monotonic() + budget(timeout)
    while True:  # bounded by the deadline
        job = client.status(job_id, wait=min(2.0, max(0.0, deadline - time.monotonic())))
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        found = _api(client).job_logs(job_id, timeout=left)
        lines = [str(line) for line in found.get("lines") or []]
        for line in lines[printed:]:
            emit_line(line, as_json=as_json)
        printed = max(printed, len(lines))
        if job.finished:
            return False
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


# --- health / validate ----------------------------------------------------------------------------

health_app = typer.Typer(rich_markup_mode="rich", add_completion=False)


@health_app.command(
    "health",
    help=doc(
        """Check that the deployment answers; --wake starts a GPU container and shows the
cold start."""
    ),
    epilog=examples("ryla health", "ryla health --wake --json"),
)
def health_cmd(
    wake: Annotated[
        bool,
        typer.Option(
            "--wake", help="Start a GPU container now (a cold start).", rich_help_panel=opt.WORKFLOW
        ),
    ] = False,
    timeout: opt.ApiTimeout = None,
    cold_start_timeout: opt.ColdStartTimeout = None,
    as_json: opt.Json = False,
    endpoint: opt.Endpoint = None,
) -> int:
    from ryla_modal.cli._render import make_renderer

    with _client(endpoint) as client:
        health: dict[str, Any] = client.health(**deadline_kwargs(timeout))
        if wake:
            renderer = make_renderer(as_json=as_json)
            try:
                job = client.wake(
                    on_event=lambda ev: renderer.event("wake", ev),
                    cold_start_timeout=cold_start_timeout,
                    **deadline_kwargs(timeout),
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


validate_app = typer.Typer(rich_markup_mode="rich", add_completion=False)


@validate_app.command(
    "validate",
    help=doc(
        """Check a workflow against the deployment's nodes and model files, without a GPU.

WORKFLOW is a workflow JSON file (API or UI format), or - for stdin."""
    ),
    epilog=examples("ryla validate examples/workflows/sd15_txt2img.json"),
)
def validate_cmd(
    workflow: Annotated[str, typer.Argument(help="Workflow JSON file, or - for stdin.")],
    overrides: opt.Overrides = None,
    allow_new_inputs: opt.AllowNewInputs = False,
    timeout: opt.ApiTimeout = None,
    as_json: opt.Json = False,
    endpoint: opt.Endpoint = None,
) -> int:
    from ryla_modal.cli.generate_cmd import (
        apply_overrides,
        check_workflow_arg,
        load_for_endpoint,
        parse_overrides,
    )
    from ryla_modal.errors import WorkflowValidationError

    check_workflow_arg(workflow)
    parsed = parse_overrides(overrides or [])
    wf = load_for_endpoint(workflow, endpoint)
    wf = apply_overrides(wf, parsed, allow_new_inputs=allow_new_inputs)
    with _client(endpoint) as client:
        report = client.validate(wf, **deadline_kwargs(timeout))
    if as_json:
        print_json(report)
    if report.get("ok"):
        if not as_json:
            print(f"{workflow}: valid ({len(wf)} nodes)")
        return 0
    error = WorkflowValidationError(
        f"{workflow}: {_first_line(report.get('error', {}).get('message', 'invalid workflow'))}",
        error=report.get("error"),
        node_errors=report.get("node_errors") or {},
    )
    raise error


# --- helpers --------------------------------------------------------------------------------------


def _first_line(text: object) -> str:
    """The first line of a server message: the node lines that may follow are printed apart."""
    return str(text).split("\n", 1)[0].rstrip(":")


def _progress(job: Job) -> str:
    p = job.progress
    if p is None or not p.nodes_total:
        return "-"
    text = f"{min(p.nodes_done, p.nodes_total)}/{p.nodes_total}"
    if p.step is not None and p.steps:
        text += f" ({p.step}/{p.steps})"
    return text


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d"


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    """Plain aligned columns on stdout: greppable, and no rich markup to eat brackets."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


__all__ = ["EXIT_TIMEOUT", "health_app", "jobs_app", "validate_app"]
