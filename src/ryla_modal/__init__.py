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
    # `X as X`: an explicit re-export, so `from ryla_modal import X` passes mypy --strict.
    from ryla_modal.client import (
        AsyncRylaClient as AsyncRylaClient,
    )
    from ryla_modal.client import (
        GenerateResult as GenerateResult,
    )
    from ryla_modal.client import (
        InputUpload as InputUpload,
    )
    from ryla_modal.client import (
        InputURL as InputURL,
    )
    from ryla_modal.client import (
        JobEvent as JobEvent,
    )
    from ryla_modal.client import (
        JobPage as JobPage,
    )
    from ryla_modal.client import (
        RylaClient as RylaClient,
    )
    from ryla_modal.client import (
        SavedOutput as SavedOutput,
    )
    from ryla_modal.deploy.modal_cli import (
        AppInfo as AppInfo,
    )
    from ryla_modal.deploy.modal_cli import (
        DeployResult as DeployResult,
    )
    from ryla_modal.deploy.modal_cli import (
        LogsResult as LogsResult,
    )
    from ryla_modal.deploy.modal_cli import (
        ModalCLI as ModalCLI,
    )
    from ryla_modal.deploy.modal_cli import (
        StopResult as StopResult,
    )
    from ryla_modal.errors import (
        AuthError as AuthError,
    )
    from ryla_modal.errors import (
        ColdStartTimeout as ColdStartTimeout,
    )
    from ryla_modal.errors import (
        ComfyUIUnavailable as ComfyUIUnavailable,
    )
    from ryla_modal.errors import (
        CommandTimeout as CommandTimeout,
    )
    from ryla_modal.errors import (
        ConfigError as ConfigError,
    )
    from ryla_modal.errors import (
        EndpointUnavailable as EndpointUnavailable,
    )
    from ryla_modal.errors import (
        ExecutionError as ExecutionError,
    )
    from ryla_modal.errors import (
        ExecutionTimeout as ExecutionTimeout,
    )
    from ryla_modal.errors import (
        JobCancelled as JobCancelled,
    )
    from ryla_modal.errors import (
        JobIdError as JobIdError,
    )
    from ryla_modal.errors import (
        ModalCLIError as ModalCLIError,
    )
    from ryla_modal.errors import (
        OutputIntegrityError as OutputIntegrityError,
    )
    from ryla_modal.errors import (
        RequestTimeout as RequestTimeout,
    )
    from ryla_modal.errors import (
        RylaError as RylaError,
    )
    from ryla_modal.errors import (
        RylaTimeout as RylaTimeout,
    )
    from ryla_modal.errors import (
        WorkflowError as WorkflowError,
    )
    from ryla_modal.errors import (
        WorkflowFormatError as WorkflowFormatError,
    )
    from ryla_modal.errors import (
        WorkflowValidationError as WorkflowValidationError,
    )
    from ryla_modal.job import (
        Job as Job,
    )
    from ryla_modal.job import (
        JobError as JobError,
    )
    from ryla_modal.job import (
        OutputInfo as OutputInfo,
    )
    from ryla_modal.job import (
        Progress as Progress,
    )
    from ryla_modal.webhooks import (
        WebhookVerificationError as WebhookVerificationError,
    )
    from ryla_modal.webhooks import (
        verify_webhook as verify_webhook,
    )
    from ryla_modal.workflow import (
        Workflow as Workflow,
    )
    from ryla_modal.workflow import (
        load_workflow as load_workflow,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ryla_modal' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
