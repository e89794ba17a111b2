"""`ryla deploy` end to end: check the settings, deploy, fetch [deploy] models, check workflows.

Each step runs only when the one before it succeeded, and each remote step is a child process
under what is left of the one deadline (``ModalCLI``).  The workflow check is a call of the
app's ``check_workflows`` function, not a request to the gateway: it runs in the image just
built (its baked object_info, custom nodes included) with the models volume mounted, and needs
no proxy-auth credentials, which a first deploy may not have yet.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ryla_modal import defaults
from ryla_modal.cloud.settings import PROJECT_FILE, AppSettings
from ryla_modal.deploy.modal_cli import DeployResult, ModalCLI
from ryla_modal.deploy.proc import LineCallback
from ryla_modal.errors import CommandTimeout, WorkflowValidationError
from ryla_modal.workflow import load_workflow

_STEP_MIN_S = 1.0  # a remote step with less time left than this is not started


@dataclass
class DeployOutcome:
    """What ``deploy_app`` did: the deploy itself, the models fetched, the workflow verdicts."""

    result: DeployResult
    settings: AppSettings
    models: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    recorded: Any = None  # what ``on_deployed`` returned (the CLI: the user config's path)


def deploy_app(
    app_file: str | os.PathLike[str] | None = None,
    *,
    check: Sequence[str | os.PathLike[str]] = (),
    name: str | None = None,
    environment: str | None = None,
    timeout: float = defaults.MODAL_DEPLOY_TIMEOUT_S,
    on_line: LineCallback | None = None,
    cwd: str | os.PathLike[str] | None = None,
    cli: ModalCLI | None = None,
    on_deployed: Callable[[DeployResult], Any] | None = None,
) -> DeployOutcome:
    """Deploy (the packaged app when ``app_file`` is None) and run the post-deploy steps.

    Raises ``ConfigError`` for a bad ``ryla.toml``/``RYLA_*`` value or workflow file before
    modal is called, and ``WorkflowValidationError`` naming each missing node or model.
    ``on_deployed`` runs as soon as the app is live, before the later steps can fail, so the
    endpoint is recorded even when a model download or a check fails.
    """
    deadline = time.monotonic() + timeout
    folder = Path(cwd) if cwd is not None else Path.cwd()
    environ = cli.environ if cli is not None else os.environ
    settings = AppSettings.load(environ, project=folder / PROJECT_FILE)
    workflows = {Path(p).name: load_workflow(Path(p) if cwd is None else folder / p) for p in check}
    cli = cli or ModalCLI()
    result = cli.deploy(
        app_file,
        name=name,
        environment=environment,
        timeout=timeout,
        on_line=on_line,
        cwd=folder,
    )
    outcome = DeployOutcome(result=result, settings=settings)
    if on_deployed is not None:
        outcome.recorded = on_deployed(result)
    app = name or result.app or settings.app_name
    if settings.models:
        outcome.models = cli.call(
            "download",
            {"app": app, "items": list(settings.models), "on_clash": "skip", "env": environment},
            timeout=_left(deadline, "downloading the models of ryla.toml"),
            cwd=folder,
        )
    if workflows:
        outcome.checks = cli.call(
            "check",
            {"app": app, "workflows": workflows, "env": environment},
            timeout=_left(deadline, "checking the workflows"),
            cwd=folder,
        )
        failed = [c for c in outcome.checks if not c.get("ok")]
        if failed:
            raise WorkflowValidationError(
                "deployed, but " + "; ".join(_failure_line(c) for c in failed),
                hint="add the missing custom nodes to [deploy] custom_nodes, or the missing"
                " models with `ryla models add`, then deploy again",
            )
    return outcome


def _failure_line(check: dict[str, Any]) -> str:
    parts = []
    if check.get("missing_nodes"):
        parts.append(f"missing nodes {', '.join(check['missing_nodes'])}")
    if check.get("missing_models"):
        parts.append(f"missing models {', '.join(check['missing_models'])}")
    what = " and ".join(parts) or (check.get("message") or "invalid").partition("\n")[0]
    return f"{check.get('name')}: {what}"


def _left(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left < _STEP_MIN_S:
        raise CommandTimeout(f"no time left for {what}", hint="run again with a longer --timeout")
    return left


__all__ = ["DeployOutcome", "deploy_app"]
