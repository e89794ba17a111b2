"""``logs``, ``apps``, ``stop`` and ``deploy`` on top of the real ``modal`` CLI, never hanging.

Every call runs ``modal`` through :func:`ryla_modal.deploy.proc.run_command`, so it ends by its
deadline with whatever arrived before it.  Transient failures (could not connect, connection lost,
UNAVAILABLE, a timeout with no output) are retried with exponential backoff and jitter inside the
same overall budget; "No App with name …", token problems and usage errors never are.  Tokens
travel in the environment, never in argv.

Example::

    cli = ModalCLI()
    result = cli.logs("ryla-comfyui", timeout=30, tail=200, on_line=lambda s, line: ...)
    if result.timed_out and not result.lines: ...
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import sys
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ryla_modal import defaults
from ryla_modal.deploy.proc import CommandResult, LineCallback, redact, run_command
from ryla_modal.errors import AuthError, CommandTimeout, ConfigError, ModalCLIError

FailureKind = Literal["ok", "not_found", "auth", "usage", "transient", "already_stopped", "failed"]

# An attempt with less time than this left is not worth starting (modal needs ~0.5 s to import).
_MIN_ATTEMPT_S = 0.05
_TOKEN_HINT = "run `modal token new`, or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"  # noqa: S105

# Modal's own wording (modal 1.6: client.py, config.py, cli/app.py, _utils/grpc_utils.py) and the
# gRPC status names it passes through.  Lower-cased substrings of stderr.
_AUTH_MARKERS = (
    "token missing",
    "token id is malformed",
    "invalid token",
    "token id and secret must both be configured",
    "unauthenticated",
    "could not authenticate",
    "token expired",
    "token has expired",
    "permission denied",
)
_NOT_FOUND_MARKERS = ("no app with name", "not found")
_ALREADY_STOPPED_MARKERS = ("app is already stopped",)
_TRANSIENT_MARKERS = (
    "could not connect",
    "connection lost",
    "connection reset",
    "connection refused",
    "connection closed",
    "connectionerror",
    "streamterminatederror",
    "unavailable",
    "deadline exceeded",
    "deadline_exceeded",
    "temporarily",
    "timed out",
    "503",
    "502",
    "504",
)

#: the packaged Modal app: what `ryla deploy` deploys without a file (`modal deploy -m ...`)
PACKAGED_APP_MODULE = defaults.PACKAGED_APP_MODULE
#: the environment variable that carries a call's JSON to ``ryla_modal.cloud.remote``
CALL_ENV = "RYLA_REMOTE_CALL"

# `modal deploy` output (modal 1.6, _output/status.py and runner.py).
_URL_RE = re.compile(r"https?://[^\s\]\)\"'<>]+")
_CREATED_RE = re.compile(r"Created (?:web function|\w+) (\S+?)\.?$", re.IGNORECASE)
_METHOD_URL_RE = re.compile(r"(\S+) -> (https?://\S+)")
_APP_PAGE_RE = re.compile(r"View Deployment:\s*(https?://\S+)")


@dataclass(frozen=True)
class LogsResult:
    """What ``logs`` printed before it ended.  ``timed_out`` is normal for ``follow=True``."""

    app: str
    lines: list[str]
    messages: list[str]
    timed_out: bool
    follow: bool
    attempts: int
    duration_s: float
    truncated: bool = False


@dataclass(frozen=True)
class AppInfo:
    """One row of ``modal app list --json``; ``raw`` keeps the row as modal printed it."""

    app_id: str
    name: str
    state: str
    tasks: int
    created_at: str
    stopped_at: str | None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class StopResult:
    app: str
    already_stopped: bool
    message: str = ""


@dataclass(frozen=True)
class DeployResult:
    """``urls`` maps each web function (or ``Class.method``) to its URL, in output order."""

    app: str | None
    urls: dict[str, str]
    app_page_url: str | None
    duration_s: float
    lines: list[str] = field(default_factory=list, compare=False)

    @property
    def endpoint_url(self) -> str | None:
        """The URL clients should use: the gateway's if there is one, else the only/first URL."""
        return pick_endpoint(self.urls)


# --- preflight ------------------------------------------------------------------------------------


def modal_command(python: str | None = None) -> list[str]:
    """argv prefix for the ``modal`` CLI of this environment.

    Prefers the ``modal`` script next to the interpreter; falls back to ``python -m modal``.
    Never the first ``modal`` on PATH, which may belong to another environment and version.
    """
    python = python or sys.executable
    if importlib.util.find_spec("modal") is None:
        raise ConfigError(
            f"the modal package is not installed for {python}",
            hint="pip install 'ryla-modal' (it depends on modal), or pip install modal",
        )
    script = shutil.which("modal", path=str(Path(python).parent))
    if script:
        return [script]
    return [python, "-m", "modal"]


def check_token(environ: Mapping[str, str]) -> None:
    """Fail fast, without importing modal, when no Modal token is configured.

    Looks where modal looks: ``MODAL_TOKEN_ID``/``MODAL_TOKEN_SECRET``, then the active profile of
    ``$MODAL_CONFIG_PATH`` (or ``~/.modal.toml``).  Whether the token is *valid* only the server
    can say; that failure comes back as :class:`AuthError`.
    """
    token_id = environ.get("MODAL_TOKEN_ID", "")
    token_secret = environ.get("MODAL_TOKEN_SECRET", "")
    if token_id and token_secret:
        return
    if token_id or token_secret:
        missing = "MODAL_TOKEN_SECRET" if token_id else "MODAL_TOKEN_ID"
        raise ConfigError(f"{missing} is not set while its partner is", hint=_TOKEN_HINT)
    if environ.get("MODAL_OAUTH_REFRESH_TOKEN"):
        return
    path = _modal_config_path(environ)
    profiles: dict[str, Any] = {}
    if path.is_file():
        try:
            profiles = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read the Modal config {path}: {exc}") from exc
    name = environ.get("MODAL_PROFILE") or next(
        (k for k, v in profiles.items() if isinstance(v, dict) and v.get("active") is True),
        "default",
    )
    profile = profiles.get(name)
    if isinstance(profile, dict) and (
        (profile.get("token_id") and profile.get("token_secret"))
        or profile.get("oauth_refresh_token")
    ):
        return
    where = f"profile {name!r} in {path}" if path.is_file() else f"{path} (missing)"
    raise ConfigError(
        f"no Modal token: MODAL_TOKEN_ID/MODAL_TOKEN_SECRET are not set and {where} has none",
        hint=_TOKEN_HINT,
    )


def _modal_config_path(environ: Mapping[str, str]) -> Path:
    if environ.get("MODAL_CONFIG_PATH"):
        return Path(environ["MODAL_CONFIG_PATH"])
    home = environ.get("HOME")
    return (Path(home) if home else Path.home()) / ".modal.toml"


# --- classifying a failed run ---------------------------------------------------------------------


def classify(result: CommandResult) -> FailureKind:
    """Why a ``modal`` run failed, from its exit code and its own error text."""
    if result.timed_out:
        # Silence until the deadline is what an unreachable server looks like; output means the
        # server answered and we merely ran out of time.
        return "transient" if not result.lines else "failed"
    if result.exit_code == 0:
        return "ok"
    text = result.stderr_tail.lower()
    if any(m in text for m in _ALREADY_STOPPED_MARKERS):
        return "already_stopped"
    if result.exit_code == 2 and "usage:" in text:
        return "usage"
    if any(m in text for m in _AUTH_MARKERS):
        return "auth"
    if any(m in text for m in _NOT_FOUND_MARKERS):
        return "not_found"
    if any(m in text for m in _TRANSIENT_MARKERS) and not result.stdout_lines:
        return "transient"
    return "failed"


def error_line(result: CommandResult) -> str:
    """modal's own one-line reason: the last ``Error: …`` line, else the last stderr line."""
    lines = [ln.strip() for ln in result.stderr_tail.splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith("Error:"):
            return line[len("Error:") :].strip()
    return lines[-1] if lines else f"exited with code {result.exit_code}"


class _Transient(Exception):
    """An attempt failed in a way worth retrying; carries the result for the final error."""

    def __init__(self, result: CommandResult) -> None:
        super().__init__(error_line(result))
        self.result = result


# --- the wrapper ----------------------------------------------------------------------------------


class ModalCLI:
    """The ``modal`` CLI with deadlines, retries and clear errors.

    ``env`` is the complete environment for ``modal`` (default: ours); ``command`` overrides the
    executable (default: :func:`modal_command`); ``on_start(pid)`` sees each child process.

        cli = ModalCLI(retries=2)
        for app in cli.apps(): print(app.name, app.state)
    """

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] | None = None,
        retries: int = defaults.MODAL_RETRIES,
        kill_grace: float = defaults.KILL_GRACE_S,
        on_start: Callable[[int], None] | None = None,
        retry_wait_multiplier: float = defaults.MODAL_RETRY_WAIT_MULTIPLIER_S,
        retry_wait_max: float = defaults.MODAL_RETRY_WAIT_MAX_S,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self._env = dict(os.environ if env is None else env)
        self._command = list(command) if command is not None else None
        self.retries = retries
        self.kill_grace = kill_grace
        self.on_start = on_start
        self.retry_wait_multiplier = retry_wait_multiplier
        self.retry_wait_max = retry_wait_max

    @property
    def environ(self) -> dict[str, str]:
        """A copy of the environment ``modal`` runs with."""
        return dict(self._env)

    # --- commands ------------------------------------------------------------------------------

    def logs(
        self,
        app: str,
        *,
        timeout: float = defaults.MODAL_LOGS_TIMEOUT_S,
        tail: int | None = None,
        since: str | None = None,
        until: str | None = None,
        search: str | None = None,
        function_call: str | None = None,
        container: str | None = None,
        source: str | None = None,
        timestamps: bool = False,
        follow: bool = False,
        environment: str | None = None,
        on_line: LineCallback | None = None,
    ) -> LogsResult:
        """Fetch (or, with ``follow``, stream) an app's logs; returns by ``timeout`` + grace.

        ``timeout`` is the whole budget, retries included.  A deadline is not an error here: the
        result says ``timed_out`` and holds the lines that arrived.
        """
        if follow and (since or until or tail is not None):
            raise ValueError("follow cannot be combined with since, until or tail")
        if tail is not None and tail <= 0:
            raise ValueError(f"tail must be positive, got {tail}")
        args = ["app", "logs", app]
        args += ["--follow"] if follow else []
        args += _opt("--tail", tail) + _opt("--since", since) + _opt("--until", until)
        args += _opt("--search", search) + _opt("--function-call", function_call)
        args += _opt("--container", container) + _opt("--source", source)
        args += ["--timestamps"] if timestamps else []
        args += _opt("--env", environment)
        result, attempts = self._run(
            args,
            budget=timeout,
            attempt_timeout=timeout,
            on_line=on_line,
            keep_lines=defaults.MODAL_LOGS_KEEP_LINES,
        )
        kind = classify(result)
        if kind != "ok" and not result.timed_out:
            raise self._error(result, kind, attempts, subject=f"app {app!r}")
        return LogsResult(
            app=app,
            lines=result.stdout_lines,
            messages=result.stderr_lines,
            timed_out=result.timed_out,
            follow=follow,
            attempts=attempts,
            duration_s=result.duration_s,
            truncated=result.truncated,
        )

    def apps(
        self,
        *,
        environment: str | None = None,
        timeout: float = defaults.MODAL_COMMAND_TIMEOUT_S,
    ) -> list[AppInfo]:
        """``modal app list --json``, parsed."""
        args = ["app", "list", "--json", *_opt("--env", environment)]
        result = self._checked(args, budget=timeout, what="listing apps")
        return parse_app_list(result.stdout)

    def stop(
        self,
        app: str,
        *,
        environment: str | None = None,
        timeout: float = defaults.MODAL_COMMAND_TIMEOUT_S,
    ) -> StopResult:
        """Stop a deployed app (no prompt: ask the user before calling this)."""
        args = ["app", "stop", app, "--yes", *_opt("--env", environment)]
        result, attempts = self._run(args, budget=timeout, attempt_timeout=self._attempt(timeout))
        kind = classify(result)
        if kind == "already_stopped":
            return StopResult(app=app, already_stopped=True, message=error_line(result))
        if kind != "ok":
            raise self._error(result, kind, attempts, subject=f"app {app!r}")
        return StopResult(app=app, already_stopped=False)

    def deploy(
        self,
        app_file: str | os.PathLike[str] | None = None,
        *,
        module: str | None = None,
        name: str | None = None,
        environment: str | None = None,
        timeout: float = defaults.MODAL_DEPLOY_TIMEOUT_S,
        on_line: LineCallback | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> DeployResult:
        """``modal deploy APP_FILE`` (or ``-m MODULE``), streaming its output; returns the URLs.

        With neither, the packaged app (``ryla_modal.cloud.app``) is deployed: it is importable
        wherever ryla is installed, so this works from any folder.  A relative ``app_file`` is
        read from ``cwd`` (where modal runs, and where ``ryla.toml`` is read), else from ours.
        """
        if app_file is not None and module is not None:
            raise ValueError("give app_file or module, not both")
        if app_file is None:
            target = module or PACKAGED_APP_MODULE
            if importlib.util.find_spec(target.split(".", 1)[0]) is None:
                raise ConfigError(f"no Python module {target!r} is importable here")
            args = ["deploy", "-m", target]
            what = f"deploying {target}"
        else:
            path = Path(app_file)
            if cwd is not None and not path.is_absolute():
                path = Path(cwd) / path
            if not path.is_file():
                raise ConfigError(
                    f"no Modal app file at {path}",
                    hint="run `ryla deploy` without a file to deploy the packaged app, or"
                    " `ryla init --app` to write one to customize",
                )
            args = ["deploy", str(path)]
            what = f"deploying {path}"
        args += [*_opt("--name", name), *_opt("--env", environment)]
        # Deploying twice is harmless (same name, same app), but a deploy that already printed
        # build output is not retried: classify() only calls silent failures transient.
        result = self._checked(
            args,
            budget=timeout,
            attempt_timeout=timeout,  # a slow image build must not be cut into attempts
            what=what,
            on_line=on_line,
            cwd=cwd,
        )
        urls, page = parse_deploy_output([text for _, text in result.lines])
        return DeployResult(
            app=name or app_name_from_page_url(page),
            urls=urls,
            app_page_url=page,
            duration_s=result.duration_s,
            lines=[text for _, text in result.lines],
        )

    def history(
        self,
        app: str,
        *,
        environment: str | None = None,
        timeout: float = defaults.MODAL_COMMAND_TIMEOUT_S,
    ) -> list[dict[str, Any]]:
        """``modal app history APP --json``: one row per deployment, newest first.

        Each row has ``version`` (an int) besides modal's own columns.
        """
        args = ["app", "history", app, "--json", *_opt("--env", environment)]
        result = self._checked(args, budget=timeout, what=f"reading the history of {app!r}")
        try:
            rows = json.loads(result.stdout) if result.stdout.strip() else []
        except json.JSONDecodeError as exc:
            raise ModalCLIError(f"`modal app history --json` printed no JSON: {exc}") from exc
        out: list[dict[str, Any]] = []
        for row in rows if isinstance(rows, list) else []:
            if isinstance(row, dict):
                version = str(row.get("version") or row.get("Version") or "").lstrip("v")
                out.append({**row, "version": int(version) if version.isdigit() else None})
        return out

    def call(
        self,
        op: str,
        payload: Mapping[str, Any],
        *,
        timeout: float = defaults.MODAL_COMMAND_TIMEOUT_S,
        cwd: str | os.PathLike[str] | None = None,
    ) -> Any:
        """Run ``ryla_modal.cloud.remote`` OP in a child Python under a hard deadline.

        The modal package's own calls (``update_autoscaler``, ``Function.remote``, lookups) have
        no total deadline, so they run in a child process that is killed, with its group, when
        ``timeout`` passes.  One attempt: these calls are not retried (a ``remote()`` may have
        started work).  The payload travels in the environment, never in argv.
        """
        check_token(self._env)
        env = _child_env(self._env)
        env[CALL_ENV] = json.dumps({"op": op, **payload})
        argv = [sys.executable, "-m", "ryla_modal.cloud.remote"]
        try:
            result = run_command(
                argv,
                timeout=timeout,
                env=env,
                cwd=cwd,
                kill_grace=self.kill_grace,
                on_start=self.on_start,
            )
        except OSError as exc:
            raise ConfigError(f"cannot run {sys.executable}: {exc}") from exc
        if result.interrupted:
            raise KeyboardInterrupt
        if result.timed_out:
            raise CommandTimeout(
                f"{op} did not finish within {timeout:g}s",
                hint="check the network, or run again with a longer --timeout",
            )
        answer = _last_json(result.stdout_lines)
        if answer is None:
            raise ModalCLIError(
                f"{op} failed: {error_line(result)}",
                argv=list(argv),
                exit_code=result.exit_code,
                stderr_tail=_scrub(result.stderr_tail, [self._env.get("MODAL_TOKEN_SECRET", "")]),
            )
        if answer.get("ok"):
            return answer.get("result")
        error = answer.get("error") or {}
        kind, message = str(error.get("type", "")), str(error.get("message", ""))
        if kind == "ConfigError":
            raise ConfigError(message, hint=error.get("hint"))
        if kind == "AuthError":
            raise AuthError(f"Modal refused the token: {message}", hint=_TOKEN_HINT)
        if kind == "NotFoundError":
            raise ModalCLIError(
                message, hint="deploy the app with `ryla deploy`, or check the app name"
            )
        raise ModalCLIError(f"{op} failed: {kind}: {message}")

    # --- running -------------------------------------------------------------------------------

    def _attempt(self, budget: float) -> float:
        """Per-attempt deadline for short commands: a hung attempt leaves time for another."""
        if self.retries == 0:
            return budget
        return max(min(budget, 5.0), budget / (self.retries + 1))

    def _checked(
        self,
        args: list[str],
        *,
        budget: float,
        what: str,
        attempt_timeout: float | None = None,
        on_line: LineCallback | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> CommandResult:
        result, attempts = self._run(
            args,
            budget=budget,
            attempt_timeout=attempt_timeout or self._attempt(budget),
            on_line=on_line,
            cwd=cwd,
        )
        if result.timed_out:
            raise CommandTimeout(
                f"{what} did not finish within {budget:g}s"
                + (
                    f"; last output: {_tail(result)}" if result.lines else "; modal printed nothing"
                ),
                hint="check the network, or run again with a longer --timeout",
            )
        kind = classify(result)
        if kind != "ok":
            raise self._error(result, kind, attempts, subject=what)
        return result

    def _run(
        self,
        args: list[str],
        *,
        budget: float,
        attempt_timeout: float,
        on_line: LineCallback | None = None,
        keep_lines: int | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> tuple[CommandResult, int]:
        """Run ``modal ARGS`` with retries for transient failures, all inside ``budget``.

        Returns the last attempt's result (whatever its outcome) and the number of attempts.
        ``budget`` counts from this call: the imports and setup below come out of it (on a
        loaded machine they took 0.2-0.45 s, which `ryla logs` overshot its deadline by).
        """
        called = time.monotonic()
        # here, not at module level: `ryla --help` stays fast (policy imports tenacity)
        from ryla_modal.policy import Deadline, RetryPolicy, retrying

        if budget <= 0:
            raise ValueError(f"timeout must be positive, got {budget}")
        check_token(self._env)
        argv = [*(self._command or modal_command()), *args]
        env = _child_env(self._env)
        setup = time.monotonic() - called
        deadline = Deadline(max(0.0, budget - setup - _MIN_ATTEMPT_S), "timeout")
        attempts = 0
        last: CommandResult | None = None

        def attempt() -> None:
            nonlocal attempts, last
            left = (deadline.remaining() or 0.0) + _MIN_ATTEMPT_S
            if left <= _MIN_ATTEMPT_S:
                return  # the backoff used the rest of the budget: keep the previous result
            attempts += 1
            try:
                last = run_command(
                    argv,
                    timeout=min(attempt_timeout, left),
                    on_line=on_line,
                    env=env,
                    cwd=cwd,
                    kill_grace=self.kill_grace,
                    keep_lines=keep_lines,
                    on_start=self.on_start,
                )
            except OSError as exc:
                raise ConfigError(
                    f"cannot run {redact(argv)[0]}: {exc}", hint="pip install modal"
                ) from exc
            if last.interrupted:
                raise KeyboardInterrupt
            if classify(last) == "transient":
                raise _Transient(last)

        policy = RetryPolicy(
            max_attempts=self.retries + 1,
            initial_delay_s=self.retry_wait_multiplier,
            max_delay_s=self.retry_wait_max,
        )
        retry = retrying(
            policy,
            what=" ".join(["modal", *args[:2]]),
            deadline=deadline,
            cause_of=lambda exc: str(exc) if isinstance(exc, _Transient) else None,
            sleep=time.sleep,
        )
        with contextlib.suppress(_Transient):
            retry(attempt)
        if last is None:  # a budget too small to start even one attempt
            raise CommandTimeout(f"no time left to run {' '.join(redact(argv))}")
        return last, attempts

    def _error(
        self, result: CommandResult, kind: FailureKind, attempts: int, *, subject: str
    ) -> Exception:
        secrets = [self._env.get("MODAL_TOKEN_SECRET", ""), self._env.get("MODAL_TOKEN_ID", "")]
        argv = redact(result.argv, secrets)
        stderr_tail = _scrub(result.stderr_tail, secrets)
        reason = _scrub(error_line(result), secrets)
        if kind == "auth":
            return AuthError(f"Modal refused the token: {reason}", hint=_TOKEN_HINT)
        if kind == "not_found":
            return ModalCLIError(
                reason,
                argv=argv,
                exit_code=result.exit_code,
                stderr_tail=stderr_tail,
                hint="see the deployed apps with `ryla apps`, or deploy with `ryla deploy`",
            )
        if kind == "transient":
            tries = f" after {attempts} attempt{'s' if attempts != 1 else ''}"
            return ModalCLIError(
                f"could not reach Modal{tries} ({subject}): {reason}",
                argv=argv,
                exit_code=result.exit_code,
                stderr_tail=stderr_tail,
                hint="check the network and https://status.modal.com, then run again",
            )
        return ModalCLIError(
            f"modal failed ({subject}): {reason}",
            argv=argv,
            exit_code=result.exit_code,
            stderr_tail=stderr_tail,
        )


# --- parsing --------------------------------------------------------------------------------------


def parse_app_list(text: str) -> list[AppInfo]:
    """Rows of ``modal app list --json``.

    modal 1.6 prints snake_case keys (``app_id``, ``description``, ``state``, ``tasks``,
    ``created_at``, ``stopped_at``); the table's column titles ("App ID"…) are accepted too.
    """
    try:
        rows = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as exc:
        raise ModalCLIError(
            f"`modal app list --json` printed something that is not JSON: {exc}"
        ) from exc
    if not isinstance(rows, list):
        raise ModalCLIError("`modal app list --json` did not print a list")
    out: list[AppInfo] = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        tasks_raw = _field(row, "tasks", "Tasks") or 0
        try:
            tasks = int(tasks_raw)
        except (TypeError, ValueError):
            tasks = 0
        stopped = _field(row, "stopped_at", "Stopped at")
        out.append(
            AppInfo(
                app_id=str(_field(row, "app_id", "App ID") or ""),
                name=str(_field(row, "description", "Description", "name") or ""),
                state=str(_field(row, "state", "State") or ""),
                tasks=tasks,
                created_at=str(_field(row, "created_at", "Created at") or ""),
                stopped_at=str(stopped) if stopped else None,
                raw=row,
            )
        )
    return out


def _field(row: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in row:
            return row[name]
    return None


def parse_deploy_output(lines: Sequence[str]) -> tuple[dict[str, str], str | None]:
    """Web endpoint URLs by function name, and the app page URL, from ``modal deploy`` output.

    modal prints ``Created web function NAME`` and, on the next line, the URL followed by
    `` 🔑`` (proxy auth) or ``(unauthenticated)``; class methods print ``method -> URL``.
    """
    urls: dict[str, str] = {}
    page: str | None = None
    current: str | None = None
    for raw in lines:
        line = raw.strip()
        if m := _APP_PAGE_RE.search(line):
            page = _clean_url(m.group(1))
            continue
        if m := _CREATED_RE.search(line):
            current = m.group(1)
            continue
        if "custom domain" in line.lower():
            continue
        if m := _METHOD_URL_RE.search(line):
            method = m.group(1).lstrip("│├└─ ")
            key = f"{current}.{method}" if current else method
            urls[key] = _clean_url(m.group(2))
            continue
        if (m := _URL_RE.search(line)) and ".modal.run" in m.group(0):
            key = current or f"url{len(urls) + 1}"
            if key in urls:
                key = f"{key}#{len(urls) + 1}"
            urls[key] = _clean_url(m.group(0))
    return urls, page


def pick_endpoint(urls: Mapping[str, str]) -> str | None:
    """The gateway's URL when one function is named like it, else the first URL."""
    for name, url in urls.items():
        if "gateway" in name.lower():
            return url
    return next(iter(urls.values()), None)


def app_name_from_page_url(page: str | None) -> str | None:
    """``https://modal.com/apps/WS/ENV/deployed/NAME`` → ``NAME``."""
    if not page:
        return None
    m = re.search(r"/deployed/([^/?#\s]+)", page)
    return m.group(1) if m else None


def _clean_url(url: str) -> str:
    return url.rstrip(".,;:🔑 ").strip()


# --- small helpers --------------------------------------------------------------------------------


def _opt(flag: str, value: object) -> list[str]:
    return [] if value is None or value == "" else [flag, str(value)]


def _child_env(environ: Mapping[str, str]) -> dict[str, str]:
    env = dict(environ)
    # Plain, unwrapped text: rich wraps at 80 columns when piped, which would split URLs.
    env.setdefault("COLUMNS", "4000")
    env.setdefault("NO_COLOR", "1")
    env.setdefault("PYTHONIOENCODING", "utf-8")
    env["TERM"] = "dumb"
    return env


def _last_json(lines: Sequence[str]) -> dict[str, Any] | None:
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return None


def _tail(result: CommandResult, n: int = 3) -> str:
    return " | ".join(text for _, text in list(result.lines)[-n:])


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


# --- module-level shortcuts -----------------------------------------------------------------------


def logs(app: str, **kwargs: Any) -> LogsResult:
    """:meth:`ModalCLI.logs` with the default settings."""
    return ModalCLI().logs(app, **kwargs)


def apps(**kwargs: Any) -> list[AppInfo]:
    return ModalCLI().apps(**kwargs)


def stop(app: str, **kwargs: Any) -> StopResult:
    return ModalCLI().stop(app, **kwargs)


def deploy(app_file: str | os.PathLike[str] | None = None, **kwargs: Any) -> DeployResult:
    return ModalCLI().deploy(app_file, **kwargs)


__all__ = [
    "PACKAGED_APP_MODULE",
    "AppInfo",
    "DeployResult",
    "LogsResult",
    "ModalCLI",
    "StopResult",
    "apps",
    "check_token",
    "classify",
    "deploy",
    "logs",
    "modal_command",
    "parse_app_list",
    "parse_deploy_output",
    "stop",
]
