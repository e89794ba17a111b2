"""LocalExecutor's bookkeeping: error mapping, progress throttling, recovery after a restart."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ryla_modal.comfy.process import ComfyMonitor
from ryla_modal.comfy.runner import RunnerProgress
from ryla_modal.errors import (
    ComfyUIUnavailable,
    ExecutionError,
    ExecutionTimeout,
    JobCancelled,
    WorkflowValidationError,
)
from ryla_modal.gateway.executors import RESTARTED_QUEUED, RESTARTED_RUNNING, LocalExecutor
from ryla_modal.gateway.lifecycle import ProgressReporter, job_error
from ryla_modal.gateway.schemas import TERMINAL_STATUSES, JobRecord, JobStatus
from ryla_modal.gateway.store import MemoryJobStore
from tests.conftest import ComfyServer, simple_workflow, unique


def _record(job_id: str, status: JobStatus = "queued") -> JobRecord:
    now = time.time()
    return JobRecord(
        job_id=job_id, status=status, created_at=now, updated_at=now, workflow_sha256="0" * 64
    )


def test_job_error_carries_comfyui_details() -> None:
    node_errors = {"3": {"errors": [{"type": "value_bigger_than_max"}], "class_type": "ImageBlur"}}
    status, err = job_error(
        WorkflowValidationError(
            "bad", error={"type": "prompt_outputs_failed_validation"}, node_errors=node_errors
        )
    )
    assert (status, err.type, err.node_errors) == (
        "failed",
        "prompt_outputs_failed_validation",
        node_errors,
    )
    status, err = job_error(
        ExecutionError(
            "node 1 failed",
            node_id="1",
            node_type="LoadImage",
            exception_type="OSError",
            traceback_tail=["  File x"],
        )
    )
    assert (err.type, err.node_id, err.node_type, err.exception_type, err.traceback_tail) == (
        "execution_error",
        "1",
        "LoadImage",
        "OSError",
        ["  File x"],
    )
    assert job_error(JobCancelled("stop"))[0] == "cancelled"
    assert job_error(ExecutionTimeout("late", job_id="j"))[1].type == "timeout"
    assert job_error(ComfyUIUnavailable("gone"))[1].type == "comfyui_unavailable"


def test_job_error_for_a_bug_says_nothing_internal() -> None:
    status, err = job_error(KeyError("/secret/path/in/the/server"))
    assert status == "failed" and err.type == "worker_died"
    assert "secret" not in err.message and "KeyError" in err.message
    assert "submit it again" in err.message


def test_progress_is_throttled_but_phase_changes_always_land() -> None:
    store = MemoryJobStore()
    store.create_if_absent(_record("j", "running"))
    report = ProgressReporter(store, "j", interval=60.0)
    for step in range(100):
        report(RunnerProgress(phase="executing", step=step, steps=100, nodes_total=3))
    after_steps = store.get("j")
    assert after_steps is not None and after_steps.revision == 1  # one write for 100 events
    report(RunnerProgress(phase="collecting_outputs", nodes_done=3, nodes_total=3))
    moved = store.get("j")
    assert moved is not None and moved.revision == 2 and moved.phase == "collecting_outputs"
    report(RunnerProgress(phase="done"))  # the final update says it; no extra write
    final = store.get("j")
    assert final is not None and final.revision == 2


def test_a_failed_progress_write_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    class FullDisk(MemoryJobStore):
        def update(self, job_id: str, *, force: bool = False, **fields: Any) -> Any:
            raise OSError("database or disk is full")

    report = ProgressReporter(FullDisk(), "j", interval=0.0)
    with caplog.at_level("WARNING", logger="ryla_modal.gateway"):
        report(RunnerProgress(phase="executing", nodes_total=3))
    assert "job j: progress not written: database or disk is full" in caplog.text


def test_recover_fails_what_a_previous_process_left(tmp_path: Path) -> None:
    store = MemoryJobStore()
    store.create_if_absent(_record("queued-1"))
    store.create_if_absent(_record("running-1", "running"))
    store.create_if_absent(_record("done-1", "succeeded"))
    executor = LocalExecutor(store, "http://127.0.0.1:9", work_dir=tmp_path)
    try:
        executor.recover()
    finally:
        executor.close()
    q, r, d = (store.get(i) for i in ("queued-1", "running-1", "done-1"))
    assert q is not None and q.status == "failed" and q.error is not None
    assert (q.error.type, q.error.message) == ("server_restarted", RESTARTED_QUEUED)
    assert r is not None and r.error is not None and r.error.message == RESTARTED_RUNNING
    assert d is not None and d.status == "succeeded" and d.revision == 0


def _record_when(
    store: MemoryJobStore, job_id: str, cond: Callable[[JobRecord], bool], within: float = 30.0
) -> JobRecord:
    """The job's record once ``cond`` holds for it; fails the test after ``within`` s."""
    deadline = time.monotonic() + within
    while (record := store.get(job_id)) is None or not cond(record):
        assert time.monotonic() < deadline, f"job {job_id} not there after {within} s: {record}"
        time.sleep(0.05)
    return record


def _settled(store: MemoryJobStore, job_id: str, within: float = 30.0) -> JobRecord:
    return _record_when(store, job_id, lambda r: r.status in TERMINAL_STATUSES, within)


def _waits_for_comfyui(store: MemoryJobStore, job_id: str) -> JobRecord:
    """The record once the job waits for ComfyUI (phase starting_comfyui), still unfinished."""
    record = _record_when(
        store,
        job_id,
        lambda r: r.phase == "starting_comfyui" or r.status in TERMINAL_STATUSES,
    )
    assert record.status not in TERMINAL_STATUSES, record
    return record


def test_a_job_that_finds_comfyui_gone_before_submitting_waits_for_it(
    launch_stub: Callable[..., ComfyServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Jobs take ComfyUI's recent answers to other jobs as proof it is up (no probe each); one
    that then finds it gone before sending its prompt waits for it instead of failing, and
    runs once.  ``fresh_s`` of an hour: the second job surely trusts the first one's answers."""
    comfy = launch_stub()
    store = MemoryJobStore()
    monitor = ComfyMonitor(comfy.base_url, fresh_s=3600, probe_every_s=0.1)  # no thread
    executor = LocalExecutor(
        store, comfy.base_url, work_dir=tmp_path / "work", monitor=monitor, comfy_wait_s=60
    )
    try:
        first = store.create_if_absent(_record(str(uuid.uuid4())))[0]
        executor.start(first, simple_workflow(unique("first")), [])
        assert _settled(store, first.job_id).status == "succeeded"
        comfy.process.stop(grace=2)
        second = store.create_if_absent(_record(str(uuid.uuid4())))[0]
        with caplog.at_level("INFO", logger="ryla_modal.gateway"):
            executor.start(second, simple_workflow(unique("second")), [])
            _waits_for_comfyui(store, second.job_id)
            comfy.process.start(ready_timeout=20)  # back, on the same port
            done = _settled(store, second.job_id, within=60)
        assert done.status == "succeeded", done.error
        assert "did not answer before the job was sent to it" in caplog.text
        assert comfy.prompts_received() == 1  # this process's count: the second job, once
    finally:
        executor.close()


def test_a_job_waiting_for_a_down_comfyui_can_be_cancelled(
    launch_stub: Callable[..., ComfyServer], tmp_path: Path
) -> None:
    """A cancel ends the wait for ComfyUI at once, not after the 60 s the job may wait."""
    comfy = launch_stub()
    comfy.process.stop(grace=2)
    store = MemoryJobStore()
    monitor = ComfyMonitor(comfy.base_url, probe_every_s=0.1)  # no thread
    executor = LocalExecutor(
        store, comfy.base_url, work_dir=tmp_path / "work", monitor=monitor, comfy_wait_s=60
    )
    try:
        job = store.create_if_absent(_record(str(uuid.uuid4())))[0]
        executor.start(job, simple_workflow(unique("waits")), [])
        _waits_for_comfyui(store, job.job_id)
        executor.cancel(job.job_id)
        done = _settled(store, job.job_id, within=10)  # well before comfy_wait_s
        assert done.status == "cancelled", done.error
        assert done.error is not None and "waited for ComfyUI" in done.error.message
    finally:
        executor.close()
