"""Executors run the jobs the gateway accepted; they report by writing to the job store.

``Executor`` is the small protocol the gateway needs (``LocalExecutor`` here, ``ModalExecutor``
for the GPU app).  ``LocalExecutor`` runs each job with ``ComfyRunner`` in a bounded thread pool
against one ComfyUI.  Its promises: every job it accepted ends in a final status with a reason
(a crashed worker is ``failed``, never ``running`` forever); cancel interrupts the job in ComfyUI
by its prompt_id; jobs left behind by a previous process are failed with a reason the client can
act on.

    executor = LocalExecutor(store, comfy.base_url, process=comfy)
    executor.recover()
    executor.start(record, workflow, inputs)
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ryla_modal import defaults
from ryla_modal.comfy.process import ComfyProcess
from ryla_modal.comfy.runner import ComfyRunner, InputFile, RunResult
from ryla_modal.comfy.runner import Progress as RunnerProgress
from ryla_modal.errors import (
    ComfyUIUnavailable,
    ExecutionError,
    JobCancelled,
    OutputIntegrityError,
    RylaError,
    RylaTimeout,
    WorkflowFormatError,
    WorkflowValidationError,
)
from ryla_modal.gateway.schemas import (
    ACTIVE_STATUSES,
    ERR_CANCELLED,
    ERR_COMFYUI_UNAVAILABLE,
    ERR_EXECUTION,
    ERR_INVALID_INPUT,
    ERR_SERVER_RESTARTED,
    ERR_SERVER_STOPPED,
    ERR_TIMEOUT,
    ERR_WORKER_DIED,
    JobError,
    JobRecord,
    OutputInfo,
    Progress,
)
from ryla_modal.gateway.store import JobStore

log = logging.getLogger("ryla_modal.gateway")

RESTARTED_RUNNING = (
    "the server restarted while this job was running; submit it again with a new job_id"
)
RESTARTED_QUEUED = "the server restarted before this job started; submit it again with a new job_id"
STOPPED_RUNNING = "the server stopped while this job was running; submit it again with a new job_id"
STOPPED_QUEUED = "the server stopped before this job started; submit it again with a new job_id"
WORKER_DIED = (
    "the worker running this job stopped without a result; submit it again with a new job_id"
)
_MAX_MESSAGE = 4000  # characters of an error message kept in a job record


@runtime_checkable
class Executor(Protocol):
    """What the gateway asks of an executor.  It is bound to its job store when built."""

    #: "local" or "modal", shown by GET /health.
    kind: str

    def start(
        self, job: JobRecord, workflow: Mapping[str, Any], inputs: Sequence[InputFile]
    ) -> None:
        """Begin running a job the store already holds as ``queued``; never blocks on it."""

    def cancel(self, job_id: str) -> None:
        """Stop a job; the store says ``cancelled`` once it is stopped."""

    def warm(self, job: JobRecord) -> None:
        """Make a ComfyUI ready to take jobs (on Modal: start a GPU container); the warm-up
        ``job`` the store holds as ``queued`` ends ``succeeded`` once it is.  Never blocks."""

    def check(self, record: JobRecord) -> JobRecord:
        """Look behind an unfinished record (is its worker alive?); returns the current record."""

    def recover(self) -> None:
        """At start-up: settle the jobs a previous process left queued or running."""

    def close(self) -> None:
        """Stop taking jobs; settle the ones in flight (each ends in a final status)."""


def job_error(exc: BaseException) -> tuple[str, JobError]:
    """The final status and ``error`` for what a job raised."""
    message = _short(str(exc) or type(exc).__name__)
    if isinstance(exc, JobCancelled):
        return "cancelled", JobError(type=ERR_CANCELLED, message=message)
    if isinstance(exc, WorkflowValidationError):
        kind = exc.error.get("type") if isinstance(exc.error, dict) else None
        return "failed", JobError(
            type=str(kind or "prompt_outputs_failed_validation"),
            message=message,
            node_errors=exc.node_errors or None,
        )
    if isinstance(exc, ExecutionError):
        return "failed", JobError(
            type=ERR_EXECUTION,
            message=message,
            node_id=exc.node_id,
            node_type=exc.node_type,
            exception_type=exc.exception_type,
            traceback_tail=list(exc.traceback_tail) or None,
        )
    if isinstance(exc, RylaTimeout):
        return "failed", JobError(type=ERR_TIMEOUT, message=message)
    if isinstance(exc, ComfyUIUnavailable):
        return "failed", JobError(type=ERR_COMFYUI_UNAVAILABLE, message=message)
    if isinstance(exc, WorkflowFormatError):
        return "failed", JobError(type=ERR_INVALID_INPUT, message=message)
    if isinstance(exc, OutputIntegrityError):
        return "failed", JobError(type="output_integrity", message=message)
    if isinstance(exc, RylaError):
        return "failed", JobError(type=type(exc).__name__, message=message)
    # A bug, not the job's fault: say so without internals (the log has the traceback).
    return "failed", JobError(
        type=ERR_WORKER_DIED,
        message=f"{WORKER_DIED} (internal error: {type(exc).__name__})",
    )


def _short(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def log_event(record: JobRecord) -> None:
    """One log line per job event, always with the job id."""
    if record.status == "succeeded":
        total = record.timings.get("total")
        took = f" in {total:.1f} s" if total is not None else ""
        log.info("job %s succeeded%s (%d outputs)", record.job_id, took, len(record.outputs))
    elif record.status in ("failed", "cancelled") and record.error is not None:
        first = record.error.message.splitlines()[0] if record.error.message else ""
        log.info("job %s %s: %s: %s", record.job_id, record.status, record.error.type, first)
    else:
        log.info("job %s %s", record.job_id, record.status)


def store_outputs(store: JobStore, job_id: str, result: RunResult) -> list[OutputInfo]:
    """Hand a finished run's files to the store; the records the job will list."""
    outputs: list[OutputInfo] = []
    for out in result.outputs:
        src: Path | bytes | None = out.path if out.path is not None else out.data
        if src is None:
            raise OutputIntegrityError(f"output {out.index} of job {job_id} has no content")
        store.put_output(job_id, out.index, src)
        outputs.append(
            OutputInfo(
                index=out.index,
                node_id=out.node_id,
                filename=out.filename,
                kind=out.kind,
                mime=out.mime,
                size=out.size,
                sha256=out.sha256,
            )
        )
    return outputs


def finish(
    store: JobStore, job_id: str, status: str, error: JobError | None, **fields: Any
) -> None:
    """Write a final status once (a record already final stays as it is) and log it."""
    before = store.get(job_id)
    record = store.update(job_id, status=status, error=error, **fields)
    if record is not None and before is not None and record.revision != before.revision:
        log_event(record)


@dataclass
class _Active:
    future: concurrent.futures.Future[None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    created_at: float = 0.0


class LocalExecutor:
    """Jobs on one ComfyUI, ``workers`` at a time, through ``ComfyRunner``.

    ComfyUI runs one prompt at a time; the pool only bounds how many jobs are handed to it (the
    rest wait here as ``queued``).  ``process`` (when we launched ComfyUI) lets the runner tell
    a dead ComfyUI from a slow one.  Outputs pass through ``work_dir`` into the store.
    """

    kind = "local"

    def __init__(
        self,
        store: JobStore,
        comfy_url: str,
        *,
        process: ComfyProcess | None = None,
        workers: int = defaults.SERVE_WORKERS,
        work_dir: Path | None = None,
        default_timeout_s: float = defaults.EXECUTION_TIMEOUT_S,
        progress_interval_s: float = defaults.GATEWAY_PROGRESS_MIN_INTERVAL_S,
        shutdown_grace_s: float = defaults.SERVE_SHUTDOWN_GRACE_S,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.store = store
        self._own_work_dir = work_dir is None
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="ryla-serve-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.runner = ComfyRunner(
            comfy_url,
            work_dir=self.work_dir,
            process=process,
            default_timeout_s=default_timeout_s,
        )
        self.progress_interval_s = progress_interval_s
        self.shutdown_grace_s = shutdown_grace_s
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="ryla-job"
        )
        self._lock = threading.Lock()
        self._active: dict[str, _Active] = {}
        self._closing = False

    # --- the protocol ----------------------------------------------------------------------

    def start(
        self, job: JobRecord, workflow: Mapping[str, Any], inputs: Sequence[InputFile]
    ) -> None:
        with self._lock:
            if self._closing:
                raise RuntimeError("the executor is shutting down")
            if job.job_id in self._active:
                return  # already ours: idempotent
            active = _Active(created_at=job.created_at)
            self._active[job.job_id] = active
            active.future = self._pool.submit(
                self._work, job.job_id, dict(workflow), list(inputs), job.timeout_s, active
            )
        log_event(job)

    def warm(self, job: JobRecord) -> None:
        # The local ComfyUI is started (and waited for) by `ryla serve` itself: check it answers.
        started = time.monotonic()
        try:
            self.runner.api.system_stats()
        except Exception as exc:
            status, error = job_error(exc)
            finish(self.store, job.job_id, status, error)
            return
        finish(
            self.store,
            job.job_id,
            "succeeded",
            None,
            phase="done",
            timings={"starting_comfyui": time.monotonic() - started},
        )

    def cancel(self, job_id: str) -> None:
        with self._lock:
            active = self._active.get(job_id)
        if active is None:
            return  # finished, or never ours
        active.cancel.set()  # a running job: the runner interrupts it in ComfyUI
        if active.future is not None and active.future.cancel():
            # It never started: nothing reached ComfyUI.
            self._forget(job_id, active)
            finish(
                self.store,
                job_id,
                "cancelled",
                JobError(type=ERR_CANCELLED, message="cancelled before it started"),
                phase=None,
            )

    def check(self, record: JobRecord) -> JobRecord:
        if record.status != "running":
            return record
        with self._lock:
            alive = record.job_id in self._active or self._closing
        if alive:
            return record
        # "running" but no worker of ours holds it: it will never finish.
        finish(
            self.store, record.job_id, "failed", JobError(type=ERR_WORKER_DIED, message=WORKER_DIED)
        )
        return self.store.get(record.job_id) or record

    def recover(self) -> None:
        for record in self.store.list(status=ACTIVE_STATUSES):
            with self._lock:
                if record.job_id in self._active:
                    continue
            running = record.status == "running"
            finish(
                self.store,
                record.job_id,
                "failed",
                JobError(
                    type=ERR_SERVER_RESTARTED,
                    message=RESTARTED_RUNNING if running else RESTARTED_QUEUED,
                ),
            )

    def close(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            active = dict(self._active)
        for a in active.values():
            a.cancel.set()  # interrupt what runs in ComfyUI: nobody will collect it
        self._pool.shutdown(wait=False, cancel_futures=True)
        futures = [a.future for a in active.values() if a.future is not None]
        concurrent.futures.wait(futures, timeout=self.shutdown_grace_s)
        for job_id, a in active.items():
            started = a.future is not None and (
                a.future.running() or (a.future.done() and not a.future.cancelled())
            )
            finish(
                self.store,
                job_id,
                "failed",
                JobError(
                    type=ERR_SERVER_STOPPED,
                    message=STOPPED_RUNNING if started else STOPPED_QUEUED,
                ),
            )
        self.runner.close()
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # --- one job, in a pool thread --------------------------------------------------------

    def _forget(self, job_id: str, active: _Active) -> None:
        with self._lock:
            if self._active.get(job_id) is active:
                del self._active[job_id]

    def _work(
        self,
        job_id: str,
        workflow: dict[str, Any],
        inputs: list[InputFile],
        timeout_s: int | None,
        active: _Active,
    ) -> None:
        try:
            self._run(job_id, workflow, inputs, timeout_s, active)
        except BaseException as exc:
            # Whatever happened, the job must not stay "running".
            log.error("job %s: worker error\n%s", job_id, traceback.format_exc())
            status, error = job_error(exc)
            with contextlib.suppress(Exception):
                finish(self.store, job_id, status, error)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._forget(job_id, active)
            shutil.rmtree(self.work_dir / job_id, ignore_errors=True)

    def _run(
        self,
        job_id: str,
        workflow: dict[str, Any],
        inputs: list[InputFile],
        timeout_s: int | None,
        active: _Active,
    ) -> None:
        if active.cancel.is_set():
            stopping = self._closing
            finish(
                self.store,
                job_id,
                "failed" if stopping else "cancelled",
                JobError(
                    type=ERR_SERVER_STOPPED if stopping else ERR_CANCELLED,
                    message=STOPPED_QUEUED if stopping else "cancelled before it started",
                ),
            )
            return
        queued_s = max(0.0, time.time() - active.created_at)
        record = self.store.update(
            job_id,
            status="running",
            phase="uploading_inputs" if inputs else "executing",
            timings={"queued": queued_s},
        )
        if record is None or record.status != "running":
            return  # gone or already final (cancelled in between)
        log_event(record)
        reporter = ProgressReporter(self.store, job_id, self.progress_interval_s)
        try:
            result = self.runner.run(
                workflow,
                job_id=job_id,
                inputs=inputs,
                on_progress=reporter,
                timeout_s=float(timeout_s) if timeout_s is not None else None,
                cancel=active.cancel,
            )
        except Exception as exc:
            status, error = job_error(exc)
            if self._closing and status == "cancelled":
                status = "failed"
                error = JobError(type=ERR_SERVER_STOPPED, message=STOPPED_RUNNING)
            elif status == "failed" and error.type == ERR_WORKER_DIED:
                log.error("job %s: unexpected error\n%s", job_id, traceback.format_exc())
            finish(self.store, job_id, status, error, timings={"queued": queued_s})
            return
        self._succeed(job_id, result, queued_s)

    def _succeed(self, job_id: str, result: RunResult, queued_s: float) -> None:
        outputs = store_outputs(self.store, job_id, result)
        progress = self.store.get(job_id)
        done = progress.progress if progress is not None else None
        total = done.nodes_total if done is not None else 0
        finish(
            self.store,
            job_id,
            "succeeded",
            None,
            phase="done",
            outputs=outputs,
            progress=Progress(nodes_done=total, nodes_total=total),
            timings={"queued": queued_s, **result.timings},
        )


class ProgressReporter:
    """Runner progress → store, at most one write per ``interval`` unless the phase changes.

    A failed progress write is logged, never raised: it must not fail the job it reports on.
    """

    def __init__(self, store: JobStore, job_id: str, interval: float) -> None:
        self.store = store
        self.job_id = job_id
        self.interval = interval
        self.last_write = float("-inf")
        self.last_phase: str | None = None

    def __call__(self, p: RunnerProgress) -> None:
        if p.phase == "done":
            return  # the final update says it
        now = time.monotonic()
        if p.phase == self.last_phase and now - self.last_write < self.interval:
            return
        self.last_write, self.last_phase = now, p.phase
        progress = Progress(
            node_id=p.node_id,
            node_type=p.node_type,
            nodes_done=p.nodes_done,
            nodes_total=p.nodes_total,
            step=p.step,
            steps=p.steps,
        )
        try:
            self.store.update(self.job_id, phase=p.phase, progress=progress)
        except Exception as exc:
            log.warning("job %s: progress not written: %s", self.job_id, exc)


__all__ = [
    "Executor",
    "LocalExecutor",
    "ProgressReporter",
    "finish",
    "job_error",
    "log_event",
    "store_outputs",
]
