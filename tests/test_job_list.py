"""The job list (``JobStore.page``, GET /jobs), a job's logs (GET /jobs/{id}/logs) and the
public ``call_id``: the same pages from the memory, SQLite and modal.Dict stores."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ryla_modal.cloud.store import DictJobStore
from ryla_modal.gateway.schemas import JobRecord
from ryla_modal.gateway.store import JobStore, MemoryJobStore, SQLiteJobStore
from tests.conftest import ComfyServer, simple_workflow, unique
from tests.gateway_fixtures import Gateway, running_gateway, wait_job
from tests.test_cloud_backend import MemoryDict

STORES = ["memory", "sqlite", "dict"]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    s: JobStore
    if request.param == "memory":
        s = MemoryJobStore()
    elif request.param == "sqlite":
        s = SQLiteJobStore(tmp_path)
    else:
        s = DictJobStore(MemoryDict(), outputs_dir=tmp_path / "out")
    yield s
    s.close()


def _fill(store: JobStore, n: int) -> list[str]:
    """``n`` jobs created 1 s apart (job-000 oldest); every third one succeeded."""
    base = time.time() - n
    ids = []
    for i in range(n):
        job_id = f"job-{i:03d}"
        store.create_if_absent(
            JobRecord(
                job_id=job_id,
                status="queued",
                created_at=base + i,
                updated_at=base + i,
                workflow_sha256="0" * 64,
            )
        )
        if i % 3 == 0:
            store.update(job_id, status="succeeded")
        ids.append(job_id)
    return ids


def test_pages_walk_every_job_newest_first(store: JobStore) -> None:
    ids = _fill(store, 25)
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):  # bounded: 25 jobs in pages of 10 is 3 pages
        page, cursor = store.page(limit=10, before=cursor)
        assert len(page) <= 10
        seen += [r.job_id for r in page]
        if cursor is None:
            break
    assert seen == list(reversed(ids))


def test_a_page_filters_by_status(store: JobStore) -> None:
    ids = _fill(store, 12)
    page, cursor = store.page(status={"succeeded"}, limit=100)
    assert [r.job_id for r in page] == [i for i in reversed(ids) if int(i[-3:]) % 3 == 0]
    assert cursor is None
    first, cursor = store.page(status={"queued", "running"}, limit=3)
    assert [r.job_id for r in first] == ["job-011", "job-010", "job-008"]
    rest, _ = store.page(status={"queued"}, limit=100, before=cursor)
    assert [r.job_id for r in rest] == ["job-007", "job-005", "job-004", "job-002", "job-001"]


def test_an_empty_store_and_a_bad_cursor(store: JobStore) -> None:
    assert store.page(limit=5) == ([], None)
    with pytest.raises(ValueError, match="cursor"):
        store.page(limit=5, before="not-a-cursor!")


def test_the_dict_store_pages_without_scanning_the_dict(tmp_path: Path) -> None:
    d = MemoryDict()
    store = DictJobStore(d, outputs_dir=tmp_path / "out")
    _fill(store, 40)
    d.ops.clear()
    page, _ = store.page(limit=5)
    assert [r.job_id for r in page] == ["job-039", "job-038", "job-037", "job-036", "job-035"]
    # index reads + record reads for five jobs: far fewer than the Dict's 40+ jobs' keys
    assert len(d.ops) < 40, d.ops
    assert not any(op == "items" for op, _ in d.ops)


def test_the_dict_index_survives_a_stale_hint(tmp_path: Path) -> None:
    """Two gateway containers may both read the same hint: slots are claimed, never shared."""
    d = MemoryDict()
    a = DictJobStore(d, outputs_dir=tmp_path / "out")
    b = DictJobStore(d, outputs_dir=tmp_path / "out")
    _fill(a, 3)
    d.put("index:next", 0)  # a lagging hint
    _fill_one(b, "late")
    page, _ = a.page(limit=10)
    assert [r.job_id for r in page] == ["late", "job-002", "job-001", "job-000"]


def _fill_one(store: JobStore, job_id: str) -> None:
    now = time.time()
    store.create_if_absent(
        JobRecord(
            job_id=job_id, status="queued", created_at=now, updated_at=now, workflow_sha256="0" * 64
        )
    )


# --- over HTTP ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(comfy: ComfyServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(comfy, tmp_path_factory.mktemp("list-gw")) as gateway:
        yield gateway


def test_get_jobs_lists_pages_and_refuses_bad_values(gw: Gateway) -> None:
    c = gw.client()
    ids = []
    for _ in range(3):
        resp = c.post("/jobs", json={"workflow": simple_workflow(unique("list"))})
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["job_id"])
    for job_id in ids:
        wait_job(c, job_id)
    first = c.get("/jobs", params={"limit": 2})
    assert first.status_code == 200, first.text
    body = first.json()
    assert [j["job_id"] for j in body["jobs"]] == ids[::-1][:2] and body["next"]
    rest = c.get("/jobs", params={"limit": 100, "before": body["next"]}).json()
    assert ids[0] in [j["job_id"] for j in rest["jobs"]]
    done = c.get("/jobs", params={"status": "succeeded,failed", "limit": 100}).json()
    assert set(ids) <= {j["job_id"] for j in done["jobs"]}
    assert all(j["status"] in ("succeeded", "failed") for j in done["jobs"])
    for bad in ({"limit": 0}, {"limit": 101}, {"status": "exploded"}, {"before": "%%%"}):
        resp = c.get("/jobs", params=bad)
        assert resp.status_code == 422, (bad, resp.text)
        assert resp.json()["error"]["type"] == "invalid_request"


def test_get_job_logs_gives_comfyuis_lines_of_that_run(gw: Gateway) -> None:
    c = gw.client()
    resp = c.post("/jobs", json={"workflow": simple_workflow(unique("logs"))})
    job = wait_job(c, resp.json()["job_id"])
    assert job["status"] == "succeeded" and job["call_id"] is None
    logs = c.get(f"/jobs/{job['job_id']}/logs")
    assert logs.status_code == 200, logs.text
    body = logs.json()
    assert body["source"] == "comfyui" and body["job_id"] == job["job_id"]
    # ComfyUI (and the stand-in) logs the end of each prompt it ran
    assert any("Prompt executed in" in line for line in body["lines"]), body["lines"][-20:]
    assert c.get("/jobs/nope/logs").status_code == 404


def test_on_modal_logs_point_at_the_function_call(tmp_path: Path) -> None:
    from ryla_modal.cloud.executor import ModalExecutor

    store = DictJobStore(MemoryDict(), outputs_dir=tmp_path / "out")
    executor = ModalExecutor(store, spawn=lambda payload: "fc-01JTESTCALL")
    _fill_one(store, "on-modal")
    record = store.get("on-modal")
    assert record is not None
    executor.start(record, {}, [])
    record = store.get("on-modal")
    assert record is not None and record.public().call_id == "fc-01JTESTCALL"
    logs = executor.logs(record)
    assert (logs.source, logs.lines, logs.call_id) == ("modal", [], "fc-01JTESTCALL")
