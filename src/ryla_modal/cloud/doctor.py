"""`ryla doctor`'s checks of a set-up: each one a line with its fix, each under its own deadline.

The checks run at once, each in a daemon thread that is abandoned (and reported as timed out)
when its deadline passes, so the whole run ends within ``total_s`` however Modal or the endpoint
behave.  The modal calls inside them run in child processes under the same deadlines
(``ModalCLI``), so an abandoned thread leaves no process behind for long.

    report = run_checks(DoctorInputs(environ=os.environ, cwd=Path.cwd()))
    ok = all(check.ok for check in report)  # one Check per line, in a fixed order
"""

from __future__ import annotations

import importlib.metadata
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ryla_modal.errors import AuthError, ConfigError, RylaError

T = TypeVar("T")

#: check name -> its deadline in seconds; all of them together stay under TOTAL_S.
DEADLINES_S: dict[str, float] = {
    "modal": 2.0,
    "token": 2.0,
    "settings": 2.0,
    "secrets and volumes": 20.0,
    "app deployed": 20.0,
    "endpoint": 10.0,
    "proxy auth": 10.0,
    "logs": 20.0,
    "workflow": 15.0,
}
TOTAL_S = 30.0
_TOKEN_FIX = "run `modal token new`, or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"  # noqa: S105


@dataclass
class Check:
    """One line of the report: ``ok``, what was found, and what to do when it is not ok."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    duration_s: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Failed(Exception):
    def __init__(self, detail: str, fix: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = fix


def within(seconds: float, fn: Callable[[], T]) -> T:
    """``fn()`` in a daemon thread; TimeoutError when it has not returned after ``seconds``."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="ryla-doctor-check", daemon=True).start()
    if not done.wait(seconds):
        raise TimeoutError(f"no answer within {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


@dataclass
class DoctorInputs:
    """What the checks look at; ``environ``/``cwd`` are where settings are read from."""

    environ: Mapping[str, str]
    cwd: Path
    workflow_path: Path | None = None
    environment: str | None = None
    deadlines: Mapping[str, float] = field(default_factory=lambda: dict(DEADLINES_S))


def run_checks(inputs: DoctorInputs, *, total_s: float = TOTAL_S) -> list[Check]:
    """Every check, in report order, all finished or abandoned within ``total_s``."""
    started = time.monotonic()
    env = dict(inputs.environ)
    state: dict[str, Any] = {}

    # Local and instant first: later checks need their answers.
    results: dict[str, Check] = {}
    for name, fn in (("modal", _modal), ("token", _token), ("settings", _settings)):
        results[name] = _timed(name, inputs, lambda fn=fn: fn(inputs, env, state))  # type: ignore[misc]

    remote: list[tuple[str, Callable[[], Check]]] = [
        ("secrets and volumes", lambda: _secrets_and_volumes(inputs, env, state)),
        ("app deployed", lambda: _app_deployed(inputs, env, state)),
        ("endpoint", lambda: _endpoint(inputs, env, state)),
        ("logs", lambda: _logs(inputs, env, state)),
    ]
    if inputs.workflow_path is not None:
        remote.append(("workflow", lambda: _workflow(inputs, env, state)))
    threads: dict[str, Check] = {}
    lock = threading.Lock()

    def runner(name: str, fn: Callable[[], Check]) -> None:
        check = _timed(name, inputs, fn, started=started, total_s=total_s)
        with lock:
            threads[name] = check

    workers = [
        threading.Thread(target=runner, args=(n, f), name=f"doctor-{n}", daemon=True)
        for n, f in remote
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(max(0.0, total_s - (time.monotonic() - started)) + 0.5)
    out = list(results.values())
    for name, _ in remote:
        with lock:
            check = threads.get(name)
        if check is None:
            check = Check(name, False, f"no answer within the {total_s:g} s of the whole run")
        out.append(check)
        if name == "endpoint":
            out.append(state.get("proxy_auth") or Check("proxy auth", False, "not checked"))
    return out


def _timed(
    name: str,
    inputs: DoctorInputs,
    fn: Callable[[], Check],
    *,
    started: float | None = None,
    total_s: float = TOTAL_S,
) -> Check:
    t0 = time.monotonic()
    budget = float(inputs.deadlines.get(name, 10.0))
    if started is not None:
        budget = min(budget, max(0.1, total_s - (t0 - started)))
    try:
        check = within(budget, fn)
    except TimeoutError:
        check = Check(name, False, f"no answer within {budget:g} s", _timeout_fix(name))
    except _Failed as exc:
        check = Check(name, False, exc.detail, exc.fix)
    except RylaError as exc:
        check = Check(name, False, exc.message.partition("\n")[0], exc.hint or "")
    except Exception as exc:
        check = Check(name, False, f"{type(exc).__name__}: {exc}")
    check.duration_s = round(time.monotonic() - t0, 3)
    return check


def _timeout_fix(name: str) -> str:
    if name in ("secrets and volumes", "app deployed", "logs"):
        return "check the network and https://status.modal.com, then run again"
    return "check the endpoint URL and your network"


# --- the checks ---------------------------------------------------------------------------------


def _modal(inputs: DoctorInputs, env: dict[str, str], state: dict[str, Any]) -> Check:
    try:
        version = importlib.metadata.version("modal")
    except importlib.metadata.PackageNotFoundError:
        raise _Failed(
            "the modal package is not installed", "pip install 'modal>=1.6,<1.7'"
        ) from None
    major_minor = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if major_minor != (1, 6):
        raise _Failed(
            f"modal {version} is installed; ryla is tested with 1.6",
            "pip install 'modal>=1.6,<1.7'",
        )
    return Check("modal", True, f"modal {version}")


def _token(inputs: DoctorInputs, env: dict[str, str], state: dict[str, Any]) -> Check:
    from ryla_modal.deploy.modal_cli import check_token

    try:
        check_token(env)
    except ConfigError as exc:
        raise _Failed(exc.message, _TOKEN_FIX) from None
    state["token"] = True
    where = "MODAL_TOKEN_ID" if env.get("MODAL_TOKEN_ID") else "the Modal config file"
    return Check("token", True, f"a Modal token is configured ({where})")


def _settings(inputs: DoctorInputs, env: dict[str, str], state: dict[str, Any]) -> Check:
    from ryla_modal.cloud.settings import PROJECT_FILE, AppSettings

    project = inputs.cwd / PROJECT_FILE
    settings = AppSettings.load(env, project=project)
    state["settings"] = settings
    source = str(project) if project.is_file() else "defaults and RYLA_* (no ryla.toml here)"
    return Check(
        "settings",
        True,
        f"app {settings.app_name}, GPU {settings.gpu}, from {source}",
        data={"app": settings.app_name, "gpu": settings.gpu},
    )


def _needs(state: dict[str, Any], *keys: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise _Failed(f"not checked: the {', '.join(missing)} check failed")


def _secrets_and_volumes(inputs: DoctorInputs, env: dict[str, str], state: dict[str, Any]) -> Check:
    from ryla_modal.deploy.modal_cli import ModalCLI

    _needs(state, "token", "settings")
    settings = state["settings"]
    volumes = [settings.models_volume, settings.outputs_volume]
    budget = float(inputs.deadlines.get("secrets and volumes", 20.0))
    found = ModalCLI(env=env).call(
        "lookup",
        {"secrets": list(settings.secrets), "volumes": volumes, "env": inputs.environment},
        timeout=max(1.0, budget - 0.5),
        cwd=inputs.cwd,
    )
    missing_secrets = [n for n, ok in found.get("secrets", {}).items() if not ok]
    missing_volumes = [n for n, ok in found.get("volumes", {}).items() if not ok]
    data = {"missing_secrets": missing_secrets, "missing_volumes": missing_volumes}
    if missing_secrets:
        first = missing_secrets[0]
        raise _Failed(
            f"Secrets not found: {', '.join(missing_secrets)}",
            f"modal secret create {first} HF_TOKEN=hf_...  (or remove it from [deploy] secrets)",
        )
    if missing_volumes:
        raise _Failed(
            f"Volumes not found: {', '.join(missing_volumes)}",
            "run `ryla deploy` (it creates them)",
        )
    named = [*settings.secrets, *volumes]
    return Check("secrets and volumes", True, f"found {', '.join(named)}", data=data)


def _app_deployed(inputs: DoctorInputs, env: dict[str, str], state: dict[str, Any]) -> Check:
    from ryla_modal.deploy.modal_cli import ModalCLI
    from ryla_modal.errors import ModalCLIError

    _needs(state, "token", "settings")
    app = state["settings"].app_name
    budget = float(inputs.deadlines.get("app deployed", 20.0))
    try:
        rows = ModalCLI(env=env, retries=0).history(
            app, environment=inputs.environment, timeout=max(1.0, budget - 0.5)
        )
    except ModalCLIError as exc:
        raise _Failed(f"{app} is not deployed ({exc.message})", "run `ryla deploy`") from None
    if not rows:
        raise _Failed(f"{app} has no deployment", "run `ryla deploy`")
    version = rows[0].get("version")
    state["app_deployed"] = True
    return Check("app deployed", True, f"{app} v{version}", data={"version": version})


def _endpoint(inputs: DoctorInputs, env: dict[str, str], state: dict[str, Any]) -> Check:
    """One GET /health with the configured credentials: answers (any HTTP) and accepted (200)."""
    from ryla_modal.client import RylaClient
    from ryla_modal.config import resolve_client_settings
    from ryla_modal.policy import RetryPolicy

    try:
        settings = resolve_client_settings(environ=env, cwd=inputs.cwd)
    except ConfigError as exc:
        state["proxy_auth"] = Check("proxy auth", False, "not checked: no endpoint")
        raise _Failed(exc.message, exc.hint or "run `ryla deploy`") from None
    url = settings.endpoint
    has_creds = bool(settings.modal_key or settings.token)
    t0 = time.monotonic()
    client = RylaClient(
        url,
        token=settings.token.get_secret_value() if settings.token else None,
        modal_key=settings.modal_key.get_secret_value() if settings.modal_key else None,
        modal_secret=settings.modal_secret.get_secret_value() if settings.modal_secret else None,
        retry_policy=RetryPolicy(max_attempts=1),
    )
    try:
        health = client.health()
    except AuthError as exc:
        fix = (
            "your RYLA_MODAL_KEY / RYLA_MODAL_SECRET (or RYLA_TOKEN) were refused: create a proxy"
            " auth token on modal.com (Settings > Proxy Auth Tokens) and set both"
            if has_creds
            else "set RYLA_MODAL_KEY and RYLA_MODAL_SECRET (modal.com: Settings > Proxy Auth"
            " Tokens), or RYLA_TOKEN for `ryla serve`"
        )
        state["proxy_auth"] = Check(
            "proxy auth", False, f"{url} refused the credentials: {exc.message}", fix
        )
        return Check("endpoint", True, f"{url} answers (refused without valid credentials)")
    except RylaError as exc:
        state["proxy_auth"] = Check("proxy auth", False, "not checked: the endpoint did not answer")
        raise _Failed(
            f"{url} did not answer /health: {exc.message.partition(chr(10))[0]}",
            "run `ryla deploy` (it records the endpoint), or set RYLA_ENDPOINT",
        ) from None
    finally:
        client.close()
    took = time.monotonic() - t0
    version = health.get("version", "?")
    state["endpoint_ok"] = True
    state["proxy_auth"] = Check(
        "proxy auth",
        True,
        "credentials accepted" if has_creds else "no credentials needed by this endpoint",
    )
    return Check(
        "endpoint",
        True,
        f"{url} /health ok in {took:.2f} s (ryla {version}, {health.get('executor', '?')})",
        data={"health": health},
    )


def _logs(inputs: DoctorInputs, env: dict[str, str], state: dict[str, Any]) -> Check:
    from ryla_modal.deploy.modal_cli import ModalCLI

    _needs(state, "token", "settings")
    app = state["settings"].app_name
    budget = float(inputs.deadlines.get("logs", 20.0))
    result = ModalCLI(env=env, retries=0).logs(
        app, timeout=max(1.0, budget - 0.5), tail=5, environment=inputs.environment
    )
    if result.timed_out:
        raise _Failed(
            f"`modal app logs {app}` gave no answer within {budget:g} s",
            "check the network and https://status.modal.com; `ryla logs` has a --timeout",
        )
    return Check("logs", True, f"{len(result.lines)} recent line(s) in {result.duration_s:.1f} s")


def _workflow(inputs: DoctorInputs, env: dict[str, str], state: dict[str, Any]) -> Check:
    from ryla_modal.client import RylaClient
    from ryla_modal.config import resolve_client_settings
    from ryla_modal.policy import RetryPolicy
    from ryla_modal.workflow import load_workflow

    assert inputs.workflow_path is not None
    workflow = load_workflow(inputs.workflow_path)
    settings = resolve_client_settings(environ=env, cwd=inputs.cwd)
    client = RylaClient(
        settings.endpoint,
        token=settings.token.get_secret_value() if settings.token else None,
        modal_key=settings.modal_key.get_secret_value() if settings.modal_key else None,
        modal_secret=settings.modal_secret.get_secret_value() if settings.modal_secret else None,
        retry_policy=RetryPolicy(max_attempts=1),
    )
    try:
        verdict = client.validate(workflow)
    finally:
        client.close()
    name = inputs.workflow_path.name
    if not verdict.get("checked", True):
        raise _Failed(f"{name}: the deployment could not check it (no object_info)")
    if verdict.get("ok"):
        return Check("workflow", True, f"{name}: every node and model is there")
    problems = _summarize(verdict.get("node_errors") or {})
    raise _Failed(
        f"{name}: {problems or json.dumps(verdict.get('error'))[:200]}",
        "add the missing custom nodes to [deploy] custom_nodes and redeploy; put missing"
        " models on the volume with `ryla models add`",
    )


def _summarize(node_errors: Mapping[str, Any]) -> str:
    parts = []
    for node_id, entry in node_errors.items():
        for error in entry.get("errors", []) if isinstance(entry, Mapping) else []:
            details = error.get("details") or error.get("message")
            parts.append(f"node {node_id} ({entry.get('class_type', '?')}): {details}")
    return "; ".join(parts[:5]) + (f"; and {len(parts) - 5} more" if len(parts) > 5 else "")


__all__ = ["DEADLINES_S", "TOTAL_S", "Check", "DoctorInputs", "run_checks", "within"]
