"""Job stores: the same behaviour from the memory and the SQLite store (and restart for SQLite)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ryla_modal.errors import ConfigError
from ryla_modal.gateway import store as store_module
from ryla_modal.gateway.schemas import (
    InputMeta,
    JobError,
    JobRecord,
    Progress,
    WebhookStatus,
    workflow_identity,
)
from ryla_modal.gateway.store import JobStore, MemoryJobStore, SQLiteJobStore


def record(job_id: str = "job-1", sha: str = "a" * 64) -> JobRecord:
    now = time.time()
    return JobRecord(
        job_id=job_id, status="queued", created_at=now, updated_at=now, workflow_sha256=sha
    )


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    s: JobStore = MemoryJobStore() if request.param == "memory" else SQLiteJobStore(tmp_path)
    yield s
    s.close()


def test_create_if_absent_keeps_the_first(store: JobStore) -> None:
    first, created = store.create_if_absent(record(sha="a" * 64))
    assert created
    again, created = store.create_if_absent(record(sha="b" * 64))
    assert not created
    assert again.workflow_sha256 == "a" * 64 == first.workflow_sha256
    assert store.get("job-1") == first
    assert store.get("nope") is None


def test_create_if_absent_is_atomic_across_threads(store: JobStore) -> None:
    barrier = threading.Barrier(16)

    def create(i: int) -> bool:
        barrier.wait(timeout=10)
        return store.create_if_absent(record("race", sha=f"{i:064x}"))[1]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        created = list(pool.map(create, range(16)))
    assert created.count(True) == 1
    winner = created.index(True)
    stored = store.get("race")
    assert stored is not None and stored.workflow_sha256 == f"{winner:064x}"


def test_update_validates_bumps_revision_and_freezes_final_records(store: JobStore) -> None:
    store.create_if_absent(record())
    r = store.update("job-1", status="running", progress=Progress(nodes_done=1, nodes_total=3))
    assert r is not None and r.revision == 1 and r.status == "running"
    assert r.progress is not None and r.progress.nodes_done == 1
    assert r.updated_at >= r.created_at
    with pytest.raises(ValueError, match="status"):
        store.update("job-1", status="exploded")
    done = store.update("job-1", status="cancelled", error=JobError(type="cancelled", message="x"))
    assert done is not None and done.revision == 2
    # A worker finishing late does not overwrite the cancel.
    late = store.update("job-1", status="succeeded")
    assert late is not None and late.status == "cancelled" and late.revision == 2
    forced = store.update("job-1", status="failed", force=True)
    assert forced is not None and forced.status == "failed"
    assert store.update("nope", status="running") is None


def test_list_filters_by_status_oldest_first(store: JobStore) -> None:
    for i in range(3):
        store.create_if_absent(record(f"j{i}"))
        time.sleep(0.002)
    store.update("j1", status="running")
    assert [r.job_id for r in store.list()] == ["j0", "j1", "j2"]
    assert [r.job_id for r in store.list(status="running")] == ["j1"]
    assert [r.job_id for r in store.list(status={"queued", "running"})] == ["j0", "j1", "j2"]
    assert store.list(status="succeeded") == []


def test_count_agrees_with_list(store: JobStore) -> None:
    for i in range(3):
        store.create_if_absent(record(f"c{i}"))
    store.update("c1", status="running")
    store.update("c2", status="failed")
    for wanted in (None, "running", {"queued", "running"}, "succeeded"):
        assert store.count(wanted) == len(store.list(wanted)), wanted


def test_outputs_round_trip(store: JobStore, tmp_path: Path) -> None:
    store.create_if_absent(record())
    src = tmp_path / "src.bin"
    src.write_bytes(b"\x00\x01" * 5000)
    store.put_output("job-1", 0, src)
    store.put_output("job-1", 1, b"hello")
    opened = store.open_output("job-1", 0)
    assert opened is not None
    fh, size = opened
    with fh:
        assert fh.read() == src.read_bytes() and size == 10000
    opened = store.open_output("job-1", 1)
    assert opened is not None and opened[0].read() == b"hello"
    opened[0].close()
    assert store.open_output("job-1", 2) is None
    assert store.open_output("other", 0) is None


def test_an_output_handed_over_with_move_leaves_its_source_gone(
    store: JobStore, tmp_path: Path
) -> None:
    store.create_if_absent(record())
    src = tmp_path / "scratch" / "out.png"
    src.parent.mkdir()
    src.write_bytes(b"\x89PNG" * 1000)
    store.put_output("job-1", 0, src, move=True)
    assert not src.exists()
    opened = store.open_output("job-1", 0)
    assert opened is not None
    with opened[0] as fh:
        assert fh.read() == b"\x89PNG" * 1000 and opened[1] == 4000


def test_wait_for_change_wakes_on_an_update_from_another_thread(store: JobStore) -> None:
    store.create_if_absent(record())

    async def scenario() -> tuple[float, float]:
        t0 = time.monotonic()
        await store.wait_for_change("job-1", 0, 0.2)  # nothing changes: times out
        idle = time.monotonic() - t0
        timer = threading.Timer(0.1, lambda: store.update("job-1", status="running"))
        timer.start()
        t1 = time.monotonic()
        await store.wait_for_change("job-1", 0, 10)
        woke = time.monotonic() - t1
        timer.join()
        return idle, woke

    idle, woke = asyncio.run(scenario())
    assert idle >= 0.19
    assert woke < 5  # woken by the update, not by the 10 s limit
    # Already moved past the revision: answers at once.
    asyncio.run(asyncio.wait_for(store.wait_for_change("job-1", 0, 10), timeout=5))


def test_sqlite_records_and_outputs_survive_a_reopen(tmp_path: Path) -> None:
    s = SQLiteJobStore(tmp_path)
    s.create_if_absent(record())
    s.update("job-1", status="succeeded", timings={"total": 1.5})
    s.put_output("job-1", 0, b"png bytes")
    s.close()

    again = SQLiteJobStore(tmp_path)
    try:
        r = again.get("job-1")
        assert r is not None and r.status == "succeeded" and r.timings.total == 1.5
        opened = again.open_output("job-1", 0)
        assert opened is not None and opened[0].read() == b"png bytes"
        opened[0].close()
    finally:
        again.close()


def test_sqlite_a_write_that_rolls_back_is_not_what_get_answers(tmp_path: Path) -> None:
    """The store keeps recent records in memory: only committed ones may get there."""
    s = SQLiteJobStore(tmp_path)
    try:
        s.create_if_absent(
            record().model_copy(
                update={
                    "webhook": WebhookStatus(events=["succeeded"], state="waiting"),
                    "webhook_url": "https://hooks.example/ryla",
                }
            )
        )
        s.update("job-1", status="running")
        # The write that makes the job final also queues its webhook; that part fails here.
        with sqlite3.connect(tmp_path / "jobs.sqlite3") as other:
            other.execute(
                "CREATE TRIGGER full BEFORE INSERT ON webhook_outbox"
                " BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            )
        with pytest.raises(sqlite3.Error, match="disk full"):
            s.update("job-1", status="succeeded")
        after = s.get("job-1")
        assert after is not None and after.status == "running" and after.revision == 1
    finally:
        s.close()
    again = SQLiteJobStore(tmp_path)
    try:
        reread = again.get("job-1")
        assert reread is not None and reread.status == "running"
    finally:
        again.close()


def test_sqlite_answers_from_the_file_for_jobs_no_longer_kept_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "_RECENT_RECORDS", 2)
    s = SQLiteJobStore(tmp_path)
    try:
        for i in range(6):
            s.create_if_absent(record(f"j{i}"))
        for i in range(6):
            s.update(f"j{i}", status="running", progress=Progress(nodes_done=i, nodes_total=9))
        for i in (0, 5, 1, 4, 0):
            got = s.get(f"j{i}")
            assert got is not None and got.status == "running" and got.revision == 1
            assert got.progress is not None and got.progress.nodes_done == i
        s.update("j0", status="failed")
        final = s.get("j0")
        assert final is not None and final.status == "failed" and final.revision == 2
    finally:
        s.close()


def test_sqlite_folder_is_owned_by_one_process_at_a_time(tmp_path: Path) -> None:
    s = SQLiteJobStore(tmp_path)
    try:
        with pytest.raises(ConfigError, match="another process"):
            SQLiteJobStore(tmp_path)
    finally:
        s.close()
    SQLiteJobStore(tmp_path).close()  # free again once closed


def test_sqlite_refuses_output_paths_outside_its_folder(tmp_path: Path) -> None:
    s = SQLiteJobStore(tmp_path / "data")
    try:
        with pytest.raises(ValueError):
            s.put_output("../escape", 0, b"x")
        assert s.open_output("../../etc", 0) is None
        assert not (tmp_path / "escape").exists()
    finally:
        s.close()


def test_workflow_identity_is_canonical() -> None:
    a = {"1": {"class_type": "X", "inputs": {"a": 1, "b": 2}}}
    b = {"1": {"inputs": {"b": 2, "a": 1}, "class_type": "X"}}
    assert workflow_identity(a) == workflow_identity(b)
    assert workflow_identity(a) != workflow_identity({"1": {"class_type": "X", "inputs": {}}})
    i1 = InputMeta(name="a.png", size=1, sha256="1" * 64)
    i2 = InputMeta(name="a.png", size=1, sha256="2" * 64)
    assert workflow_identity(a, [i1]) != workflow_identity(a, [i2])
    assert workflow_identity(a, [i1]) != workflow_identity(a)
