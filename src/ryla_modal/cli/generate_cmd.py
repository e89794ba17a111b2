"""`ryla generate`: submit a workflow, show progress through the cold start, save every output."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ryla_modal import defaults
from ryla_modal.cli._output import examples, note, print_json
from ryla_modal.errors import EXIT_INTERRUPTED, EXIT_TIMEOUT, RylaError

if TYPE_CHECKING:  # pragma: no cover
    from ryla_modal.cli._render import Renderer
    from ryla_modal.client import GenerateResult, InputUpload, JobEvent, RylaClient
    from ryla_modal.job import Job
    from ryla_modal.workflow import Workflow

GENERATE_HELP = f"""Run a workflow on the deployment and save every output file.

WORKFLOW is an API-format workflow file (or - for stdin).  A UI-format file is converted with the
deployment's node definitions.  Progress goes to stderr: waiting for a GPU container (a cold start
takes 2-5 minutes), starting ComfyUI, node i/n, sampler steps, downloading.  Files are saved under
--out with a manifest per job; nothing is ever overwritten.

A network error never runs the job twice: the job id is made here and the server keeps one job per
id.  Ctrl-C stops waiting but not the job; `ryla jobs wait JOB_ID` picks it up again.

--json prints NDJSON on stdout: one {{"type": "submitted"|"update"|"downloading"|"saved"|"done"}}
object per event, then {{"type": "result", "jobs": [...], "failed": N}}.

Exit codes: 0 ok, 1 other, 2 usage, 3 workflow invalid, 4 execution failed, 5 auth/config,
{EXIT_TIMEOUT} timed out (the job keeps running), 130 interrupted.
"""

GENERATE_EXAMPLES = examples(
    "ryla generate examples/workflows/sd15_txt2img.json",
    'ryla generate wf.json --set 6.text="a red fox in the snow" --seed random --count 4',
    "ryla generate wf.json --input photo.png --set LoadImage.image=photo.png --out renders",
    "ryla generate wf.json --no-wait --json",
)


@dataclass
class _Plan:
    label: str
    job_id: str
    workflow: dict[str, Any]
    seeds: dict[str, int] = field(default_factory=dict)
    result: GenerateResult | None = None
    error: RylaError | None = None
    finished: bool = False
    downloaded_s: float | None = None  # the client's own phase, after the job's timings


@click.command(
    "generate",
    help=GENERATE_HELP,
    epilog=GENERATE_EXAMPLES,
)
@click.argument("workflow", metavar="WORKFLOW")
@click.option(
    "--endpoint",
    metavar="URL",
    help="Gateway URL (default: RYLA_ENDPOINT, ryla.toml, last deploy).",
)
@click.option(
    "--set",
    "overrides",
    metavar="NODE.INPUT=VALUE",
    multiple=True,
    help="Change one input; NODE is an id, a unique class_type or a title. Repeatable.",
)
@click.option("--seed", metavar="N|random", help="Seed for every sampler: a number, or 'random'.")
@click.option(
    "--input",
    "inputs",
    metavar="FILE",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A file for ComfyUI's input folder (LoadImage by its name). Repeatable.",
)
@click.option(
    "--out",
    "-o",
    metavar="DIR",
    type=click.Path(path_type=Path),
    default=Path("outputs"),
    help="Folder for outputs.",
)
@click.option(
    "--count", "-n", metavar="N", type=click.IntRange(1, 1000), default=1, help="How many jobs."
)
@click.option(
    "--concurrency", metavar="C", type=click.IntRange(1, 64), default=4, help="Jobs at once."
)
@click.option(
    "--timeout",
    metavar="S",
    type=click.FloatRange(min=1),
    help=f"Execution budget in seconds [default: {defaults.EXECUTION_TIMEOUT_S:g}].",
)
@click.option(
    "--cold-start-timeout",
    metavar="S",
    type=click.FloatRange(min=1),
    help="Budget for a GPU container to pick the job up, in seconds"
    f" [default: {defaults.COLD_START_TIMEOUT_S:g}].",
)
@click.option("--no-wait", is_flag=True, help="Submit, print the job ids, exit.")
@click.option("--json", "as_json", is_flag=True, help="NDJSON events and a result on stdout.")
def generate_cmd(
    workflow: str,
    endpoint: str | None,
    overrides: tuple[str, ...],
    seed: str | None,
    inputs: tuple[Path, ...],
    out: Path,
    count: int,
    concurrency: int,
    timeout: float | None,
    cold_start_timeout: float | None,
    no_wait: bool,
    as_json: bool,
) -> int:
    from ryla_modal.client import InputUpload, RylaClient

    uploads: list[InputUpload] = []
    for path in inputs:
        if not path.is_file():
            raise click.BadParameter(f"{path}: no such file", param_hint="--input")
        uploads.append(InputUpload.from_path(path))
    wf = load_for_endpoint(workflow, endpoint)
    client = RylaClient(endpoint, cold_start_timeout=cold_start_timeout, execution_timeout=timeout)
    if overrides:
        wf = wf.with_overrides(overrides)
    plans = _plans(wf, seed, count)
    from ryla_modal.cli._render import make_renderer

    renderer = make_renderer(as_json=as_json)
    try:
        with client:
            _run(client, plans, uploads, out, concurrency, no_wait, renderer)
    except KeyboardInterrupt:
        renderer.close()
        pending = [p for p in plans if not p.finished]
        note("stopped waiting; the jobs keep running. Resume with:")
        for plan in pending:
            note(f"  ryla jobs wait {plan.job_id} --out {out}")
        return EXIT_INTERRUPTED
    renderer.close()
    return _report(plans, no_wait=no_wait, as_json=as_json)


def load_for_endpoint(source: str, endpoint: str | None) -> Workflow:
    """Load API format; convert UI format with the deployment's object_info."""
    from ryla_modal.errors import WorkflowFormatError
    from ryla_modal.workflow import Workflow, is_ui_format

    try:
        return Workflow.load(source)
    except WorkflowFormatError as exc:
        raw = _read_json_quietly(source)
        if raw is None or not is_ui_format(raw):
            raise
        from ryla_modal.client import RylaClient
        from ryla_modal.ui_convert import convert_ui_workflow

        try:
            with RylaClient(endpoint) as client:
                object_info = client.object_info()
        except RylaError as inner:
            raise WorkflowFormatError(
                f"{source} is a UI-format workflow; converting it needs the deployment's node"
                f" definitions, but the server could not be asked: {inner.message}",
                hint="start the deployment (`ryla health --wake`) or export the API format:"
                " Workflow → Export (API) in ComfyUI",
            ) from exc
        return Workflow(convert_ui_workflow(raw, object_info, source=source), source=source)


def _read_json_quietly(source: str) -> Any:
    import json

    if source == "-":
        return None
    try:
        return json.loads(Path(source).read_bytes())
    except (OSError, ValueError):
        return None


def _plans(wf: Workflow, seed: str | None, count: int) -> list[_Plan]:
    """One plan per job; with --count the seeds vary (random, or seed, seed+1, ...)."""
    plans: list[_Plan] = []
    for i in range(count):
        label = f"job {i + 1}/{count}" if count > 1 else "job"
        this = wf
        seeds: dict[str, int] = {}
        if seed is not None and seed != "random":
            try:
                base = int(seed)
            except ValueError:
                raise click.BadParameter(
                    f"must be a whole number or 'random', not {seed!r}", param_hint="--seed"
                ) from None
            this, seeds = wf.with_seed(base + i)
        elif seed == "random" or (count > 1 and wf.seed_inputs()):
            this, seeds = wf.with_seed("random")
        plans.append(_Plan(label, str(uuid.uuid4()), this.to_dict(), seeds))
    return plans


def _run(
    client: RylaClient,
    plans: list[_Plan],
    uploads: list[InputUpload],
    out: Path,
    concurrency: int,
    no_wait: bool,
    renderer: Renderer,
) -> None:
    """Run the plans, ``concurrency`` at a time, on daemon threads.

    The sync client (one httpx pool, thread-safe) keeps a one-job run free of asyncio's start-up
    cost.  Daemon threads, because Ctrl-C must return at once and leave the jobs running: a
    thread blocked in a long poll is abandoned, not joined.
    """
    import threading

    gate = threading.BoundedSemaphore(concurrency)

    def one(plan: _Plan) -> None:
        with gate:
            try:
                if no_wait:
                    client.submit(plan.workflow, job_id=plan.job_id, inputs=uploads)
                else:
                    plan.result = client.generate(
                        plan.workflow,
                        job_id=plan.job_id,
                        inputs=uploads,
                        out_dir=out,
                        on_event=lambda ev: _seen(plan, ev, renderer),
                        manifest_extra={"seeds": plan.seeds},
                    )
            except RylaError as exc:
                plan.error = exc
            except Exception as exc:  # a bug must not vanish with its thread
                plan.error = RylaError(f"unexpected {type(exc).__name__}: {exc}")
            plan.finished = True

    if len(plans) == 1:
        one(plans[0])
        return
    threads = [threading.Thread(target=one, args=(p,), daemon=True) for p in plans]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():  # joined in slices so Ctrl-C reaches this thread promptly
            t.join(timeout=0.2)


def _report(plans: list[_Plan], *, no_wait: bool, as_json: bool) -> int:
    failed = [p for p in plans if p.error is not None]
    if as_json:
        print_json(
            {"type": "result", "jobs": [_plan_json(p) for p in plans], "failed": len(failed)}
        )
    elif no_wait:
        for p in plans:
            if p.error is None:
                print(p.job_id)
        if not failed:
            note(f"follow with: ryla jobs wait {plans[0].job_id}")
    else:
        for p in plans:
            for f in p.result.files if p.result else []:
                print(f.path)
            if p.result is not None:  # where the time went, cold start included
                timings = p.result.job.timings.summary(downloaded=p.downloaded_s)
                note(timings if len(plans) == 1 else f"{p.label}: {timings}")
    if len(plans) > 1 and not as_json:
        _summary(plans)
    if len(plans) == 1 and failed:
        raise failed[0].error  # type: ignore[misc]  # the top-level handler prints it
    for p in failed:
        note(f"{p.label} ({p.job_id}): {p.error}")
    return failed[0].error.exit_code if failed and failed[0].error else 0


def _seen(plan: _Plan, ev: JobEvent, renderer: Renderer) -> None:
    if ev.kind == "saved":  # elapsed since the download began: the downloaded phase so far
        plan.downloaded_s = ev.elapsed_s
    renderer.event(plan.label, ev)


def _plan_json(p: _Plan) -> dict[str, Any]:
    data: dict[str, Any] = {"label": p.label, "job_id": p.job_id, "seeds": p.seeds}
    if p.result is not None:
        data["status"] = p.result.job.status
        data["timings"] = {**p.result.job.timings.to_dict(), "downloaded": p.downloaded_s}
        data["files"] = [str(f.path) for f in p.result.files]
        data["manifest"] = str(p.result.manifest) if p.result.manifest else None
    if p.error is not None:
        data["status"] = "failed"
        data["error"] = {"type": type(p.error).__name__, "message": p.error.message}
    return data


def _seconds(job: Job) -> str:
    """What a job took: its wall time (``total``), never a sum of overlapping phases."""
    total = job.timings.total
    if total is None:  # a server older than typed timings: the span of what it reported
        total = job.updated_at - job.created_at
    return f"{total:.1f}"


def _summary(plans: list[_Plan]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="ryla generate", title_justify="left")
    for column in ("job", "job id", "status", "files", "seconds"):
        table.add_column(column)
    for p in plans:
        status = "succeeded" if p.result else f"failed: {p.error}" if p.error else "pending"
        files = str(len(p.result.files)) if p.result else "-"
        took = _seconds(p.result.job) if p.result else "-"
        table.add_row(p.label, p.job_id, status, files, took)
    Console(stderr=True).print(table)
