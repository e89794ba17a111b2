"""One job lifecycle, two backends: ``ryla serve``'s LocalExecutor and the Modal worker report
the same fields for the same job.

Both run the ComfyUI stand-in through our launcher.  The worker runs in-process the way its
container runs it (``ModalWorker.start`` then ``run(payload)``) on the in-memory ``modal.Dict``
twin, with a gateway-role store on the same Dict reading what it wrote.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ryla_modal.cloud.store import DictJobStore
from ryla_modal.cloud.worker import ModalWorker
from ryla_modal.gateway.executors import LocalExecutor
from ryla_modal.gateway.schemas import TERMINAL_STATUSES, JobRecord, Progress, workflow_identity
from ryla_modal.gateway.store import JobStore, MemoryJobStore
from tests.conftest import simple_workflow, stub_process, unique
from tests.gateway_fixtures import load_image_workflow
from tests.test_cloud_backend import MemoryDict

BACKENDS = ["local", "modal"]
#: Runs a job to its final record: (job record as created, workflow) -> final record.
RunJob = Callable[[JobRecord, dict[str, Any]], JobRecord]


def _wait_final(store: JobStore, job_id: str, timeout: float = 30.0) -> JobRecord:
    deadline = time.monotonic() + timeout
    while True:
        record = store.get(job_id)
        assert record is not None
        if record.status in TERMINAL_STATUSES:
            return record
        assert time.monotonic() < deadline, f"job {job_id} not final after {timeout} s"
        time.sleep(0.02)


@contextlib.contextmanager
def open_backend(name: str, tmp_path: Path) -> Iterator[tuple[str, JobStore, RunJob]]:
    """(name, the store the gateway reads, run a job) for ``local`` or ``modal``."""
    stub = stub_process(tmp_path / "comfy")
    if name == "local":
        stub.process.start(ready_timeout=20)
        store: JobStore = MemoryJobStore()
        executor = LocalExecutor(store, stub.base_url, process=stub.process, work_dir=tmp_path)

        def run_local(record: JobRecord, workflow: dict[str, Any]) -> JobRecord:
            store.create_if_absent(record)
            executor.start(record, workflow, [])
            return _wait_final(store, record.job_id)

        try:
            yield "local", store, run_local
        finally:
            executor.close()
            stub.stop()
        return

    d = MemoryDict()
    gateway = DictJobStore(d, outputs_dir=tmp_path / "volume", role="gateway")
    worker_store = DictJobStore(d, outputs_dir=tmp_path / "volume", role="worker")
    worker = ModalWorker(worker_store, stub.process, ready_timeout_s=20)
    worker.start()  # @modal.enter

    def run_modal(record: JobRecord, workflow: dict[str, Any]) -> JobRecord:
        gateway.create_if_absent(record)  # the gateway stores a job before it spawns it
        worker.run({"job_id": record.job_id, "workflow": workflow, "inputs": []})
        return _wait_final(gateway, record.job_id)

    try:
        yield "modal", gateway, run_modal
    finally:
        worker.stop()  # @modal.exit


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, JobStore, RunJob]]:
    with open_backend(request.param, tmp_path) as opened:
        yield opened


def _record(workflow: dict[str, Any]) -> JobRecord:
    now = time.time()
    return JobRecord(
        job_id=str(uuid.uuid4()),
        status="queued",
        created_at=now,
        updated_at=now,
        workflow_sha256=workflow_identity(workflow),
    )


def _shape(record: JobRecord) -> dict[str, Any]:
    """What must not differ between backends: every field but ids, times and file names."""
    return {
        "status": record.status,
        "phase": record.phase,
        "progress": record.progress,
        "error_type": record.error.type if record.error else None,
        "outputs": [(o.index, o.node_id, o.kind, o.mime) for o in record.outputs],
        "timings": sorted(k for k, v in record.timings.model_dump().items() if v is not None),
    }


SUCCEEDED = {
    "status": "succeeded",
    "phase": "done",
    "progress": Progress(nodes_done=4, nodes_total=4),
    "error_type": None,
    "outputs": [(0, "4", "images", "image/png")],
    "timings": sorted(
        [
            "queued",
            "starting_comfyui",
            "uploading_inputs",
            "waiting_in_comfyui",
            "executing",
            "collecting_outputs",
            "storing_outputs",
            "total",
        ]
    ),
}


def test_a_job_reports_the_same_fields_on_both_backends(
    backend: tuple[str, JobStore, RunJob],
) -> None:
    name, store, run = backend
    workflow = simple_workflow(unique(f"life-{name}"))
    record = _record(workflow)
    started = time.time()

    final = run(record, workflow)

    assert _shape(final) == SUCCEEDED, name
    t = final.timings
    assert t.total is not None and 0 < t.total <= time.time() - record.created_at
    phases = [v for k, v in t.model_dump().items() if k != "total" and v is not None]
    assert all(v >= 0 for v in phases)
    # non-overlapping phases: together they fit in the wall time (small slack for rounding)
    assert sum(phases) <= t.total * 1.001 + 1e-3
    assert final.created_at <= started <= final.updated_at
    opened = store.open_output(final.job_id, 0)
    assert opened is not None
    with opened[0] as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_failed_job_reports_the_same_fields_on_both_backends(
    backend: tuple[str, JobStore, RunJob],
) -> None:
    name, _, run = backend
    workflow = load_image_workflow("never-uploaded.png", unique(f"fail-{name}"))
    final = run(_record(workflow), workflow)
    shape = _shape(final)
    assert shape["status"] == "failed" and shape["outputs"] == []
    assert shape["error_type"] == "prompt_outputs_failed_validation"
    assert final.timings.total is not None and final.timings.queued is not None
    assert final.timings.storing_outputs is None  # never reached


def test_the_two_backends_agree(tmp_path: Path) -> None:
    """The parametrized tests pin each backend to one expected shape; this says why: the
    same graph through both gives equal shapes (nodes_total once differed)."""
    shapes = {}
    for name in BACKENDS:
        with open_backend(name, tmp_path / name) as (_, _, run):
            workflow = simple_workflow(unique(f"agree-{name}"))
            shapes[name] = _shape(run(_record(workflow), workflow))
    assert shapes["local"] == shapes["modal"]
