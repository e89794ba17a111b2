"""One job's life from ``queued`` to its final status, the same for ``ryla serve`` and on Modal.

``LocalExecutor`` (a pool thread per job) and the Modal worker (``cloud/worker.py``, one call
per job) both hand a job to ``JobLifecycle.run``, so both report the same fields in the same
order: ``running`` with ``queued``/``starting_comfyui`` timings, throttled progress while the
runner works, the outputs handed to the store, then exactly one final write with the outputs,
the progress (``nodes_total`` = the workflow's node count), non-overlapping phase timings and
``total`` = wall time from ``created_at`` to the final status.  Whatever goes wrong (a bug, a
failed output write, Modal's ``InputCancellation``), the job does not stay ``running``.

    lifecycle = JobLifecycle(store, progress_interval_s=0.25)
    lifecycle.run(JobSpec(job_id, created_at, workflow), prepare=lambda: runner, cancel=event)
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ryla_modal import defaults
from ryla_modal.comfy.api import JobDetached
from ryla_modal.comfy.runner import ComfyRunner, JobInput, RunnerProgress, RunResult
from ryla_modal.errors import (
    ComfyUINotReached,
    ComfyUIUnavailable,
    ExecutionError,
    InputFetchError,
    JobCancelled,
    OutputIntegrityError,
    RylaError,
    RylaTimeout,
    WorkflowFormatError,
    WorkflowValidationError,
)
from ryla_modal.gateway.schemas import (
    ERR_CANCELLED,
    ERR_COMFYUI_UNAVAILABLE,
    ERR_EXECUTION,
    ERR_INVALID_INPUT,
    ERR_SERVER_STOPPED,
    ERR_TIMEOUT,
    ERR_WORKER_DIED,
    JobError,
    JobRecord,
    OutputInfo,
    Progress,
    Timings,
)
from ryla_modal.gateway.store import JobStore

log = logging.getLogger("ryla_modal.gateway")

#: Runs of one job that may find ComfyUI silent before its prompt is sent (then wait for it).
_REACH_ATTEMPTS = 2

STOPPED_RUNNING = "the server stopped while this job was running; submit it again with a new job_id"
STOPPED_QUEUED = "the server stopped before this job started; submit it again with a new job_id"
WORKER_DIED = (
    "the worker running this job stopped without a result; submit it again with a new job_id"
)
CANCELLED_QUEUED = "cancelled before it started"
CANCELLED_RUNNING = "cancelled while running"
_MAX_MESSAGE = 4000  # characters of an error message kept in a job record


def job_error(exc: BaseException) -> tuple[str, JobError]:
    """The final status and ``error`` for what a job raised."""
    # a RylaError's str() adds its hint on a line of its own: the record keeps the message
    message = _short(getattr(exc, "message", None) or str(exc) or type(exc).__name__)
    if isinstance(exc, JobCancelled):
        return "cancelled", JobError(type=ERR_CANCELLED, message=message)
    if isinstance(exc, InputFetchError):
        return "failed", JobError(type=exc.reason, message=message)
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
        total = record.timings.total
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
        store.put_output(job_id, out.index, src, move=True)  # the runner's scratch copy
        text = out.text
        if text is not None and len(text) > defaults.TEXT_OUTPUT_INLINE_MAX_CHARS:
            text = None  # too long for the record: the file has it
        outputs.append(
            OutputInfo(
                index=out.index,
                node_id=out.node_id,
                filename=out.filename,
                kind=out.kind,
                mime=out.mime,
                size=out.size,
                sha256=out.sha256,
                text=text,
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


@dataclass(frozen=True)
class JobSpec:
    """What a backend knows of a job when it starts it."""

    job_id: str
    created_at: float
    workflow: Mapping[str, Any] = field(default_factory=dict)
    inputs: Sequence[JobInput] = ()
    timeout_s: float | None = None
    #: also keep ``temp`` files (PreviewImage) as outputs
    previews: bool = False
    #: a warm-up job (`ryla health --wake`): succeeds once ComfyUI is ready, runs nothing
    warmup: bool = False


@dataclass(frozen=True)
class StartupInfo:
    """How the worker running a job came up: epoch spans and whether it was restored.

    ``container_window``: from the container's process start to its ``@modal.enter`` (None when
    unknown, e.g. after a restore); ``comfy_window``: the last ComfyUI start, GPU move included;
    ``restored``: that ComfyUI came from a memory snapshot (None: no start seen yet).
    """

    container_window: tuple[float, float] | None = None
    comfy_window: tuple[float, float] | None = None
    restored: bool | None = None


def _overlap(window: tuple[float, float] | None, start: float, end: float) -> float:
    if window is None:
        return 0.0
    return max(0.0, min(window[1], end) - max(window[0], start))


def _never() -> bool:
    return False


class JobLifecycle:
    """Runs jobs through a ``ComfyRunner`` and reports them in one ``JobStore``.

    ``run`` never raises for the job's own failures (they become its final status); it re-raises
    only a ``BaseException`` that is not an ``Exception`` (Modal's ``InputCancellation``,
    ``KeyboardInterrupt``), after interrupting the prompt and writing the final status.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        progress_interval_s: float = defaults.GATEWAY_PROGRESS_MIN_INTERVAL_S,
        cancel_poll_s: float = defaults.MODAL_CANCEL_POLL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.progress_interval_s = progress_interval_s
        self.cancel_poll_s = cancel_poll_s
        self._clock = clock

    def settle(self, spec: JobSpec, exc: BaseException, **timings: float) -> None:
        """Fail (or cancel) a job that cannot run, with the reason ``exc`` gives."""
        status, error = job_error(exc)
        self._finish(spec, status, error, timings)

    def run(
        self,
        spec: JobSpec,
        *,
        prepare: Callable[[], ComfyRunner],
        cancel: threading.Event | None = None,
        cancel_requested: Callable[[], bool] | None = None,
        stopping: Callable[[], bool] = _never,
        comfy_window: Callable[[], tuple[float, float] | None] | None = None,
        startup: Callable[[], StartupInfo] | None = None,
        detach: threading.Event | None = None,
    ) -> None:
        """Run one job to its final status (or leave it to ComfyUI: ``detach``).

        ``prepare`` returns a runner on a ComfyUI that answers (the Modal worker restarts a dead
        one there); it is called again, once, when the runner finds ComfyUI silent before it
        sent the prompt (ComfyUINotReached): the job waits for ComfyUI instead of failing, and
        cannot run twice.  ``cancel`` interrupts the prompt when set; ``cancel_requested`` is polled
        every ``cancel_poll_s`` to set it (the Dict store's flag).  ``stopping`` says the server
        shuts down: a job stopped then is ``failed`` (server_stopped), not ``cancelled``.
        ``comfy_window`` gives the epoch span in which this worker last started ComfyUI: the
        part of it the job waited through is ``starting_comfyui``, not ``queued``.  ``startup``
        (the Modal worker) says more: the container's own boot span (``container_start``) and
        whether its ComfyUI came from a memory snapshot (``restored``).
        ``detach`` set (the server stops, ComfyUI stays): a prompt ComfyUI already has is left
        to it with its record unchanged, for the next start to re-adopt; one it never got fails
        as ``server_stopped``.
        """
        if startup is not None:
            comfy_window = lambda: startup().comfy_window  # noqa: E731 - one source of truth
        try:
            self._run(
                spec,
                prepare,
                cancel or threading.Event(),
                cancel_requested,
                stopping,
                comfy_window,
                startup,
                detach,
            )
        except Exception as exc:
            # A store write failed, or a bug of ours: the job still must not stay active.
            log.error("job %s: lifecycle error\n%s", spec.job_id, traceback.format_exc())
            with contextlib.suppress(Exception):
                self.settle(spec, exc)

    def _run(
        self,
        spec: JobSpec,
        prepare: Callable[[], ComfyRunner],
        cancel: threading.Event,
        cancel_requested: Callable[[], bool] | None,
        stopping: Callable[[], bool],
        comfy_window: Callable[[], tuple[float, float] | None] | None,
        startup: Callable[[], StartupInfo] | None = None,
        detach: threading.Event | None = None,
    ) -> None:
        begin = self._clock()
        window = comfy_window() if comfy_window is not None else None
        boot = startup().container_window if startup is not None else None
        booting = _overlap(boot, spec.created_at, begin)
        waited = _overlap(window, spec.created_at, begin) + booting
        timings: dict[str, float] = {"queued": max(0.0, begin - spec.created_at - waited)}
        if booting > 0:
            timings["container_start"] = booting
        if cancel.is_set() or (cancel_requested is not None and cancel_requested()):
            if stopping():
                error = JobError(type=ERR_SERVER_STOPPED, message=STOPPED_QUEUED)
                self._finish(spec, "failed", error, timings)
            else:
                error = JobError(type=ERR_CANCELLED, message=CANCELLED_QUEUED)
                self._finish(spec, "cancelled", error, timings)
            return
        try:
            runner = prepare()
        except Exception as exc:
            self._failed(spec, exc, timings, stopping)
            return
        ready = self._clock()
        window = comfy_window() if comfy_window is not None else None
        timings["starting_comfyui"] = (
            _overlap(window, spec.created_at, ready) if window is not None else ready - begin
        )
        restored = startup().restored if startup is not None else None
        if restored is not None and timings["starting_comfyui"] > 0:
            timings["restored"] = restored  # the job waited for that start: say what kind
        if spec.warmup:
            self._finish(spec, "succeeded", None, timings, phase="done")
            return
        record = self.store.update(
            spec.job_id,
            status="running",
            phase="uploading_inputs" if spec.inputs else "executing",
            timings=Timings.model_validate(timings),
        )
        if record is None or record.status != "running":
            return  # gone, or settled meanwhile (a cancel won): that was its one final write
        log_event(record)
        watcher = self._watch(spec.job_id, cancel, cancel_requested)
        try:
            self._execute(spec, runner, prepare, cancel, timings, stopping, detach)
        except BaseException:
            # Modal's InputCancellation, or the container stopping: stop the prompt too.
            with contextlib.suppress(Exception):
                runner.interrupt(spec.job_id)
            with contextlib.suppress(Exception):
                stopped = stopping()
                error = JobError(
                    type=ERR_SERVER_STOPPED if stopped else ERR_CANCELLED,
                    message=STOPPED_RUNNING if stopped else CANCELLED_RUNNING,
                )
                self._finish(spec, "failed" if stopped else "cancelled", error, timings)
            raise
        finally:
            if watcher is not None:
                watcher()
            if runner.work_dir is not None:
                shutil.rmtree(runner.work_dir / spec.job_id, ignore_errors=True)

    def _execute(
        self,
        spec: JobSpec,
        runner: ComfyRunner,
        prepare: Callable[[], ComfyRunner],
        cancel: threading.Event,
        timings: dict[str, float],
        stopping: Callable[[], bool],
        detach: threading.Event | None = None,
    ) -> None:
        try:
            for attempt in range(1, _REACH_ATTEMPTS + 1):
                try:
                    result = runner.run(
                        spec.workflow,
                        job_id=spec.job_id,
                        inputs=spec.inputs,
                        on_progress=ProgressReporter(
                            self.store, spec.job_id, self.progress_interval_s
                        ),
                        timeout_s=spec.timeout_s,
                        cancel=cancel,
                        previews=spec.previews,
                        detach=detach,
                    )
                    break
                except ComfyUINotReached as exc:
                    # Gone since the job's start looked (or never seen): wait for it, run again.
                    if cancel.is_set():
                        raise JobCancelled(
                            f"job {spec.job_id} was cancelled before it reached ComfyUI",
                            job_id=spec.job_id,
                        ) from exc
                    if attempt == _REACH_ATTEMPTS or stopping():
                        raise
                    log.warning(
                        "job %s: ComfyUI did not answer before the job was sent to it; waiting"
                        " for it (%s)",
                        spec.job_id,
                        exc.message.splitlines()[0],
                    )
                    t0 = self._clock()
                    runner = prepare()
                    waited = max(0.0, self._clock() - t0)
                    timings["starting_comfyui"] = timings.get("starting_comfyui", 0.0) + waited
            timings.update({k: v for k, v in vars(result.timings).items() if v is not None})
            t0 = time.monotonic()
            outputs = store_outputs(self.store, spec.job_id, result)
            timings["storing_outputs"] = time.monotonic() - t0
        except JobDetached as exc:
            if exc.submitted:
                log.info("job %s left to ComfyUI: the next start re-adopts it", spec.job_id)
            else:
                error = JobError(type=ERR_SERVER_STOPPED, message=STOPPED_QUEUED)
                self._finish(spec, "failed", error, timings)
            return
        except Exception as exc:
            self._failed(spec, exc, timings, stopping)
            return
        total = result.nodes_total
        self._finish(
            spec,
            "succeeded",
            None,
            timings,
            phase="done",
            outputs=outputs,
            progress=Progress(nodes_done=total, nodes_total=total),
        )

    def _failed(
        self,
        spec: JobSpec,
        exc: Exception,
        timings: dict[str, float],
        stopping: Callable[[], bool],
    ) -> None:
        status, error = job_error(exc)
        if status == "cancelled" and stopping():
            status, error = "failed", JobError(type=ERR_SERVER_STOPPED, message=STOPPED_RUNNING)
        elif error.type == ERR_WORKER_DIED:
            log.error(
                "job %s: unexpected error\n%s",
                spec.job_id,
                "".join(traceback.format_exception(exc)),
            )
        self._finish(spec, status, error, timings)

    def _finish(
        self,
        spec: JobSpec,
        status: str,
        error: JobError | None,
        timings: Mapping[str, float],
        **fields: Any,
    ) -> None:
        total = max(0.0, self._clock() - spec.created_at)
        finish(
            self.store,
            spec.job_id,
            status,
            error,
            timings=Timings.model_validate({**timings, "total": total}),
            **fields,
        )

    def _watch(
        self,
        job_id: str,
        cancel: threading.Event,
        cancel_requested: Callable[[], bool] | None,
    ) -> Callable[[], None] | None:
        """Poll ``cancel_requested`` in a thread while the job runs; returns its stop."""
        if cancel_requested is None:
            return None
        done = threading.Event()

        def watch() -> None:
            while not done.wait(self.cancel_poll_s):
                try:
                    wanted = cancel_requested()
                except Exception as exc:
                    log.warning("job %s: cannot read the cancel flag: %s", job_id, exc)
                    continue
                if wanted:
                    cancel.set()  # the runner interrupts the prompt in ComfyUI
                    return

        thread = threading.Thread(target=watch, name=f"ryla-cancel-{job_id[:8]}", daemon=True)
        thread.start()

        def stop() -> None:
            done.set()
            thread.join(timeout=self.cancel_poll_s + defaults.COMFY_HTTP_TIMEOUT_S)

        return stop


__all__ = [
    "CANCELLED_QUEUED",
    "CANCELLED_RUNNING",
    "STOPPED_QUEUED",
    "STOPPED_RUNNING",
    "WORKER_DIED",
    "JobLifecycle",
    "JobSpec",
    "ProgressReporter",
    "StartupInfo",
    "finish",
    "job_error",
    "log_event",
    "store_outputs",
]
