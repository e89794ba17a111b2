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
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ryla_modal import defaults
from ryla_modal.cli._output import examples
from ryla_modal.errors import EXIT_INTERRUPTED, EXIT_TIMEOUT, EXIT_USAGE

if TYPE_CHECKING:  # pragma: no cover
    from ryla_modal.deploy.modal_cli import LogsResult


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


# A deadline counts from when the user started `ryla`, not from when modal started: the
# interpreter and our imports take a hundred milliseconds or more before any command runs.
_STARTED = time.monotonic() - _process_age()

# `ryla logs APP | head` closes our stdout early: leave quietly, the way a killed pipe writer does.
_EXIT_BROKEN_PIPE = 141
_EXIT_TERMINATED = 128 + signal.SIGTERM

_ENV_HELP = "Modal environment (default: the profile's)."

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
    a `modal` process.  click would turn a KeyboardInterrupt into a bare Abort.
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


_env_option = click.option("--env", "-e", "environment", metavar="ENV", help=_ENV_HELP)


def _timeout_option(default: float, minimum: float = 0.1) -> Callable[[Any], Any]:
    return click.option(
        "--timeout",
        "-t",
        metavar="S",
        type=click.FloatRange(min=minimum),
        default=default,
        help="Hard deadline in seconds.",
    )


# --- ryla logs ------------------------------------------------------------------------------------


@click.command("logs", help=LOGS_HELP, epilog=LOGS_EXAMPLES)
@click.argument("app_name", metavar="[APP]", required=False)
@_timeout_option(defaults.MODAL_LOGS_TIMEOUT_S)
@click.option("--tail", "-n", metavar="N", type=click.IntRange(min=1), help="The last N entries.")
@click.option("--since", metavar="WHEN", help="Start: '1h', '2d' or ISO 8601.")
@click.option("--until", metavar="WHEN", help="End: same forms as --since.")
@click.option("--search", metavar="TEXT", help="Only lines containing TEXT.")
@click.option("--function-call", metavar="ID", help="Only this FunctionCall (fc-…).")
@click.option("--container", metavar="ID", help="Only this container (ta-…).")
@click.option(
    "--source",
    type=click.Choice(["stdout", "stderr", "system"]),
    help="Only this stream.",
)
@click.option("--timestamps", is_flag=True, help="Prefix each line with its time.")
@click.option("--follow", "-f", is_flag=True, help="Stream until --timeout.")
@click.option(
    "--retries",
    metavar="N",
    type=click.IntRange(min=0),
    default=defaults.MODAL_RETRIES,
    help="Extra attempts for transient failures.",
)
@_env_option
@click.option("--json", "as_json", is_flag=True, help="NDJSON on stdout (see above).")
@_interruptible
def logs_cmd(
    app_name: str | None,
    timeout: float,
    tail: int | None,
    since: str | None,
    until: str | None,
    search: str | None,
    function_call: str | None,
    container: str | None,
    source: str | None,
    timestamps: bool,
    follow: bool,
    retries: int,
    environment: str | None,
    as_json: bool,
) -> int:
    if follow and (since or until or tail is not None):
        raise click.BadParameter("--follow cannot be combined with --since, --until or --tail")
    from ryla_modal.deploy.modal_cli import ModalCLI

    app_name = app_name or _default_app()

    def on_line(stream: str, line: str) -> None:
        if stream != "stdout":
            return  # modal's own messages: shown at the end or inside the error
        if as_json:
            sys.stdout.write(json.dumps({"type": "line", "line": line}, ensure_ascii=False) + "\n")
        else:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    try:
        result = ModalCLI(retries=retries).logs(
            app_name,
            timeout=_budget(timeout),
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
        _print_json(_logs_end(result))
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


@click.command("apps", help=APPS_HELP, epilog=APPS_EXAMPLES)
@_env_option
@_timeout_option(defaults.MODAL_COMMAND_TIMEOUT_S)
@click.option("--json", "as_json", is_flag=True, help="A JSON list on stdout.")
@_interruptible
def apps_cmd(environment: str | None, timeout: float, as_json: bool) -> int:
    from ryla_modal.deploy.modal_cli import ModalCLI

    rows = ModalCLI().apps(environment=environment, timeout=_budget(timeout))
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


@click.command("stop", help=STOP_HELP, epilog=STOP_EXAMPLES)
@click.argument("app_name", metavar="APP")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_env_option
@_timeout_option(defaults.MODAL_COMMAND_TIMEOUT_S)
@_interruptible
def stop_cmd(app_name: str, yes: bool, environment: str | None, timeout: float) -> int:
    if not yes:
        if not sys.stdin.isatty():
            _note(f"refusing to stop {app_name!r} without confirmation: pass --yes")
            return EXIT_USAGE
        if not click.confirm(f"Stop app {app_name!r} and its running containers?", err=True):
            _note("not stopped")
            return 1
    from ryla_modal.deploy.modal_cli import ModalCLI

    result = ModalCLI().stop(app_name, environment=environment, timeout=_budget(timeout))
    if result.already_stopped:
        _note(f"{app_name} was already stopped" + (f": {result.message}" if result.message else ""))
    else:
        _note(f"stopped {app_name}")
    return 0


# --- ryla deploy ----------------------------------------------------------------------------------


@click.command("deploy", help=DEPLOY_HELP, epilog=DEPLOY_EXAMPLES)
@click.argument("app_file", metavar="[APP_FILE]", required=False)
@click.option("--name", metavar="NAME", help="Deployment name (default: the app's).")
@click.option(
    "--check",
    "check",
    metavar="WF.json",
    multiple=True,
    help="After the deploy, check this workflow's nodes and models (repeatable).",
)
@_env_option
@_timeout_option(defaults.MODAL_DEPLOY_TIMEOUT_S, minimum=1)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout at the end.")
@_interruptible
def deploy_cmd(
    app_file: str | None,
    name: str | None,
    check: tuple[str, ...],
    environment: str | None,
    timeout: float,
    as_json: bool,
) -> int:
    from ryla_modal.cloud.deployment import deploy_app
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

    outcome = deploy_app(
        app_file,
        check=check,
        name=name,
        environment=environment,
        timeout=_budget(timeout),
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


def _budget(timeout: float) -> float:
    """What is left of ``--timeout`` after our own start-up (never less than a sliver)."""
    return max(0.1, timeout - (time.monotonic() - _STARTED))


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
