"""A finished job is seen at once on Modal: long polls wake on the worker's writes.

The REAL ``modal`` package talks to the control-plane stand-in: the worker's signals go through
``modal.Queue.put`` (QueuePut, partition = job id), the gateway blocks in ``Queue.get_many``
(QueueGet) and ``FunctionCall.get`` (FunctionGetOutputs, held until the call has a result).  The
Dict re-read that stays as the safety net is set to 10 s here, so a long poll that answers
within a few seconds answered because of a wake-up, not because of the poll.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import modal
import pytest

from ryla_modal.cloud.store import DictJobStore, JobSignals, modal_call_waiter
from ryla_modal.gateway.schemas import JobRecord, Progress
from tests.fakes.modal_control import FakeModalControl
from tests.test_cloud_backend import MemoryDict

POLL_S = 10.0  # the Dict poll: far longer than any answer these tests accept
WAKE_BOUND_S = POLL_S / 2  # an answer before this came from a wake-up, not from the poll
QUEUE = "test-jobs-events"


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeModalControl]:
    """The stand-in, and this process's modal client pointed at it (then forgotten)."""
    with FakeModalControl() as control:
        for key, value in control.env(tmp_path / "home").items():
            if key.startswith("MODAL_"):
                monkeypatch.setenv(key, value)
        modal.Client._set_env_client(None)
        try:
            yield control
        finally:
            modal.Client._set_env_client(None)
    assert control.errors == [], f"the fake itself failed: {control.errors}"


def _stores(poll_s: float = POLL_S) -> tuple[DictJobStore, DictJobStore, DictJobStore]:
    """(gateway with wake-ups, worker signalling, worker not signalling) on one Dict."""
    d, out = MemoryDict(), Path("/nonexistent-outputs")
    gateway = DictJobStore(
        d,
        outputs_dir=out,
        signals=JobSignals(modal.Queue.from_name(QUEUE, create_if_missing=True)),
        call_waiter=modal_call_waiter,
        poll_s=poll_s,
    )
    signalling = DictJobStore(
        d,
        outputs_dir=out,
        role="worker",
        signals=JobSignals(modal.Queue.from_name(QUEUE, create_if_missing=True)),
    )
    silent = DictJobStore(d, outputs_dir=out, role="worker")
    return gateway, signalling, silent


def _job(gateway: DictJobStore) -> JobRecord:
    now = time.time()
    record, _ = gateway.create_if_absent(
        JobRecord(
            job_id=str(uuid.uuid4()),
            status="queued",
            created_at=now,
            updated_at=now,
            workflow_sha256="7" * 64,
        )
    )
    return record


async def _wait(gateway: DictJobStore, record: JobRecord) -> tuple[JobRecord, float]:
    """What the gateway's long poll does: wait, re-read, until the revision moved."""
    started = time.monotonic()
    deadline = started + 3 * POLL_S
    while (left := deadline - time.monotonic()) > 0:
        await gateway.wait_for_change(record.job_id, record.revision, left)
        now = await asyncio.to_thread(gateway.get, record.job_id)
        assert now is not None
        if now.revision != record.revision:
            return now, time.monotonic() - started
    raise AssertionError("the record never changed")


async def test_the_end_of_the_workers_call_wakes_the_long_poll(fake: FakeModalControl) -> None:
    """The worker writes the final state without any signal: only its FunctionCall ends."""
    gateway, _, silent = _stores()
    record = await asyncio.to_thread(_job, gateway)
    go = threading.Event()

    def worker_call() -> dict[str, Any]:
        assert go.wait(30)
        silent.update(record.job_id, status="running")
        final = silent.update(record.job_id, status="succeeded", phase="done")
        assert final is not None
        return final.public().model_dump(mode="json")

    call_id = fake.start_call(worker_call)
    updated = await asyncio.to_thread(gateway.update, record.job_id, call_id=call_id)
    record = updated or record
    waiting = asyncio.ensure_future(_wait(gateway, record))
    await asyncio.sleep(0.2)  # the long poll is blocked in FunctionGetOutputs now
    assert not waiting.done()
    go.set()
    seen, took = await waiting
    assert seen.status == "succeeded"
    assert took < WAKE_BOUND_S  # woken by the call, not by the 10 s poll
    assert fake.calls_named("FunctionGetOutputs"), "the wait went through FunctionCall.get"


async def test_a_progress_signal_on_the_jobs_partition_wakes_the_long_poll(
    fake: FakeModalControl,
) -> None:
    gateway, signalling, _ = _stores()
    record = await asyncio.to_thread(_job, gateway)
    other = await asyncio.to_thread(_job, gateway)
    timer = threading.Timer(
        0.3,
        lambda: signalling.update(
            record.job_id, status="running", progress=Progress(nodes_done=1, nodes_total=3)
        ),
    )
    timer.start()
    try:
        seen, took = await _wait(gateway, record)
    finally:
        timer.cancel()
    assert seen.status == "running" and seen.progress is not None
    assert took < WAKE_BOUND_S
    puts = fake.calls_named("QueuePut")
    assert record.job_id.encode() in {bytes(p.partition_key) for p in puts}
    assert {bytes(g.partition_key) for g in fake.calls_named("QueueGet")} == {
        record.job_id.encode()
    }
    assert other.job_id.encode() not in {key for _, key in fake.queues}  # one partition a job


async def test_a_backlog_of_signals_is_drained_at_once_not_looped_over(
    fake: FakeModalControl,
) -> None:
    """Signals left while nobody waited wake one poll, which finds nothing new, and the next
    wait blocks again (the backlog went in one read)."""
    gateway, signalling, _ = _stores()
    record = await asyncio.to_thread(_job, gateway)
    for step in range(5):
        await asyncio.to_thread(
            signalling.update, record.job_id, progress=Progress(nodes_done=step, nodes_total=9)
        )
    current = await asyncio.to_thread(gateway.get, record.job_id)
    assert current is not None
    waiting = asyncio.ensure_future(
        gateway.wait_for_change(current.job_id, current.revision, 3 * POLL_S)
    )
    await asyncio.sleep(0.5)
    # The stale signals woke the first wait (the record had not moved since it was read)...
    assert waiting.done()
    (queued,) = [items for key, items in fake.queues.items() if key[1] == record.job_id.encode()]
    assert queued == []
    # ...and a second wait blocks until a real write.
    again = asyncio.ensure_future(_wait(gateway, current))
    await asyncio.sleep(0.5)
    assert not again.done()
    await asyncio.to_thread(signalling.update, record.job_id, status="running")
    seen, took = await again
    assert seen.status == "running" and took < WAKE_BOUND_S


@pytest.mark.filterwarnings("ignore:The ComfyWorker.run function is executing locally")
def test_a_client_long_polling_the_modal_gateway_sees_the_final_state_at_once(
    fake: FakeModalControl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway as Modal builds it, over HTTP, with a ComfyWorker run by the stand-in's
    FunctionCalls: every change reaches the client long before the 10 s Dict poll could."""
    import subprocess
    import sys

    from ryla_modal.cloud.gateway import create_modal_gateway
    from ryla_modal.cloud.settings import AppSettings
    from ryla_modal.cloud.worker import ModalWorker
    from tests.fakes.comfyui_command import fake_comfyui_command
    from tests.gateway_fixtures import UvicornThread
    from tests.test_modal_app import ROOT

    jobs = MemoryDict()  # the stand-in serves no Dict RPCs: the Dict stays an in-memory twin
    monkeypatch.setattr(modal.Dict, "from_name", staticmethod(lambda *a, **k: jobs))
    command = fake_comfyui_command("--temp-directory", str(tmp_path / "comfy-tmp"))
    env = {
        "RYLA_COMFYUI_COMMAND": json.dumps(command),
        "RYLA_OUTPUTS_DIR": str(tmp_path / "volume"),
        "RYLA_JOBS_DICT": "test-jobs",
    }
    monkeypatch.setenv("RYLA_OUTPUTS_DIR", env["RYLA_OUTPUTS_DIR"])
    worker = ModalWorker.from_env(environ=env)
    worker.start_before_snapshot()
    worker.after_restore()

    info = tmp_path / "object_info.json"
    script = ROOT / "src" / "ryla_modal" / "cloud" / "object_info_snapshot.py"
    built = subprocess.run(
        [sys.executable, str(script), "--out", str(info), "--", *fake_comfyui_command()],
        capture_output=True,
        timeout=60,
    )
    assert built.returncode == 0, built.stderr

    class Volume:
        def reload(self) -> None:
            pass

    app = create_modal_gateway(
        AppSettings.from_env(env),
        worker_class="ComfyWorker",
        models_volume=Volume(),
        outputs_volume=Volume(),
        object_info_path=info,
        spawn=lambda payload: fake.start_call(worker.run, payload),
        poll_s=POLL_S,
    )
    server = UvicornThread(app)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60, trust_env=False) as client:
            workflow = {
                "1": {
                    "class_type": "EmptyImage",
                    "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0x445566},
                },
                "2": {
                    "class_type": "SaveImage",
                    "inputs": {"images": ["1", 0], "filename_prefix": "wake"},
                },
            }
            job_id = str(uuid.uuid4())
            resp = client.post("/jobs", json={"job_id": job_id, "workflow": workflow})
            assert resp.status_code == 202, resp.text
            job = resp.json()
            polls: list[float] = []
            for _ in range(50):  # bounded: each answer is a change, the job has a few
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    break
                started = time.monotonic()
                job = client.get(f"/jobs/{job_id}", params={"wait": 25}).json()
                polls.append(time.monotonic() - started)
            assert job["status"] == "succeeded", job
            assert polls and max(polls) < WAKE_BOUND_S, polls
    finally:
        server.stop()
        worker.stop()
    assert fake.calls_named("FunctionGetOutputs") and fake.calls_named("QueueGet")
