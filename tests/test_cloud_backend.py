"""DictJobStore and ModalExecutor at their narrowest seams.

Modal's cloud cannot exist here, so exactly two things are replaced: the ``modal.Dict`` (by
``MemoryDict``, whose method signatures are checked against modal's own below) and the
FunctionCall (``spawn`` / ``lookup_call`` callables with modal's real exception classes).
Everything else (records, merge rules, outputs on a folder, lost-job detection) is the real code.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import inspect
import queue as stdlib_queue
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import modal
import pytest
from modal import exception as mx

from ryla_modal.cloud.executor import ModalExecutor
from ryla_modal.cloud.gateway import VolumeModelFiles, list_model_files
from ryla_modal.cloud.store import DictJobStore
from ryla_modal.comfy.runner import InputFile
from ryla_modal.gateway.schemas import JobError, JobRecord, OutputInfo

_MISSING = object()


class MemoryDict:
    """An in-memory twin of ``modal.Dict``'s sync interface (same names and signatures)."""

    def __init__(self) -> None:
        self._data: dict[Any, Any] = {}
        self._lock = threading.Lock()
        self.ops: list[tuple[str, Any]] = []

    def get(self, key: Any, default: Any | None = None) -> Any:
        with self._lock:
            self.ops.append(("get", key))
            return self._data.get(key, default)

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        with self._lock:
            self.ops.append(("put", key))
            if skip_if_exists and key in self._data:
                return False
            self._data[key] = value
            return True

    def __setitem__(self, key: Any, value: Any) -> None:
        self.put(key, value)

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        with self._lock:
            if key in self._data:
                return self._data.pop(key)
        if default is _MISSING:
            raise KeyError(key)
        return default

    def items(self) -> Iterator[tuple[Any, Any]]:
        with self._lock:
            return iter(list(self._data.items()))

    def keys(self) -> list[Any]:
        with self._lock:
            return list(self._data)


class _GetMany:
    """``get_many`` with its ``.aio`` twin, as synchronicity gives modal's methods both."""

    def __init__(self, queue: MemoryQueue) -> None:
        self._queue = queue

    def __call__(
        self, n_values: int, block: bool = True, timeout: float | None = None, *, partition: str
    ) -> list[Any]:
        deadline = time.monotonic() + (timeout or 0.0)
        with self._queue.cond:
            while not self._queue.items.get(partition) and block:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise stdlib_queue.Empty()
                self._queue.cond.wait(left)
            items = self._queue.items.get(partition, [])
            taken, self._queue.items[partition] = items[:n_values], items[n_values:]
            return taken

    async def aio(
        self, n_values: int, block: bool = True, timeout: float | None = None, *, partition: str
    ) -> list[Any]:
        return await asyncio.to_thread(self, n_values, block, timeout, partition=partition)


class MemoryQueue:
    """An in-memory twin of the ``modal.Queue`` calls ``JobSignals`` makes (partitions, FIFO)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.items: dict[str, list[Any]] = {}
        self.get_many = _GetMany(self)

    def put(
        self,
        v: Any,
        block: bool = True,
        timeout: float | None = None,
        *,
        partition: str,
        partition_ttl: int = 24 * 3600,
    ) -> None:
        with self.cond:
            self.items.setdefault(partition, []).append(v)
            self.cond.notify_all()


def test_memory_dict_matches_modal_dict_signatures() -> None:
    for name in ("get", "put", "__setitem__", "pop", "items"):
        ours = inspect.signature(getattr(MemoryDict, name))
        theirs = inspect.signature(getattr(modal.Dict, name))
        assert list(ours.parameters) == list(theirs.parameters), name
        for p, q in zip(ours.parameters.values(), theirs.parameters.values(), strict=True):
            assert p.kind == q.kind, (name, p.name)


def new_record(job_id: str | None = None, **fields: Any) -> JobRecord:
    now = time.time()
    base: dict[str, Any] = {
        "job_id": job_id or str(uuid.uuid4()),
        "status": "queued",
        "created_at": now,
        "updated_at": now,
        "workflow_sha256": "0" * 64,
    }
    return JobRecord.model_validate({**base, **fields})


@pytest.fixture
def d() -> MemoryDict:
    return MemoryDict()


@pytest.fixture
def gateway_store(d: MemoryDict, tmp_path: Path) -> DictJobStore:
    return DictJobStore(d, outputs_dir=tmp_path / "outputs", role="gateway")


@pytest.fixture
def worker_store(d: MemoryDict, tmp_path: Path) -> DictJobStore:
    return DictJobStore(d, outputs_dir=tmp_path / "outputs", role="worker")


# --- the store ----------------------------------------------------------------------------------


def test_create_is_idempotent_and_atomic(gateway_store: DictJobStore, d: MemoryDict) -> None:
    job_id = str(uuid.uuid4())
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def create(i: int) -> None:
        barrier.wait()
        _, created = gateway_store.create_if_absent(new_record(job_id, timeout_s=i + 1))
        results.append(created)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(results) == [False] * 7 + [True]
    stored = gateway_store.get(job_id)
    assert stored is not None and stored.status == "queued"
    assert ("put", f"job:{job_id}") in d.ops  # through put(..., skip_if_exists=True)


def test_worker_progress_and_gateway_cancel_do_not_overwrite_each_other(
    gateway_store: DictJobStore, worker_store: DictJobStore
) -> None:
    record, _ = gateway_store.create_if_absent(new_record())
    job_id = record.job_id
    gateway_store.update(job_id, call_id="fc-1", phase="waiting_for_gpu")
    running = worker_store.update(job_id, status="running", phase="executing")
    assert running is not None and running.status == "running"
    gateway_store.update(job_id, cancel_requested=True)
    # The worker writes progress from its own (stale) view: the cancel flag must survive.
    worker_store.update(job_id, phase="executing", timings={"queued": 1.0})

    now = gateway_store.get(job_id)
    assert now is not None
    assert now.cancel_requested is True
    assert now.call_id == "fc-1"
    assert (now.status, now.phase) == ("running", "executing")
    assert worker_store.cancel_requested(job_id) is True


def test_the_first_final_status_wins(
    gateway_store: DictJobStore, worker_store: DictJobStore
) -> None:
    record, _ = gateway_store.create_if_absent(new_record())
    job_id = record.job_id
    worker_store.update(job_id, status="running")
    cancelled = gateway_store.update(
        job_id, status="cancelled", error=JobError(type="cancelled", message="by user")
    )
    assert cancelled is not None and cancelled.status == "cancelled"

    late = worker_store.update(job_id, status="succeeded", phase="done")
    assert late is not None and late.status == "cancelled"
    progress = worker_store.update(job_id, phase="executing")
    assert progress is not None and progress.status == "cancelled"
    final = gateway_store.get(job_id)
    assert final is not None and final.status == "cancelled" and final.phase != "done"

    forced = gateway_store.update(job_id, force=True, call_id="fc-late")
    assert forced is not None and forced.call_id == "fc-late"
    assert forced.status == "cancelled"


def test_every_write_moves_the_revision(
    gateway_store: DictJobStore, worker_store: DictJobStore
) -> None:
    record, _ = gateway_store.create_if_absent(new_record())
    job_id = record.job_id
    seen = [record.revision]
    for write in (
        lambda: gateway_store.update(job_id, call_id="fc-2"),
        lambda: worker_store.update(job_id, status="running"),
        lambda: worker_store.update(job_id, phase="collecting_outputs"),
        lambda: gateway_store.update(job_id, cancel_requested=True),
        lambda: worker_store.update(job_id, status="failed"),
    ):
        write()
        now = gateway_store.get(job_id)
        assert now is not None
        seen.append(now.revision)
    assert seen == sorted(set(seen)), seen


def test_a_worker_changes_only_live_fields(
    gateway_store: DictJobStore, worker_store: DictJobStore
) -> None:
    record, _ = gateway_store.create_if_absent(new_record())
    with pytest.raises(ValueError, match="call_id"):
        worker_store.update(record.job_id, call_id="fc-x")


def test_unknown_jobs_and_bad_ids(gateway_store: DictJobStore) -> None:
    assert gateway_store.get("nope") is None
    assert gateway_store.update("nope", status="running") is None
    assert gateway_store.open_output("../etc", 0) is None
    with pytest.raises(ValueError):
        gateway_store.put_output("../etc", 0, b"x")


def test_outputs_are_committed_before_the_record_says_succeeded(
    d: MemoryDict, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    seen_at_commit: list[Any] = []

    def commit() -> None:
        seen_at_commit.append(d.get(f"final:{job_id}"))

    gateway = DictJobStore(d, outputs_dir=volume)
    worker = DictJobStore(d, outputs_dir=volume, role="worker", commit_outputs=commit)
    record, _ = gateway.create_if_absent(new_record())
    job_id = record.job_id
    worker.update(job_id, status="running")
    data = b"\x89PNG fake image bytes"
    worker.put_output(job_id, 0, data)
    out = OutputInfo(
        index=0,
        node_id="9",
        filename="a.png",
        kind="images",
        mime="image/png",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    worker.update(job_id, status="succeeded", phase="done", outputs=[out])

    assert seen_at_commit == [None]  # committed once, before the final record existed
    opened = gateway.open_output(job_id, 0)
    assert opened is not None
    fh, size = opened
    with fh:
        assert (fh.read(), size) == (data, len(data))
    assert gateway.open_output(job_id, 1) is None


def test_a_missing_output_reloads_the_volume_once(d: MemoryDict, tmp_path: Path) -> None:
    committed = tmp_path / "committed"
    mounted = tmp_path / "mounted"
    (committed / "job-1").mkdir(parents=True)
    (committed / "job-1" / "0").write_bytes(b"abc")
    reloads: list[int] = []

    def reload() -> None:  # what Volume.reload does: the committed state appears here
        reloads.append(1)
        if mounted.exists():
            return
        mounted.mkdir()
        (mounted / "job-1").mkdir()
        (mounted / "job-1" / "0").write_bytes((committed / "job-1" / "0").read_bytes())

    store = DictJobStore(d, outputs_dir=mounted, reload_outputs=reload)
    opened = store.open_output("job-1", 0)
    assert opened is not None
    fh, size = opened
    with fh:
        assert (fh.read(), size) == (b"abc", 3)
    assert len(reloads) == 1
    opened = store.open_output("job-1", 0)
    assert opened is not None
    opened[0].close()
    assert len(reloads) == 1  # present now: no reload

    def broken() -> None:
        raise mx.ConflictError("there are open files preventing the operation")

    busy = DictJobStore(d, outputs_dir=tmp_path / "other", reload_outputs=broken)
    assert busy.open_output("job-1", 0) is None


def test_list_merges_and_filters(gateway_store: DictJobStore, worker_store: DictJobStore) -> None:
    a, _ = gateway_store.create_if_absent(new_record(created_at=1.0, updated_at=1.0))
    b, _ = gateway_store.create_if_absent(new_record(created_at=2.0, updated_at=2.0))
    c, _ = gateway_store.create_if_absent(new_record(created_at=3.0, updated_at=3.0))
    worker_store.update(b.job_id, status="running")
    worker_store.update(c.job_id, status="failed")
    fresh = DictJobStore(gateway_store._d, outputs_dir=gateway_store.outputs_dir)
    assert [r.job_id for r in fresh.list()] == [a.job_id, b.job_id, c.job_id]
    assert [r.job_id for r in fresh.list(status=("queued", "running"))] == [a.job_id, b.job_id]
    assert [r.status for r in fresh.list(status="running")] == ["running"]


async def test_long_polls_see_worker_writes(
    gateway_store: DictJobStore, worker_store: DictJobStore
) -> None:
    record, _ = gateway_store.create_if_absent(new_record())
    timer = threading.Timer(0.2, lambda: worker_store.update(record.job_id, status="running"))
    timer.start()
    try:
        started = time.monotonic()
        await gateway_store.wait_for_change(record.job_id, record.revision, 10)
        assert time.monotonic() - started < 9
    finally:
        timer.cancel()
    now = gateway_store.get(record.job_id)
    assert now is not None and now.status == "running"


# --- the executor ---------------------------------------------------------------------------


class FakeCall:
    """A FunctionCall stand-in: ``get(timeout=0)`` returns ``result`` or raises ``error``."""

    def __init__(self) -> None:
        self.result: Any = None
        self.error: BaseException | None = mx.TimeoutError()
        self.cancelled: list[bool] = []
        self.gets = 0

    def get(self, timeout: float | None = None) -> Any:
        assert timeout == 0, "the gateway must never block on a worker"
        self.gets += 1
        if self.error is not None:
            raise self.error
        return self.result

    def cancel(self, terminate_containers: bool = False) -> None:
        self.cancelled.append(terminate_containers)


class FakeModal:
    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        self.calls: dict[str, FakeCall] = {}

    def spawn(self, payload: dict[str, Any]) -> str:
        self.payloads.append(payload)
        call_id = f"fc-{len(self.payloads)}"
        self.calls[call_id] = FakeCall()
        return call_id

    def lookup(self, call_id: str) -> FakeCall:
        return self.calls[call_id]


@pytest.fixture
def fake_modal() -> FakeModal:
    return FakeModal()


@pytest.fixture
def executor(gateway_store: DictJobStore, fake_modal: FakeModal) -> ModalExecutor:
    return ModalExecutor(
        gateway_store, spawn=fake_modal.spawn, lookup_call=fake_modal.lookup, check_interval_s=0
    )


def started_job(store: DictJobStore, executor: ModalExecutor, **fields: Any) -> JobRecord:
    record, _ = store.create_if_absent(new_record(**fields))
    workflow = {"1": {"class_type": "EmptyImage", "inputs": {}}}
    executor.start(record, workflow, [InputFile("in.png", b"\x00\x01")])
    now = store.get(record.job_id)
    assert now is not None
    return now


def test_start_spawns_once_and_keeps_the_call_id(
    gateway_store: DictJobStore, executor: ModalExecutor, fake_modal: FakeModal
) -> None:
    record = started_job(gateway_store, executor, timeout_s=90)

    (payload,) = fake_modal.payloads
    assert payload["job_id"] == record.job_id
    assert payload["timeout_s"] == 90
    assert payload["workflow"] == {"1": {"class_type": "EmptyImage", "inputs": {}}}
    assert payload["inputs"] == [{"name": "in.png", "data_b64": base64.b64encode(b"\0\1").decode()}]
    assert (record.call_id, record.phase, record.status) == (
        "fc-1",
        "waiting_for_gpu",
        "queued",
    )
    executor.start(record, {}, [])  # a record with a call id is never spawned again
    assert len(fake_modal.payloads) == 1


def test_a_pending_call_leaves_the_job_alone_and_lookups_are_throttled(
    gateway_store: DictJobStore, fake_modal: FakeModal
) -> None:
    clock = [1000.0]
    executor = ModalExecutor(
        gateway_store,
        spawn=fake_modal.spawn,
        lookup_call=fake_modal.lookup,
        check_interval_s=5,
        clock=lambda: clock[0],
    )
    record = started_job(gateway_store, executor)
    call = fake_modal.calls["fc-1"]
    assert executor.check(record) == record
    assert executor.check(record) == record
    assert call.gets == 1
    clock[0] += 5
    call.error = mx.ConnectionError("control plane unreachable")  # our trouble, not the job's
    assert executor.check(record).status == "queued"
    assert call.gets == 2


def test_modals_builtin_timeout_means_no_result_yet_without_a_warning(
    gateway_store: DictJobStore,
    executor: ModalExecutor,
    fake_modal: FakeModal,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """modal 1.6.4's ``FunctionCall.get(timeout=0)`` raises the built-in TimeoutError (an
    OSError), not ``modal.exception.TimeoutError``: still "running", and nothing to warn about."""
    record = started_job(gateway_store, executor)
    fake_modal.calls["fc-1"].error = TimeoutError()
    with caplog.at_level("WARNING", logger="ryla_modal.gateway"):
        assert executor.check(record).status == "queued"
    assert caplog.records == []


@pytest.mark.parametrize(
    ("error", "status", "error_type", "words"),
    [
        (mx.FunctionTimeoutError("timed out"), "failed", "timeout", "Modal timeout"),
        (mx.OutputExpiredError(), "failed", "worker_died", "expired"),
        (mx.RemoteError("container crashed: OOM"), "failed", "worker_died", "OOM"),
        (ValueError("job 'x' is not in the job store"), "failed", "worker_died", "job store"),
    ],
)
def test_a_call_that_ended_without_a_final_state_is_settled(
    gateway_store: DictJobStore,
    executor: ModalExecutor,
    fake_modal: FakeModal,
    error: BaseException,
    status: str,
    error_type: str,
    words: str,
) -> None:
    record = started_job(gateway_store, executor)
    fake_modal.calls["fc-1"].error = error

    settled = executor.check(record)

    assert settled.status == status
    assert settled.error is not None and settled.error.type == error_type
    assert words in settled.error.message
    assert gateway_store.get(record.job_id) == settled


def test_a_finished_call_supplies_the_final_state_the_store_missed(
    gateway_store: DictJobStore, executor: ModalExecutor, fake_modal: FakeModal
) -> None:
    record = started_job(gateway_store, executor)
    call = fake_modal.calls["fc-1"]
    call.error = None
    call.result = {
        "job_id": record.job_id,
        "status": "succeeded",
        "phase": "done",
        "created_at": record.created_at,
        "updated_at": time.time(),
        "outputs": [
            {
                "index": 0,
                "node_id": "9",
                "filename": "a.png",
                "kind": "images",
                "mime": "image/png",
                "size": 3,
                "sha256": "a" * 64,
            }
        ],
        "timings": {"total": 2.5},
    }

    settled = executor.check(record)

    assert settled.status == "succeeded"
    assert [o.filename for o in settled.outputs] == ["a.png"]
    assert settled.timings.total == 2.5

    other = started_job(gateway_store, executor)
    fake_modal.calls["fc-2"].error = None
    fake_modal.calls["fc-2"].result = "something else"
    lost = executor.check(other)
    assert lost.status == "failed" and lost.error is not None
    assert "without a final status" in lost.error.message


def test_a_job_never_spawned_fails_after_the_grace(
    gateway_store: DictJobStore, fake_modal: FakeModal
) -> None:
    executor = ModalExecutor(
        gateway_store, spawn=fake_modal.spawn, lookup_call=fake_modal.lookup, lost_grace_s=30
    )
    young, _ = gateway_store.create_if_absent(new_record())
    assert executor.check(young).status == "queued"
    old, _ = gateway_store.create_if_absent(new_record(created_at=time.time() - 60))
    settled = executor.check(old)
    assert settled.status == "failed" and settled.error is not None
    assert "before it started" in settled.error.message


def test_cancel_of_a_queued_job_cancels_the_call_and_the_record(
    gateway_store: DictJobStore, executor: ModalExecutor, fake_modal: FakeModal
) -> None:
    record = started_job(gateway_store, executor)
    executor.cancel(record.job_id)
    assert fake_modal.calls["fc-1"].cancelled == [False]
    now = gateway_store.get(record.job_id)
    assert now is not None and now.status == "cancelled"


def test_cancel_of_a_running_job_is_left_to_the_worker_then_settled(
    gateway_store: DictJobStore,
    worker_store: DictJobStore,
    executor: ModalExecutor,
    fake_modal: FakeModal,
) -> None:
    record = started_job(gateway_store, executor)
    worker_store.update(record.job_id, status="running", phase="executing")
    gateway_store.update(record.job_id, cancel_requested=True)  # what POST /cancel writes first
    executor.cancel(record.job_id)
    assert fake_modal.calls["fc-1"].cancelled == [False]
    now = gateway_store.get(record.job_id)
    assert now is not None and now.status == "running"  # the worker stops the prompt and says so

    fake_modal.calls["fc-1"].error = mx.InputCancellation("Input was cancelled by user")
    settled = executor.check(now)
    assert settled.status == "cancelled"


# --- model files on the models volume -------------------------------------------------------


def test_model_files_are_listed_by_folder_and_refreshed(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "checkpoints" / "sdxl").mkdir(parents=True)
    (root / "checkpoints" / "sdxl" / "base.safetensors").write_bytes(b"")
    (root / "checkpoints" / ".hidden").write_bytes(b"")
    (root / "loras").mkdir()
    (root / "loras" / "style.safetensors").write_bytes(b"")
    assert list_model_files(root) == {
        "checkpoints": ["sdxl/base.safetensors"],
        "loras": ["style.safetensors"],
    }
    assert list_model_files(tmp_path / "absent") == {}

    reloads: list[int] = []
    files = VolumeModelFiles(root, reload=lambda: reloads.append(1), ttl_s=0)
    assert dict(files)["loras"] == ["style.safetensors"]
    (root / "vae").mkdir()
    (root / "vae" / "ae.safetensors").write_bytes(b"")
    assert files["vae"] == ["ae.safetensors"]
    assert reloads  # later listings reload the volume first
