"""One exception tree for the whole package.

Every error carries the evidence a user needs to act (the job id, ComfyUI's per-node errors, the
modal command and its stderr tail) and the CLI maps each kind to one exit code, so scripts can
branch on ``$?`` without parsing text.  Secrets never go into an error message.
"""

from __future__ import annotations

from typing import Any

# Exit codes the CLI uses; kept next to the errors that choose them.
EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_WORKFLOW = 3
EXIT_EXECUTION = 4
EXIT_AUTH_CONFIG = 5
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130


class RylaError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code: int = EXIT_OTHER
    #: One short sentence telling the user what to do next (shown by the CLI).
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        # A Python user sees str() in a traceback: the hint belongs there too.  The CLI prints
        # ``message`` and ``hint`` itself (cli/_errors.py).
        return f"{self.message}\nhint: {self.hint}" if self.hint else self.message


class ConfigError(RylaError):
    """Settings are missing or contradictory (no endpoint, bad ryla.toml, no modal token)."""

    exit_code = EXIT_AUTH_CONFIG


class AuthError(RylaError):
    """The server refused our credentials (HTTP 401/403, modal token rejected)."""

    exit_code = EXIT_AUTH_CONFIG


class EndpointUnavailable(RylaError):
    """The server could not be reached or kept failing after every retry."""

    exit_code = EXIT_OTHER


class WorkflowError(RylaError):
    """The workflow is wrong; running it again unchanged will not help."""

    exit_code = EXIT_WORKFLOW


class WorkflowFormatError(WorkflowError):
    """The file is not a usable API-format workflow (bad JSON, UI format, broken links...).

    ``node_id`` and ``field`` name the place when there is one.
    """

    def __init__(
        self,
        message: str,
        *,
        node_id: str | None = None,
        field: str | None = None,
        source: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = []
        if source:
            where.append(source)
        if node_id is not None:
            where.append(f"node {node_id!r}" + (f" input {field!r}" if field else ""))
        elif field:
            where.append(field)
        full = f"{': '.join(where)}: {message}" if where else message
        super().__init__(full, hint=hint)
        self.node_id = node_id
        self.field = field
        self.source = source


class WorkflowValidationError(WorkflowError):
    """ComfyUI (or our object_info check) rejected the graph before running it.

    ``node_errors`` is ComfyUI's own shape: ``{node_id: {"errors": [...], "class_type": ...}}``.
    """

    def __init__(
        self,
        message: str,
        *,
        error: dict[str, Any] | None = None,
        node_errors: dict[str, Any] | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.error = error or {}
        self.node_errors = node_errors or {}

    def summary_lines(self) -> list[str]:
        """One line per node error, for people."""
        lines: list[str] = []
        for node_id, entry in sorted(self.node_errors.items(), key=lambda kv: str(kv[0])):
            class_type = entry.get("class_type", "?") if isinstance(entry, dict) else "?"
            errors = entry.get("errors", []) if isinstance(entry, dict) else []
            for err in errors:
                msg = err.get("message", "") if isinstance(err, dict) else str(err)
                details = err.get("details", "") if isinstance(err, dict) else ""
                line = f"node {node_id} ({class_type}): {msg}"
                if details:
                    line += f": {details}"
                lines.append(line)
        return lines


class InputFetchError(WorkflowError):
    """An input given by URL was refused, could not be fetched, was too large or did not match
    its sha256; the job stopped before ComfyUI ran anything.

    ``reason`` is the job error's type: ``input_url_refused``, ``input_fetch_failed``,
    ``input_too_large`` or ``input_sha256_mismatch``.  Messages show the URL without its query
    string (presigned URLs carry their secret there).
    """

    def __init__(self, message: str, *, reason: str, name: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason
        self.name = name


class ExecutionError(RylaError):
    """A node raised while ComfyUI ran the graph."""

    exit_code = EXIT_EXECUTION

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        node_id: str | None = None,
        node_type: str | None = None,
        exception_type: str | None = None,
        traceback_tail: list[str] | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.job_id = job_id
        self.node_id = node_id
        self.node_type = node_type
        self.exception_type = exception_type
        self.traceback_tail = traceback_tail or []


class JobIdError(RylaError, ValueError):
    """A job id outside the gateway's charset: refused before it reaches a URL."""

    exit_code = EXIT_USAGE


class OutputIntegrityError(RylaError):
    """A downloaded output did not match the server's checksum or size; nothing was saved."""


class ComfyUIUnavailable(EndpointUnavailable):
    """The ComfyUI process failed to start, died, or stopped answering.

    ``log_tail`` holds the last lines ComfyUI printed, which usually say why.
    """

    def __init__(self, message: str, *, log_tail: str = "", hint: str | None = None) -> None:
        if log_tail:
            message = f"{message}\n--- last lines of the ComfyUI log ---\n{log_tail}"
        super().__init__(message, hint=hint)
        self.log_tail = log_tail


class ComfyUINotReached(ComfyUIUnavailable):
    """ComfyUI did not answer before the job's prompt was sent to it.

    Nothing was submitted, so the job can wait for ComfyUI and run after all without running
    twice: the gateway's lifecycle does that instead of failing the job.
    """

    @classmethod
    def of(cls, exc: ComfyUIUnavailable) -> ComfyUINotReached:
        """``exc`` (already carrying its log tail, if any) as one of these."""
        if isinstance(exc, cls):
            return exc
        reached = cls(exc.message, hint=exc.hint)
        reached.log_tail = exc.log_tail
        return reached


class JobCancelled(RylaError):
    """The job was interrupted or cancelled before it finished."""

    exit_code = EXIT_EXECUTION

    def __init__(self, message: str, *, job_id: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id


class RylaTimeout(RylaError, TimeoutError):
    """A deadline passed. Also a built-in ``TimeoutError`` so ``except TimeoutError`` works.

    ``phase`` names what ran out of time ("submit", "cold start", "execution", "download",
    "health", ...) and ``job_id`` the job, when one is known: the job keeps running, and
    ``ryla jobs wait JOB_ID`` picks it up again.
    """

    exit_code = EXIT_TIMEOUT
    #: the phase a subclass stands for, unless the raiser names another
    default_phase: str | None = None

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        phase: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.job_id = job_id
        self.phase = phase or self.default_phase


class RequestTimeout(RylaTimeout):
    """One call to the gateway (its retries included) ran past its deadline."""


class ColdStartTimeout(RylaTimeout):
    """No GPU container picked the job up (or ComfyUI never became ready) in time."""

    default_phase = "cold start"


class ExecutionTimeout(RylaTimeout):
    """The job started but did not finish within the execution budget."""

    default_phase = "execution"


class CommandTimeout(RylaTimeout):
    """A subprocess (the modal CLI) was stopped at its deadline."""


class ModalCLIError(RylaError):
    """The ``modal`` command failed; carries argv (secret-free), exit code and stderr tail."""

    def __init__(
        self,
        message: str,
        *,
        argv: list[str] | None = None,
        exit_code: int | None = None,
        stderr_tail: str = "",
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.argv = list(argv or [])
        self.returncode = exit_code
        self.stderr_tail = stderr_tail
