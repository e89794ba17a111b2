"""LocalExecutor's bookkeeping: error mapping, progress throttling, recovery after a restart."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

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
from ryla_modal.gateway.schemas import JobRecord, JobStatus
from ryla_modal.gateway.store import MemoryJobStore


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
