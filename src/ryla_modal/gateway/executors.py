"""Executors run the jobs the gateway accepted; they report by writing to the job store.

``Executor`` is the small protocol the gateway needs (``LocalExecutor`` here, ``ModalExecutor``
in ``cloud/``).  ``LocalExecutor`` hands each job to ``JobLifecycle`` (``gateway/lifecycle.py``,
the code the Modal worker runs too) in a bounded thread pool against one ComfyUI.  Its promises:
every job it accepted ends in a final status with a reason (a crashed worker is ``failed``, never
``running`` forever); cancel interrupts the job in ComfyUI by its prompt_id; a job that arrives
while ComfyUI is down or restarting waits for it (``ComfyMonitor``) within its cold-start budget;
jobs left behind by a previous process are re-adopted when ComfyUI still has them (their prompt
ids are our job ids: followed to the end, or collected from its history), and only those it
never saw are failed, with a reason the client can act on.

    executor = LocalExecutor(store, comfy.base_url, process=comfy, monitor=monitor)
    executor.recover()
    executor.start(record, workflow, inputs)
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ryla_modal import defaults
from ryla_modal.comfy.process import ComfyMonitor, ComfyProcess, check_ready
from ryla_modal.comfy.runner import ComfyRunner, JobInput
from ryla_modal.errors import ComfyUIUnavailable
from ryla_modal.fetch import FetchRules
from ryla_modal.gateway.lifecycle import (
    CANCELLED_QUEUED,
    STOPPED_QUEUED,
    STOPPED_RUNNING,
    WORKER_DIED,
    JobLifecycle,
    JobSpec,
    finish,
    log_event,
)
from ryla_modal.gateway.schemas import (
    ACTIVE_STATUSES,
    ERR_CANCELLED,
    ERR_SERVER_RESTARTED,
    ERR_SERVER_STOPPED,
    ERR_WORKER_DIED,
    JobError,
    JobLogs,
    JobRecord,
)
from ryla_modal.gateway.store import JobStore

log = logging.getLogger("ryla_modal.gateway")

RESTARTED_RUNNING = (
    "the server restarted while this job was running, and ComfyUI no longer has it; submit it"
    " again with a new job_id"
)
RESTARTED_QUEUED = (
    "the server restarted before this job reached ComfyUI; submit it again with a new job_id"
)
#: at most this many re-adopted jobs are followed at once after a restart
_ADOPT_THREADS_MAX = 32
#: how many jobs' log marks ``LocalExecutor`` remembers for GET /jobs/{id}/logs
_LOG_MARKS_KEPT = 1000


@runtime_checkable
class Executor(Protocol):
    """What the gateway asks of an executor.  It is bound to its job store when built."""

    #: "local" or "modal", shown by GET /health.
    kind: str

    def start(
        self, job: JobRecord, workflow: Mapping[str, Any], inputs: Sequence[JobInput]
    ) -> None:
        """Begin running a job the store already holds as ``queued``; never blocks on it."""

    def cancel(self, job_id: str) -> None:
        """Stop a job; the store says ``cancelled`` once it is stopped."""

    def warm(self, job: JobRecord) -> None:
        """Make a ComfyUI ready to take jobs (on Modal: start a GPU container); the warm-up
        ``job`` the store holds as ``queued`` ends ``succeeded`` once it is.  Never blocks."""

    def check(self, record: JobRecord) -> JobRecord:
        """Look behind an unfinished record (is its worker alive?); returns the current record."""

    def logs(self, record: JobRecord) -> JobLogs:
        """The log lines of one job's run, or where to fetch them (Modal keeps its own)."""

    def recover(self) -> None:
        """At start-up: settle the jobs a previous process left queued or running."""

    def close(self) -> None:
        """Stop taking jobs; settle the ones in flight (each ends in a final status)."""


@dataclass
class _Active:
    future: concurrent.futures.Future[None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    #: the server stops and leaves the prompt to ComfyUI (and the next start)
    detach: threading.Event = field(default_factory=threading.Event)


def _prompt_of(item: Any) -> dict[str, Any] | None:
    """The workflow inside a /queue item or a history entry's ``prompt``: [n, id, prompt, ...]."""
    if isinstance(item, list | tuple) and len(item) > 2 and isinstance(item[2], dict):
        return dict(item[2])
    return None


class LocalExecutor:
    """Jobs on one ComfyUI, ``workers`` at a time, through ``ComfyRunner``.

    ComfyUI runs one prompt at a time; the pool only bounds how many jobs are handed to it (the
    rest wait here as ``queued``).  ``process`` (when we launched ComfyUI) lets the runner tell
    a dead ComfyUI from a slow one, and gives each job its ComfyUI log lines.  Outputs pass
    through ``work_dir`` into the store.
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
        fetch_rules: FetchRules | None = None,
        monitor: ComfyMonitor | None = None,
        comfy_wait_s: float = defaults.COLD_START_TIMEOUT_S,
    ) -> None:
        """``fetch_rules``: how inputs by URL are fetched (private addresses refused unless
        ``FetchRules(allow_private=True)``, which `ryla serve --allow-private-urls` sets)."""
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.store = store
        self.comfy_url = comfy_url
        self.process = process
        self.monitor = monitor
        self.comfy_wait_s = comfy_wait_s
        self._own_work_dir = work_dir is None
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="ryla-serve-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.runner = ComfyRunner(
            comfy_url,
            work_dir=self.work_dir,
            process=process,
            default_timeout_s=default_timeout_s,
            fetch_rules=fetch_rules,
        )
        self.lifecycle = JobLifecycle(store, progress_interval_s=progress_interval_s)
        self.shutdown_grace_s = shutdown_grace_s
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="ryla-job"
        )
        self._adopt_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._active: dict[str, _Active] = {}
        self._log_marks: collections.OrderedDict[str, tuple[int, int | None]] = (
            collections.OrderedDict()
        )
        self._closing = False

    # --- the protocol ----------------------------------------------------------------------

    def start(
        self, job: JobRecord, workflow: Mapping[str, Any], inputs: Sequence[JobInput]
    ) -> None:
        with self._lock:
            if self._closing:
                raise RuntimeError("the executor is shutting down")
            if job.job_id in self._active:
                return  # already ours: idempotent
            active = _Active()
            self._active[job.job_id] = active
            spec = JobSpec(
                job_id=job.job_id,
                created_at=job.created_at,
                workflow=dict(workflow),
                inputs=list(inputs),
                timeout_s=float(job.timeout_s) if job.timeout_s is not None else None,
                previews=job.previews,
            )
            active.future = self._pool.submit(self._work, spec, active)
        log_event(job)

    def warm(self, job: JobRecord) -> None:
        # The local ComfyUI is started (and waited for) by `ryla serve` itself: check it answers.
        def ready() -> ComfyRunner:
            if self.monitor is not None:
                self.monitor.wait_up(self.comfy_wait_s)
            else:
                check_ready(self.comfy_url, timeout=defaults.COMFY_CONNECT_TIMEOUT_S)
            return self.runner

        self.lifecycle.run(
            JobSpec(job_id=job.job_id, created_at=job.created_at, warmup=True), prepare=ready
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
                JobError(type=ERR_CANCELLED, message=CANCELLED_QUEUED),
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

    def logs(self, record: JobRecord) -> JobLogs:
        """ComfyUI's log lines between the start and the end of this job's run.

        ComfyUI writes one log for everything it runs: with ``workers`` > 1 the runs of
        overlapping jobs interleave, and their lines mix.  The marks live in memory (the last
        1000 jobs): after a restart, earlier jobs have no lines; with ``--comfyui-url`` (a
        ComfyUI we did not launch) there is no log to read.
        """
        with self._lock:
            marks = self._log_marks.get(record.job_id)
        lines: list[str] = []
        if marks is not None and self.process is not None:
            lines = self.process.log_lines(marks[0], marks[1])
        return JobLogs(job_id=record.job_id, source="comfyui", lines=lines)

    def recover(self) -> None:
        """Re-adopt what ComfyUI still has of the jobs a previous process left active.

        A job id is ComfyUI's prompt id: one in its history is collected (its outputs stored),
        one in its queue is followed to the end, and only one it never saw is failed.  The
        adopted jobs are followed by threads of their own, so new jobs do not queue behind them
        here (they do in ComfyUI's own queue, where the GPU work is).
        """
        left = []
        for record in self.store.list(status=ACTIVE_STATUSES):
            with self._lock:
                if record.job_id not in self._active:
                    left.append(record)
        if not left:
            return
        seen = self._comfy_prompts([r.job_id for r in left])
        adopted = 0
        for record in left:
            workflow = seen.get(record.job_id)
            if workflow is None:
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
                continue
            self._adopt(record, workflow)
            adopted += 1
        if adopted:
            log.info("re-adopted %d jobs ComfyUI still has from before the restart", adopted)

    def _comfy_prompts(self, job_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """{job id: its workflow} for the ids ComfyUI has queued, running or in its history."""
        api = self.runner.api
        found: dict[str, dict[str, Any]] = {}
        try:
            queue = api.queue()
        except ComfyUIUnavailable as exc:
            log.warning("cannot read ComfyUI's queue to re-adopt jobs: %s", exc)
            return found
        wanted = set(job_ids)
        for key in ("queue_running", "queue_pending"):
            for item in queue.get(key) or []:
                if isinstance(item, list) and len(item) > 2 and str(item[1]) in wanted:
                    prompt = _prompt_of(item)
                    if prompt is not None:
                        found[str(item[1])] = prompt
        for job_id in wanted - found.keys():
            try:
                entry = api.history(job_id)
            except ComfyUIUnavailable as exc:
                log.warning("cannot read ComfyUI's history of job %s: %s", job_id, exc)
                continue
            prompt = _prompt_of(entry.get("prompt")) if entry is not None else None
            if prompt is not None:
                found[job_id] = prompt
        return found

    def _adopt(self, record: JobRecord, workflow: dict[str, Any]) -> None:
        with self._lock:
            if self._adopt_pool is None:
                self._adopt_pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=_ADOPT_THREADS_MAX, thread_name_prefix="ryla-adopt"
                )
            active = _Active()
            self._active[record.job_id] = active
            spec = JobSpec(
                job_id=record.job_id,
                created_at=record.created_at,
                workflow=workflow,
                timeout_s=float(record.timeout_s) if record.timeout_s is not None else None,
            )
            active.future = self._adopt_pool.submit(self._work, spec, active)
        log.info("job %s re-adopted: ComfyUI still has it", record.job_id)

    def close(self, *, leave_to_comfyui: bool = False) -> None:
        """Stop taking jobs and settle the ones in flight.

        ``leave_to_comfyui`` (ComfyUI outlives this server, e.g. ``--comfyui-url``): prompts
        ComfyUI already has keep running there and keep their records active, for the next
        start to re-adopt; only jobs that never reached ComfyUI fail.  Otherwise running jobs
        are interrupted in ComfyUI and every job in flight fails as ``server_stopped``.
        """
        with self._lock:
            if self._closing:
                return
            self._closing = True
            active = dict(self._active)
        for a in active.values():
            if leave_to_comfyui:
                a.detach.set()  # stop following; ComfyUI keeps the prompt
            else:
                a.cancel.set()  # interrupt what runs in ComfyUI: nobody will collect it
        for pool in (self._pool, self._adopt_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        futures = [a.future for a in active.values() if a.future is not None]
        concurrent.futures.wait(futures, timeout=self.shutdown_grace_s)
        for job_id, a in active.items():
            started = a.future is not None and (
                a.future.running() or (a.future.done() and not a.future.cancelled())
            )
            if leave_to_comfyui and started:
                continue  # the lifecycle left it to ComfyUI or settled it itself
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

    def _work(self, spec: JobSpec, active: _Active) -> None:
        start = self.process.log_offset() if self.process is not None else 0
        self._mark_log(spec.job_id, start, None)
        asked = 0

        def prepare() -> ComfyRunner:
            nonlocal asked
            asked += 1
            return self._prepare(spec.job_id, recheck=asked > 1, cancel=active.cancel)

        try:
            self.lifecycle.run(
                spec,
                prepare=prepare,
                cancel=active.cancel,
                stopping=lambda: self._closing,
                detach=active.detach,
            )
        finally:
            if self.process is not None:
                self._mark_log(spec.job_id, start, self.process.log_offset())
            self._forget(spec.job_id, active)

    def _prepare(
        self, job_id: str, *, recheck: bool = False, cancel: threading.Event | None = None
    ) -> ComfyRunner:
        """The runner, once ComfyUI is up: a job arriving while it is down or restarting waits
        for it (phase ``starting_comfyui``) up to ``comfy_wait_s``, or until ``cancel``.  The
        jobs' own answers from ComfyUI vouch for it (no probe per job under load) unless
        ``recheck``: the job found it silent before sending its prompt."""
        monitor = self.monitor
        if monitor is not None:

            def waiting() -> None:
                log.info("job %s waits for ComfyUI (%s)", job_id, monitor.state)
                with contextlib.suppress(Exception):
                    self.store.update(job_id, phase="starting_comfyui")

            answered_at = self.runner.api.answered_at
            if monitor.wait_up(
                self.comfy_wait_s,
                on_wait=waiting,
                answered_at=answered_at,
                recheck=recheck,
                cancel=cancel,
            ):
                log.info("job %s: ComfyUI is back; the job goes on", job_id)
        return self.runner

    def _mark_log(self, job_id: str, start: int, end: int | None) -> None:
        with self._lock:
            self._log_marks[job_id] = (start, end)
            self._log_marks.move_to_end(job_id)
            while len(self._log_marks) > _LOG_MARKS_KEPT:
                self._log_marks.popitem(last=False)


__all__ = ["Executor", "LocalExecutor", "finish"]
