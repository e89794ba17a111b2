"""ryla-modal: run ComfyUI workflows on Modal GPUs from a terminal or from Python.

The public names are re-exported here lazily, so ``import ryla_modal`` (and ``ryla --help``) stay
fast: nothing heavy (modal, fastapi, uvicorn, websockets) is imported until it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "AuthError": "ryla_modal.errors",
    "ColdStartTimeout": "ryla_modal.errors",
    "ComfyUIUnavailable": "ryla_modal.errors",
    "CommandTimeout": "ryla_modal.errors",
    "ConfigError": "ryla_modal.errors",
    "EndpointUnavailable": "ryla_modal.errors",
    "ExecutionError": "ryla_modal.errors",
    "ExecutionTimeout": "ryla_modal.errors",
    "JobCancelled": "ryla_modal.errors",
    "JobIdError": "ryla_modal.errors",
    "ModalCLIError": "ryla_modal.errors",
    "OutputIntegrityError": "ryla_modal.errors",
    "RylaError": "ryla_modal.errors",
    "RequestTimeout": "ryla_modal.errors",
    "RylaTimeout": "ryla_modal.errors",
    "WorkflowError": "ryla_modal.errors",
    "WorkflowFormatError": "ryla_modal.errors",
    "WorkflowValidationError": "ryla_modal.errors",
    "AsyncRylaClient": "ryla_modal.client",
    "GenerateResult": "ryla_modal.client",
    "InputURL": "ryla_modal.client",
    "InputUpload": "ryla_modal.client",
    "JobEvent": "ryla_modal.client",
    "JobPage": "ryla_modal.client",
    "RylaClient": "ryla_modal.client",
    "SavedOutput": "ryla_modal.client",
    "Job": "ryla_modal.job",
    "JobError": "ryla_modal.job",
    "OutputInfo": "ryla_modal.job",
    "Progress": "ryla_modal.job",
    "Workflow": "ryla_modal.workflow",
    "load_workflow": "ryla_modal.workflow",
    "AppInfo": "ryla_modal.deploy.modal_cli",
    "DeployResult": "ryla_modal.deploy.modal_cli",
    "LogsResult": "ryla_modal.deploy.modal_cli",
    "ModalCLI": "ryla_modal.deploy.modal_cli",
    "StopResult": "ryla_modal.deploy.modal_cli",
    "WebhookVerificationError": "ryla_modal.webhooks",
    "verify_webhook": "ryla_modal.webhooks",
}

__all__ = sorted([*_EXPORTS, "__version__"])

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from ryla_modal.client import (  # noqa: F401
        AsyncRylaClient,
        GenerateResult,
        InputUpload,
        InputURL,
        JobEvent,
        JobPage,
        RylaClient,
        SavedOutput,
    )
    from ryla_modal.deploy.modal_cli import (  # noqa: F401
        AppInfo,
        DeployResult,
        LogsResult,
        ModalCLI,
        StopResult,
    )
    from ryla_modal.errors import (  # noqa: F401
        AuthError,
        ColdStartTimeout,
        ComfyUIUnavailable,
        CommandTimeout,
        ConfigError,
        EndpointUnavailable,
        ExecutionError,
        ExecutionTimeout,
        JobCancelled,
        JobIdError,
        ModalCLIError,
        OutputIntegrityError,
        RequestTimeout,
        RylaError,
        RylaTimeout,
        WorkflowError,
        WorkflowFormatError,
        WorkflowValidationError,
    )
    from ryla_modal.job import Job, JobError, OutputInfo, Progress  # noqa: F401
    from ryla_modal.webhooks import WebhookVerificationError, verify_webhook  # noqa: F401
    from ryla_modal.workflow import Workflow, load_workflow  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ryla_modal' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
