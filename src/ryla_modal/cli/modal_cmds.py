"""`ryla logs`, `ryla apps`, `ryla stop`, `ryla deploy`: the modal CLI under hard deadlines.

Thin glue: parse options, call :mod:`ryla_modal.deploy.modal_cli`, print.  Data (log lines, app
rows, URLs) goes to stdout as plain text or JSON; notes, build output and errors go to stderr.
The library is imported inside each command so ``ryla --help`` stays fast.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ryla_modal import defaults
from ryla_modal.cli import _options as opt
from ryla_modal.cli._output import budget, doc, examples
from ryla_modal.errors import EXIT_INTERRUPTED, EXIT_TIMEOUT, EXIT_USAGE

if TYPE_CHECKING:  # pragma: no cover
    from ryla_modal.deploy.modal_cli import LogsResult


# `ryla logs APP | head` closes our stdout early: leave quietly, the way a killed pipe writer does.
_EXIT_BROKEN_PIPE = 141
_EXIT_TERMINATED = 128 + signal.SIGTERM

_FILTERS = "Filters"
_SOURCES = ("stdout", "stderr", "system")

LOGS_HELP = f"""Print an app's recent logs, or follow them, and always return by the deadline.

APP is an app name or id (default: RYLA_APP, the app of the last `ryla deploy`, ryla-comfyui).

Lines are printed as they arrive.  Without --follow, `ryla logs` fetches the recent entries and
exits 0; if the deadline passes first it prints what arrived and exits {EXIT_TIMEOUT}.  With
--follow it streams until --timeout, which is the normal way a follow ends: exit 0 once lines
have arrived, {EXIT_TIMEOUT} if none did.  Transient failures (could not connect, UNAVAILABLE) are
retried inside the same --timeout; an unknown app (exit 1) or a bad token (exit 5) are not.

--json prints one JSON object per line: {{"type": "line", "line": "..."}} for each log line,
then {{"type": "end", "app", "lines", "timed_out", "follow", "attempts"}}.
"""

LOGS_EXAMPLES = examples(
    "ryla logs ryla-comfyui --timeout 30",
    "ryla logs ryla-comfyui --since 1h --search error",
    "ryla logs ryla-comfyui --follow --timeout 600",
    """ryla logs ryla-comfyui --tail 50 --json | jq -r 'select(.type=="line").line'""",
)

APPS_HELP = """List the Modal apps (running, deployed or recently stopped).
"""

APPS_EXAMPLES = examples("ryla apps", "ryla apps --json --env dev")

STOP_HELP = """Stop a deployed app and its running containers.

Asks for confirmation on a terminal; elsewhere pass --yes.  Stopping an app that is already
stopped succeeds with a note.
"""

STOP_EXAMPLES = examples("ryla stop ryla-comfyui", "ryla stop ryla-comfyui --yes")

DEPLOY_HELP = """Deploy the Modal app and record its endpoint for `ryla generate`.

Without APP_FILE, deploys the app packaged with ryla (`modal deploy -m ryla_modal.cloud.app`),
from any folder; APP_FILE deploys your own app file (`ryla init --app` writes one).  Settings
come from ./ryla.toml's [deploy] table and RYLA_* variables, all checked before modal runs.

Streams the build output (stderr) and prints each web endpoint as `NAME URL` (stdout) at the
end.  The endpoint is saved in the user config ($RYLA_CONFIG_DIR/config.toml, else
~/.config/ryla/config.toml), so later commands find it without RYLA_ENDPOINT.  Then the models
listed in [deploy] are fetched into the models volume, and each --check workflow is checked
against the new image's nodes and the volume's models (by the app's check_workflows function):
a missing node or model fails the command (exit 3), naming it.
"""

DEPLOY_EXAMPLES = examples(
    "ryla deploy",
    "ryla deploy --check examples/workflows/sd15_txt2img.json",
    "ryla deploy my_app.py --name ryla-comfyui --env dev",
    "ryla deploy --json",
)


def _interruptible(func: Callable[..., int]) -> Callable[..., int]:
    """Ctrl-C or SIGTERM: stop the modal process group, say so, exit 130 (143 for SIGTERM).

    SIGTERM is turned into the same path as Ctrl-C, so `timeout 60 ryla logs -f` does not orphan
    a `modal` process.  typer would turn a KeyboardInterrupt into a silent exit 130.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        terminated = False

        def on_sigterm(signum: int, frame: object) -> None:
            nonlocal terminated
            terminated = True
            raise KeyboardInterrupt

        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            _note("terminated" if terminated else "interrupted")
            return _EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


# --- ryla logs ------------------------------------------------------------------------------------

logs_app = typer.Typer(rich_markup_mode="rich", add_completion=False)


@logs_app.command("logs", help=doc(LOGS_HELP), epilog=LOGS_EXAMPLES)
@_interruptible
def logs_cmd(
    app_name: Annotated[
        str | None,
        typer.Argument(
            metavar="APP",
            help="App name or id.",
            show_default="RYLA_APP, the last `ryla deploy`, ryla-comfyui",
        ),
    ] = None,
    timeout: Annotated[
        float, opt.modal_timeout(defaults.MODAL_LOGS_TIMEOUT_S)
    ] = defaults.MODAL_LOGS_TIMEOUT_S,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Stream until --timeout.", rich_help_panel=opt.OUTPUT),
    ] = False,
    tail: Annotated[
        int | None,
        typer.Option(
            "--tail", metavar="N", min=1, help="The last N entries.", rich_help_panel=_FILTERS
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="WHEN",
            help="Start: '1h', '2d' or ISO 8601.",
            rich_help_panel=_FILTERS,
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--until", metavar="WHEN", help="End: same forms as --since.", rich_help_panel=_FILTERS
        ),
    ] = None,
    search: Annotated[
        str | None,
        typer.Option(
            "--search", metavar="TEXT", help="Only lines containing TEXT.", rich_help_panel=_FILTERS
        ),
    ] = None,
    function_call: Annotated[
        str | None,
        typer.Option(
            "--function-call",
            metavar="ID",
            help="Only this FunctionCall (fc-…).",
            rich_help_panel=_FILTERS,
        ),
    ] = None,
    container: Annotated[
        str | None,
        typer.Option(
            "--container",
            metavar="ID",
            help="Only this container (ta-…).",
            rich_help_panel=_FILTERS,
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            metavar="STREAM",
            help="Only this stream: stdout, stderr or system.",
            rich_help_panel=_FILTERS,
        ),
    ] = None,
    timestamps: Annotated[
        bool,
        typer.Option(
            "--timestamps", help="Prefix each line with its time.", rich_help_panel=opt.OUTPUT
        ),
    ] = False,
    retries: Annotated[
        int,
        typer.Option(
            "--retries",
            metavar="N",
            min=0,
            help="Extra attempts for transient failures.",
            rich_help_panel=opt.DEADLINES,
        ),
    ] = defaults.MODAL_RETRIES,
    environment: opt.Environment = None,
    as_json: opt.Json = False,
) -> int:
    if follow and (since or until or tail is not None):
        raise typer.BadParameter("--follow cannot be combined with --since, --until or --tail")
    if source is not None and source not in _SOURCES:
        raise typer.BadParameter(
            f"{source!r} is not one of {', '.join(_SOURCES)}", param_hint="--source"
        )
    return run_modal_logs(
        app_name or _default_app(),
        timeout=timeout,
        follow=follow,
        tail=tail,
        since=since,
        until=until,
        search=search,
        function_call=function_call,
        container=container,
        source=source,
        timestamps=timestamps,
        retries=retries,
        environment=environment,
        as_json=as_json,
    )


def emit_line(line: str, *, as_json: bool) -> None:
    """One log line on stdout, as text or as a JSON record."""
    if as_json:
        sys.stdout.write(json.dumps({"type": "line", "line": line}, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_modal_logs(
    app_name: str,
    *,
    timeout: float,
    follow: bool,
    as_json: bool,
    tail: int | None = None,
    since: str | None = None,
    until: str | None = None,
    search: str | None = None,
    function_call: str | None = None,
    container: str | None = None,
    source: str | None = None,
    timestamps: bool = False,
    retries: int = defaults.MODAL_RETRIES,
    environment: str | None = None,
    end: dict[str, Any] | None = None,
) -> int:
    """`modal app logs` under the hard deadline; `ryla logs` and `ryla jobs logs` share it."""
    from ryla_modal.deploy.modal_cli import ModalCLI

    def on_line(stream: str, line: str) -> None:
        if stream == "stdout":  # modal's own messages: shown at the end or inside the error
            emit_line(line, as_json=as_json)

    try:
        result = ModalCLI(retries=retries).logs(
            app_name,
            timeout=budget(timeout),
            tail=tail,
            since=since,
            until=until,
            search=search,
            function_call=function_call,
            container=container,
            source=source,
            timestamps=timestamps,
            follow=follow,
            environment=environment,
            on_line=on_line,
        )
    except BrokenPipeError:
        return _broken_pipe()
    for message in result.messages:
        _note(message)
    if as_json:
        _print_json({**_logs_end(result), **(end or {})})
    return _logs_exit(result, timeout)


def _logs_exit(result: LogsResult, timeout: float) -> int:
    if not result.timed_out:
        return 0
    if not result.lines:
        _note(
            f"no log lines arrived within {timeout:g}s: the app may have had no recent activity"
            " (try --since 1d), or Modal did not answer"
        )
        return EXIT_TIMEOUT
    if result.follow:
        _note(f"stopped following after {timeout:g}s (--timeout)")
        return 0
    _note(f"stopped at the {timeout:g}s deadline: the lines above may be incomplete")
    return EXIT_TIMEOUT


def _logs_end(result: LogsResult) -> dict[str, Any]:
    return {
        "type": "end",
        "app": result.app,
        "lines": len(result.lines),
        "timed_out": result.timed_out,
        "follow": result.follow,
        "attempts": result.attempts,
    }


# --- ryla apps ------------------------------------------------------------------------------------


apps_app = typer.Typer(rich_markup_mode="rich", add_completion=False)


@apps_app.command("apps", help=doc(APPS_HELP), epilog=APPS_EXAMPLES)
@_interruptible
def apps_cmd(
    timeout: Annotated[
        float, opt.modal_timeout(defaults.MODAL_COMMAND_TIMEOUT_S)
    ] = defaults.MODAL_COMMAND_TIMEOUT_S,
    environment: opt.Environment = None,
    as_json: opt.Json = False,
) -> int:
    from ryla_modal.deploy.modal_cli import ModalCLI

    rows = ModalCLI().apps(environment=environment, timeout=budget(timeout))
    if as_json:
        _print_json(
            [
                {
                    "app_id": r.app_id,
                    "name": r.name,
                    "state": r.state,
                    "tasks": r.tasks,
                    "created_at": r.created_at,
                    "stopped_at": r.stopped_at,
                }
                for r in rows
            ]
        )
        return 0
    if not rows:
        _note("no apps")
        return 0
    table = [("NAME", "STATE", "TASKS", "APP ID", "CREATED")]
    table += [(r.name, r.state, str(r.tasks), r.app_id, r.created_at) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


# --- ryla stop ------------------------------------------------------------------------------------


stop_app = typer.Typer(rich_markup_mode="rich", add_completion=False)


@stop_app.command("stop", help=doc(STOP_HELP), epilog=STOP_EXAMPLES)
@_interruptible
def stop_cmd(
    app_name: Annotated[str, typer.Argument(metavar="APP", help="App name or id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    timeout: Annotated[
        float, opt.modal_timeout(defaults.MODAL_COMMAND_TIMEOUT_S)
    ] = defaults.MODAL_COMMAND_TIMEOUT_S,
    environment: opt.Environment = None,
) -> int:
    if not yes:
        if not sys.stdin.isatty():
            _note(f"refusing to stop {app_name!r} without confirmation: pass --yes")
            return EXIT_USAGE
        if not typer.confirm(f"Stop app {app_name!r} and its running containers?", err=True):
            _note("not stopped")
            return 1
    from ryla_modal.deploy.modal_cli import ModalCLI

    result = ModalCLI().stop(app_name, environment=environment, timeout=budget(timeout))
    if result.already_stopped:
        _note(f"{app_name} was already stopped" + (f": {result.message}" if result.message else ""))
    else:
        _note(f"stopped {app_name}")
    return 0


# --- ryla deploy ----------------------------------------------------------------------------------


deploy_app = typer.Typer(rich_markup_mode="rich", add_completion=False)


@deploy_app.command("deploy", help=doc(DEPLOY_HELP), epilog=DEPLOY_EXAMPLES)
@_interruptible
def deploy_cmd(
    app_file: Annotated[
        str | None,
        typer.Argument(
            metavar="APP_FILE",
            help="Your own Modal app file.",
            show_default="the app packaged with ryla",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", metavar="NAME", help="Deployment name.", show_default="the app's"),
    ] = None,
    check: Annotated[
        list[str] | None,
        typer.Option(
            "--check",
            metavar="WF.json",
            help="After the deploy, check this workflow's nodes and models (repeatable).",
            rich_help_panel=opt.WORKFLOW,
        ),
    ] = None,
    timeout: Annotated[
        float, opt.modal_timeout(defaults.MODAL_DEPLOY_TIMEOUT_S)
    ] = defaults.MODAL_DEPLOY_TIMEOUT_S,
    environment: opt.Environment = None,
    as_json: opt.Json = False,
) -> int:
    from ryla_modal.cloud.deployment import deploy_app as run_deploy
    from ryla_modal.config import record_deployment

    def on_line(stream: str, line: str) -> None:
        sys.stderr.write(line + "\n")  # build output is for people: stdout is kept for the URLs
        sys.stderr.flush()

    def record(
        app: str | None, endpoint: str | None, urls: dict[str, str], page: str | None
    ) -> Any:
        if not app:
            return None
        return record_deployment(app, endpoint, urls, app_page_url=page)

    outcome = run_deploy(
        app_file,
        check=tuple(check or ()),
        name=name,
        environment=environment,
        timeout=budget(timeout),
        on_line=on_line,
        on_deployed=lambda r: record(r.app, r.endpoint_url, r.urls, r.app_page_url),
    )
    result = outcome.result
    for model in outcome.models:
        state = "already there" if model.get("skipped") else "added"
        _note(f"model {model['folder']}/{model['name']}: {state}")
    for verdict in outcome.checks:
        _note(f"checked {verdict['name']}: every node and model is there")
    config_path = outcome.recorded
    if not result.app:
        _note("could not tell the deployed app's name from modal's output: nothing recorded")
    if as_json:
        _print_json(
            {
                "app": result.app,
                "endpoint": result.endpoint_url,
                "urls": result.urls,
                "app_page_url": result.app_page_url,
                "config_path": str(config_path) if config_path else None,
                "models": outcome.models,
                "checks": outcome.checks,
            }
        )
        return 0
    if not result.urls:
        _note("the app has no web endpoints")
    for function, url in result.urls.items():
        print(f"{function} {url}")
    if config_path is not None and result.endpoint_url:
        _note(f"endpoint {result.endpoint_url} recorded in {config_path}")
    return 0


# --- helpers --------------------------------------------------------------------------------------


def _default_app() -> str:
    """RYLA_APP, else the app of the last `ryla deploy`, else the default name."""
    if os.environ.get("RYLA_APP"):
        return os.environ["RYLA_APP"]
    from ryla_modal.config import read_user_config

    recorded = read_user_config().get("app")
    return recorded if isinstance(recorded, str) and recorded else defaults.DEFAULT_APP_NAME


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _broken_pipe() -> int:
    # Point stdout at /dev/null so the interpreter's final flush does not raise again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return _EXIT_BROKEN_PIPE
