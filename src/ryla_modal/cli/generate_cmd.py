"""`ryla generate`: submit a workflow, show progress through the cold start, save every output."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ryla_modal.cli import _options as opt
from ryla_modal.cli._errors import error_line
from ryla_modal.cli._output import (
    DEFAULT_OUT,
    command_line,
    deadline_kwargs,
    doc,
    examples,
    note,
    print_json,
)
from ryla_modal.errors import EXIT_INTERRUPTED, EXIT_TIMEOUT, RylaError, RylaTimeout

if TYPE_CHECKING:  # pragma: no cover
    from ryla_modal.cli._render import Renderer
    from ryla_modal.client import GenerateResult, InputLike, JobEvent, RylaClient
    from ryla_modal.job import Job
    from ryla_modal.workflow import Workflow

GENERATE_HELP = f"""Run a workflow on the deployment and save every output file.

WORKFLOW is an API-format workflow file (or - for stdin).  A UI-format file is converted with the
deployment's node definitions.  Progress goes to stderr: waiting for a GPU container (a cold start
takes 2-5 minutes), starting ComfyUI, node i/n, sampler steps, downloading.  Files are saved under
--out with a manifest per job; nothing is ever overwritten.

A network error never runs the job twice: the job id is made here and the server keeps one job per
id.  Ctrl-C stops waiting but not the job; the command it prints (ryla jobs wait JOB_ID) picks it
up again.  --timeout bounds the whole command; --cold-start-timeout and --execution-timeout bound
the job's two phases.

--json prints NDJSON on stdout: one {{"type": "submitted"|"update"|"downloading"|"saved"|"done"}}
object per event, then {{"type": "result", "jobs": [...], "failed": N}}.

Exit codes: 0 ok, 1 other, 2 usage, 3 workflow invalid, 4 execution failed, 5 auth/config,
{EXIT_TIMEOUT} timed out (the job keeps running), 130 interrupted."""

GENERATE_EXAMPLES = examples(
    "ryla generate examples/workflows/sd15_txt2img.json",
    'ryla generate wf.json --set 6.text="a red fox in the snow" --seed random --count 4',
    "ryla generate wf.json --input photo.png --set LoadImage.image=photo.png --out renders",
    "ryla generate wf.json --no-wait --json",
    "ryla generate wf.json --timeout 900 --cold-start-timeout 600",
)

app = typer.Typer(rich_markup_mode="rich", add_completion=False)

#: the first bytes of image files people pass by mistake (ComfyUI saves PNGs with the workflow)
_IMAGE_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF8": "GIF",
    b"RIFF": "WebP",
}


_UNWIND_S = 5.0  # after Ctrl-C, threads get this long to remove their partial downloads


@dataclass
class _Plan:
    label: str
    job_id: str
    workflow: dict[str, Any]
    seeds: dict[str, int] = field(default_factory=dict)
    result: GenerateResult | None = None
    error: RylaError | None = None
    finished: bool = False
    interrupted: bool = False  # still running when Ctrl-C came (its thread then unwound)
    downloaded_s: float | None = None  # the client's own phase, after the job's timings


@app.command("generate", help=doc(GENERATE_HELP), epilog=GENERATE_EXAMPLES)
def generate_cmd(
    workflow: Annotated[
        str,
        typer.Argument(
            metavar="WORKFLOW", help="Workflow JSON file, or - for stdin.", show_default=False
        ),
    ],
    overrides: opt.Overrides = None,
    allow_new_inputs: opt.AllowNewInputs = False,
    seed: Annotated[
        str | None,
        typer.Option(
            "--seed",
            metavar="N|random",
            help="Seed for every sampler: a number, or 'random'.",
            rich_help_panel=opt.WORKFLOW,
        ),
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            metavar="FILE|URL",
            help="A file for ComfyUI's input folder (LoadImage by its name), or an http(s) URL"
            " the server fetches (name: its last segment; '#sha256=HEX' checks it). Repeatable.",
            rich_help_panel=opt.WORKFLOW,
        ),
    ] = None,
    previews: Annotated[
        bool,
        typer.Option(
            "--previews",
            help="Also save temp previews (PreviewImage, PreviewAudio).",
            rich_help_panel=opt.OUTPUT,
        ),
    ] = False,
    count: Annotated[
        int,
        typer.Option(
            "--count",
            "-n",
            metavar="N",
            min=1,
            max=1000,
            help="How many jobs.",
            rich_help_panel=opt.WORKFLOW,
        ),
    ] = 1,
    concurrency: Annotated[
        int,
        typer.Option(
            "--concurrency",
            metavar="C",
            min=1,
            max=64,
            help="Jobs at once.",
            rich_help_panel=opt.WORKFLOW,
        ),
    ] = 4,
    timeout: opt.ApiTimeout = None,
    cold_start_timeout: opt.ColdStartTimeout = None,
    execution_timeout: opt.ExecutionTimeout = None,
    out: opt.Out = DEFAULT_OUT,
    webhook: Annotated[
        str | None,
        typer.Option(
            "--webhook",
            metavar="URL",
            help="POST each finished job to URL, signed (the server needs RYLA_WEBHOOK_SECRET).",
            rich_help_panel=opt.OUTPUT,
        ),
    ] = None,
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait", help="Submit, print the job ids, exit.", rich_help_panel=opt.OUTPUT
        ),
    ] = False,
    as_json: opt.Json = False,
    endpoint: opt.Endpoint = None,
) -> int:
    # Everything that can be told from the command line alone is checked before the endpoint
    # is looked up: a typo should not need a deployment to be found.
    check_workflow_arg(workflow)
    parsed = parse_overrides(overrides or [])
    base_seed = _parse_seed(seed)
    urls = [v for v in inputs or [] if v.startswith(("http://", "https://"))]
    paths = [Path(v) for v in inputs or [] if v not in urls]
    for path in paths:
        if not path.is_file():
            raise typer.BadParameter(f"{str(path)!r}: no such file", param_hint="--input")

    from ryla_modal.client import InputUpload, InputURL, RylaClient

    uploads: list[InputLike] = [InputUpload.from_path(path) for path in paths]
    uploads += [InputURL.from_url(url) for url in urls]
    wf = load_for_endpoint(workflow, endpoint)
    wf = apply_overrides(wf, parsed, allow_new_inputs=allow_new_inputs)
    plans = _plans(wf, seed, base_seed, count)
    client = RylaClient(
        endpoint, cold_start_timeout=cold_start_timeout, execution_timeout=execution_timeout
    )
    from ryla_modal.cli._render import make_renderer
    from ryla_modal.cli._signals import sigterm_as_interrupt

    renderer = make_renderer(as_json=as_json)
    try:
        with sigterm_as_interrupt(), client:
            _run(
                client,
                plans,
                uploads,
                out,
                concurrency,
                no_wait,
                timeout,
                renderer,
                previews,
                webhook,
            )
    except KeyboardInterrupt:
        renderer.close()
        pending = [p for p in plans if not p.finished or p.interrupted]
        note("stopped waiting; the jobs keep running. Resume with:")
        for plan in pending:
            note("  " + command_line("jobs", "wait", plan.job_id, endpoint=endpoint, out=out))
        return EXIT_INTERRUPTED
    renderer.close()
    return _report(plans, no_wait=no_wait, as_json=as_json, endpoint=endpoint, out=out)


def check_workflow_arg(source: str) -> None:
    """A missing file is a usage error (exit 2); an image is not a workflow (exit 3)."""
    if source == "-":
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise typer.BadParameter(f"{source!r}: no such file", param_hint="WORKFLOW")
    if path.is_dir():
        raise typer.BadParameter(
            f"{source!r} is a folder, not a workflow file", param_hint="WORKFLOW"
        )
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError:
        return  # the loader says why it cannot be read
    for magic, kind in _IMAGE_MAGIC.items():
        if head.startswith(magic):
            from ryla_modal.errors import WorkflowFormatError

            raise WorkflowFormatError(
                f"is a {kind} image, not a workflow JSON file",
                source=source,
                hint="in ComfyUI: Workflow → Export (API), and pass that .json file",
            )


def parse_overrides(texts: list[str]) -> list[Any]:
    """``--set`` values parsed up front: a malformed one is a usage error (exit 2)."""
    from ryla_modal.errors import WorkflowFormatError
    from ryla_modal.workflow import parse_override

    parsed = []
    for text in texts:
        try:
            parsed.append(parse_override(text))
        except WorkflowFormatError as exc:
            message = exc.message + (f" ({exc.hint})" if exc.hint else "")
            raise typer.BadParameter(message, param_hint="--set") from None
    return parsed


def apply_overrides(wf: Workflow, parsed: list[Any], *, allow_new_inputs: bool) -> Workflow:
    """``--set`` applied; the library's hint about new inputs names this CLI's flag."""
    from ryla_modal.errors import WorkflowFormatError

    if not parsed:
        return wf
    try:
        return wf.with_overrides(parsed, allow_new_inputs=allow_new_inputs)
    except WorkflowFormatError as exc:
        if exc.hint and "allow new inputs" in exc.hint:
            exc.hint = "check the spelling, or pass --allow-new-inputs to add an optional input"
        raise


def _parse_seed(seed: str | None) -> int | None:
    if seed is None or seed == "random":
        return None
    try:
        return int(seed)
    except ValueError:
        raise typer.BadParameter(
            f"must be a whole number or 'random', not {seed!r}", param_hint="--seed"
        ) from None


def load_for_endpoint(source: str, endpoint: str | None) -> Workflow:
    """Load API format; convert UI format with the deployment's object_info."""
    from ryla_modal.workflow import load_for_deployment

    def object_info() -> dict[str, Any]:
        from ryla_modal.client import RylaClient

        with RylaClient(endpoint) as client:
            return client.object_info()

    return load_for_deployment(source, object_info)


def _plans(wf: Workflow, seed: str | None, base: int | None, count: int) -> list[_Plan]:
    """One plan per job; with --count the seeds vary (random, or seed, seed+1, ...)."""
    plans: list[_Plan] = []
    for i in range(count):
        label = f"job {i + 1}/{count}" if count > 1 else "job"
        this = wf
        seeds: dict[str, int] = {}
        if base is not None:
            this, seeds = wf.with_seed(base + i)
        elif seed == "random" or (count > 1 and wf.seed_inputs()):
            this, seeds = wf.with_seed("random")
        plans.append(_Plan(label, str(uuid.uuid4()), this.to_dict(), seeds))
    return plans


def _run(
    client: RylaClient,
    plans: list[_Plan],
    uploads: list[InputLike],
    out: Path,
    concurrency: int,
    no_wait: bool,
    timeout: float | None,
    renderer: Renderer,
    previews: bool = False,
    webhook: str | None = None,
) -> None:
    """Run the plans, ``concurrency`` at a time, on daemon threads.

    The sync client (one httpx pool, thread-safe) keeps a one-job run free of asyncio's start-up
    cost.  On Ctrl-C (or SIGTERM) the jobs keep running on the server; closing the client stops
    every request in flight at once, so each thread unwinds and removes its partial download,
    and the threads get a short, bounded wait for that.
    """
    import threading

    gate = threading.BoundedSemaphore(concurrency)

    def one(plan: _Plan) -> None:
        with gate:
            try:
                # --timeout is one deadline for the whole command: each job gets what is left
                if no_wait:
                    client.submit(
                        plan.workflow,
                        job_id=plan.job_id,
                        inputs=uploads,
                        previews=previews,
                        webhook=webhook,
                        **deadline_kwargs(timeout),
                    )
                else:
                    plan.result = client.generate(
                        plan.workflow,
                        job_id=plan.job_id,
                        inputs=uploads,
                        previews=previews,
                        out_dir=out,
                        on_event=lambda ev: _seen(plan, ev, renderer),
                        manifest_extra={"seeds": plan.seeds},
                        webhook=webhook,
                        **deadline_kwargs(timeout),
                    )
            except RylaError as exc:
                plan.error = exc
            except Exception as exc:  # a bug must not vanish with its thread
                plan.error = RylaError(f"unexpected {type(exc).__name__}: {exc}")
            plan.finished = True

    if len(plans) == 1:
        one(plans[0])
        return
    # Waiting is done on Events, not Thread.join: a join interrupted by Ctrl-C marks the thread
    # as stopped although it still runs (CPython 3.11/3.12), and the unwind below would not wait.
    done = [threading.Event() for _ in plans]

    def tracked(plan: _Plan, finished: threading.Event) -> None:
        try:
            one(plan)
        finally:
            finished.set()

    for plan, finished in zip(plans, done, strict=True):
        threading.Thread(target=tracked, args=(plan, finished), daemon=True).start()
    try:
        for finished in done:  # each job ends by its own deadlines; slices keep Ctrl-C prompt
            while not finished.wait(timeout=0.2):
                pass
    except KeyboardInterrupt:
        for plan in plans:
            plan.interrupted = not plan.finished
        client.close()
        give_up_at = time.monotonic() + _UNWIND_S
        for finished in done:
            finished.wait(timeout=max(0.0, give_up_at - time.monotonic()))
        raise


def _report(
    plans: list[_Plan], *, no_wait: bool, as_json: bool, endpoint: str | None, out: Path
) -> int:
    failed = [p for p in plans if p.error is not None]
    if as_json:
        print_json(
            {"type": "result", "jobs": [_plan_json(p) for p in plans], "failed": len(failed)}
        )
    elif no_wait:
        for p in plans:
            if p.error is None:
                print(p.job_id)
        for p in plans:
            if p.error is None:
                note(
                    "follow with: "
                    + command_line("jobs", "wait", p.job_id, endpoint=endpoint, out=out)
                )
    else:
        for p in plans:
            for f in p.result.files if p.result else []:
                print(f.path)
            if p.result is not None:  # where the time went, cold start included
                timings = p.result.job.timings.summary(downloaded=p.downloaded_s)
                note(timings if len(plans) == 1 else f"{p.label}: {timings}")
    if len(plans) > 1 and not as_json:
        _summary(plans)
    for p in failed:
        assert p.error is not None
        if isinstance(p.error, RylaTimeout):
            p.error = timed_out(p.error, p.job_id, endpoint=endpoint, out=out)
    if len(plans) == 1 and failed:
        raise failed[0].error  # type: ignore[misc]  # the top-level handler prints it
    for p in failed:
        assert p.error is not None
        note(f"{p.label} ({p.job_id}) failed:")
        note(error_line(p.error))
    return failed[0].error.exit_code if failed and failed[0].error else 0


def _seen(plan: _Plan, ev: JobEvent, renderer: Renderer) -> None:
    if ev.kind == "saved":  # elapsed since the download began: the downloaded phase so far
        plan.downloaded_s = ev.elapsed_s
    renderer.event(plan.label, ev)


def timed_out(
    err: RylaTimeout, job_id: str | None, *, endpoint: str | None, out: Path | None
) -> RylaTimeout:
    """The deadline's error, saying which phase ran out, the job, and how to resume it."""
    job_id = getattr(err, "job_id", None) or job_id
    phase = getattr(err, "phase", None)
    phase = str(phase).replace("_", " ") if phase else _phase_of(err)
    text = f"deadline passed{f' during {phase}' if phase else ''}"
    if job_id:
        text += f"; job {job_id} keeps running on the server"
    text += f" ({err.message})" if err.message else ""
    hint = None
    if job_id:
        hint = "resume with: " + command_line("jobs", "wait", job_id, endpoint=endpoint, out=out)
    return RylaTimeout(text, job_id=job_id, hint=hint or err.hint)


def _phase_of(err: RylaTimeout) -> str | None:
    from ryla_modal.errors import ColdStartTimeout, ExecutionTimeout

    if isinstance(err, ColdStartTimeout):
        return "the cold start"
    if isinstance(err, ExecutionTimeout):
        return "execution"
    return None


def _plan_json(p: _Plan) -> dict[str, Any]:
    data: dict[str, Any] = {"label": p.label, "job_id": p.job_id, "seeds": p.seeds}
    if p.result is not None:
        data["status"] = p.result.job.status
        data["timings"] = {**p.result.job.timings.to_dict(), "downloaded": p.downloaded_s}
        data["files"] = [str(f.path) for f in p.result.files]
        data["texts"] = p.result.texts
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
        status = "succeeded" if p.result else "failed" if p.error else "pending"
        files = str(len(p.result.files)) if p.result else "-"
        took = _seconds(p.result.job) if p.result else "-"
        table.add_row(p.label, p.job_id, status, files, took)
    Console(stderr=True).print(table)
