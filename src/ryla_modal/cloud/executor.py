"""The gateway's Modal executor: each job is one ``ComfyWorker.run`` FunctionCall.

``ModalExecutor`` spawns ``ComfyWorker.run`` and keeps the FunctionCall id on the record; a job
whose FunctionCall ended without the worker writing a final state is settled from the call's own
result or error (lost-job detection).  Its Modal calls enter through two callables, ``spawn`` and
``lookup_call``, which tests replace; nothing else here talks to Modal.

    executor = ModalExecutor(store, spawn=modal_spawner("ryla-comfyui", "ComfyWorker"))
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ryla_modal import defaults
from ryla_modal.comfy.runner import InputURL, JobInput
from ryla_modal.gateway.lifecycle import CANCELLED_QUEUED, finish
from ryla_modal.gateway.schemas import (
    ACTIVE_STATUSES,
    ERR_CANCELLED,
    ERR_SERVER_STOPPED,
    ERR_TIMEOUT,
    ERR_WORKER_DIED,
    TERMINAL_STATUSES,
    JobError,
    JobLogs,
    JobRecord,
)
from ryla_modal.gateway.store import JobStore

log = logging.getLogger("ryla_modal.gateway")

CALL_LOST = "the GPU worker's call ended without a result ({why}); submit again with a new job_id"
CALL_TIMED_OUT = (
    "the GPU worker ran past its Modal timeout; submit again or raise RYLA_WORKER_TIMEOUT"
)
NEVER_SPAWNED = "the gateway stopped before it started this job; submit again with a new job_id"


class CallHandle(Protocol):
    """What ``modal.FunctionCall`` offers that the executor uses."""

    def get(self, timeout: float | None = None) -> Any: ...

    def cancel(self, terminate_containers: bool = False) -> None: ...


SpawnFn = Callable[[dict[str, Any]], str]
LookupFn = Callable[[str], CallHandle]


def modal_spawner(app_name: str, class_name: str) -> SpawnFn:
    """``spawn(payload) -> FunctionCall id`` on the deployed ``class_name().run``."""

    def spawn(payload: dict[str, Any]) -> str:
        import modal

        worker = modal.Cls.from_name(app_name, class_name)()
        call = worker.run.spawn(payload)
        return str(call.object_id)

    return spawn


def modal_call_lookup(call_id: str) -> CallHandle:
    import modal

    handle: CallHandle = modal.FunctionCall.from_id(call_id)
    return handle


def job_payload(
    job: JobRecord, workflow: Mapping[str, Any], inputs: Sequence[JobInput]
) -> dict[str, Any]:
    """What ``ComfyWorker.run`` receives (plain data: it crosses Modal's serializer)."""
    return {
        "job_id": job.job_id,
        "workflow": dict(workflow),
        "inputs": [_input_payload(f) for f in inputs],
        "timeout_s": job.timeout_s,
        "previews": job.previews,
    }


def _input_payload(item: JobInput) -> dict[str, Any]:
    if isinstance(item, InputURL):
        return {"name": item.name, "url": item.url, "sha256": item.sha256}
    return {"name": item.name, "data_b64": base64.b64encode(item.data).decode("ascii")}


class ModalExecutor:
    """Runs each job as one ``ComfyWorker.run`` FunctionCall; the worker reports to the store."""

    kind = "modal"

    def __init__(
        self,
        store: JobStore,
        *,
        spawn: SpawnFn,
        lookup_call: LookupFn = modal_call_lookup,
        check_interval_s: float = defaults.MODAL_CALL_CHECK_INTERVAL_S,
        lost_grace_s: float = defaults.MODAL_LOST_JOB_GRACE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._spawn = spawn
        self._lookup = lookup_call
        self.check_interval_s = check_interval_s
        self.lost_grace_s = lost_grace_s
        self._clock = clock
        self._lock = threading.Lock()
        self._checked_at: dict[str, float] = {}

    def start(
        self,
        job: JobRecord,
        workflow: Mapping[str, Any],
        inputs: Sequence[JobInput],
        *,
        warmup: bool = False,
    ) -> None:
        if job.call_id:
            return  # spawned already: a job id runs once
        payload = job_payload(job, workflow, inputs)
        if warmup:
            payload["warmup"] = True
        call_id = self._spawn(payload)
        record = self.store.update(job.job_id, call_id=call_id, phase="waiting_for_gpu")
        if record is not None and record.call_id != call_id:
            # The worker finished before we wrote the id: keep it anyway, for logs.
            record = self.store.update(job.job_id, force=True, call_id=call_id)
        log.info("job %s spawned as %s", job.job_id, call_id)

    def warm(self, job: JobRecord) -> None:
        # A no-op job: spawning it makes Modal start a ComfyWorker container (the cold start),
        # whose enter hook launches ComfyUI; the worker then marks the job succeeded.
        self.start(job, {}, [], warmup=True)

    def cancel(self, job_id: str) -> None:
        record = self.store.get(job_id)
        if record is None or record.status in TERMINAL_STATUSES:
            return
        if record.call_id:
            try:
                self._lookup(record.call_id).cancel()
            except Exception as exc:
                log.warning("job %s: FunctionCall.cancel failed: %s", job_id, exc)
        if record.status == "queued":
            # No worker has it (or it is about to see the cancel): nobody else will say so.
            finish(
                self.store,
                job_id,
                "cancelled",
                JobError(type=ERR_CANCELLED, message=CANCELLED_QUEUED),
            )

    def check(self, record: JobRecord) -> JobRecord:
        """Settle a job whose worker call is gone; at most one Modal lookup per interval."""
        if record.status not in ACTIVE_STATUSES:
            return record
        now = self._clock()
        with self._lock:
            last = self._checked_at.get(record.job_id)
            if last is not None and now - last < self.check_interval_s:
                return record
            self._checked_at[record.job_id] = now
            if len(self._checked_at) > 10_000:  # forget the oldest half; they are done by now
                for key in sorted(self._checked_at, key=self._checked_at.__getitem__)[:5_000]:
                    del self._checked_at[key]
        if not record.call_id:
            if now - record.created_at > self.lost_grace_s:
                return self._settle(
                    record, "failed", JobError(type=ERR_SERVER_STOPPED, message=NEVER_SPAWNED)
                )
            return record
        return self._check_call(record)

    def _check_call(self, record: JobRecord) -> JobRecord:
        from modal import exception as mx

        assert record.call_id is not None
        try:
            result = self._lookup(record.call_id).get(timeout=0)
        except mx.FunctionTimeoutError:
            return self._settle(
                record, "failed", JobError(type=ERR_TIMEOUT, message=CALL_TIMED_OUT)
            )
        except mx.OutputExpiredError:
            return self._lost(record, "its result expired")
        except (mx.TimeoutError, TimeoutError):
            # No result yet: queued for a GPU or running.  modal 1.6.4 raises the built-in
            # TimeoutError here (an OSError, so it must be caught before the next line).
            return record
        except (mx.ConnectionError, mx.ServiceError, mx.InternalError, OSError) as exc:
            log.warning("job %s: cannot look at %s now: %s", record.job_id, record.call_id, exc)
            return record  # our side's trouble, not the job's: look again later
        except mx.InputCancellation:
            return self._lost(record, "the call was cancelled")
        except Exception as exc:
            return self._lost(record, f"{type(exc).__name__}: {str(exc)[:300]}")
        return self._finished_call(record, result)

    def _finished_call(self, record: JobRecord, result: Any) -> JobRecord:
        """The call returned but the store does not say final: take the worker's own answer."""
        fresh = self.store.get(record.job_id) or record
        if fresh.status in TERMINAL_STATUSES:
            return fresh
        try:
            final = JobRecord.model_validate({**fresh.model_dump(), **dict(result)})
        except Exception:
            final = None
        if final is not None and final.status in TERMINAL_STATUSES:
            return self._settle(
                fresh,
                final.status,
                final.error,
                phase=final.phase,
                outputs=final.outputs,
                progress=final.progress,
                timings=final.timings,
            )
        return self._lost(fresh, "the worker returned without a final status")

    def _lost(self, record: JobRecord, why: str) -> JobRecord:
        fresh = self.store.get(record.job_id) or record
        if fresh.status in TERMINAL_STATUSES:
            return fresh
        if fresh.cancel_requested:
            return self._settle(
                fresh, "cancelled", JobError(type=ERR_CANCELLED, message="cancelled")
            )
        return self._settle(
            fresh, "failed", JobError(type=ERR_WORKER_DIED, message=CALL_LOST.format(why=why))
        )

    def _settle(
        self, record: JobRecord, status: str, error: JobError | None, **fields: Any
    ) -> JobRecord:
        finish(self.store, record.job_id, status, error, **fields)
        return self.store.get(record.job_id) or record

    def logs(self, record: JobRecord) -> JobLogs:
        """Modal keeps the worker's log lines: ``modal app logs APP --function-call CALL_ID``
        fetches them (the gateway has no token to read them itself)."""
        return JobLogs(job_id=record.job_id, source="modal", lines=[], call_id=record.call_id)

    def recover(self) -> None:
        """Nothing to do: workers outlive gateways, and a stale job is settled when read."""

    def close(self) -> None:
        """Nothing to do: jobs in flight keep running on their GPU workers."""


__all__ = [
    "CallHandle",
    "LookupFn",
    "ModalExecutor",
    "SpawnFn",
    "job_payload",
    "modal_call_lookup",
    "modal_spawner",
]
