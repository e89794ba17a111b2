"""The job API over real HTTP: uvicorn on 127.0.0.1, LocalExecutor, the ComfyUI stand-in.

Each test gets its own stand-in (it starts in well under a second), so its ``/_fake/stats``
counts only that test's prompts.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from ryla_modal.gateway.app import Limits
from ryla_modal.gateway.schemas import Job, JobRecord
from ryla_modal.gateway.store import MemoryJobStore
from tests.conftest import ComfyServer, simple_workflow, slow_workflow, unique
from tests.gateway_fixtures import (
    TERMINAL,
    Gateway,
    b64,
    gateway_maker,
    load_image_workflow,
    png_bytes,
    running_gateway,
    sha256,
    wait_job,
)

MakeGateway = Callable[..., Gateway]


@pytest.fixture
def make_gateway(launch_stub: Callable[..., ComfyServer], tmp_path: Path) -> Iterator[MakeGateway]:
    yield from gateway_maker(launch_stub, tmp_path)


def new_id() -> str:
    return str(uuid.uuid4())


def submit(client: httpx.Client, workflow: dict[str, Any], **extra: Any) -> httpx.Response:
    return client.post("/jobs", json={"workflow": workflow, **extra})


def wait_until(
    client: httpx.Client, job_id: str, pred: Callable[[dict[str, Any]], bool], timeout: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}", params={"wait": 2}).json()
        if pred(job):
            return job
        assert job["status"] not in TERMINAL, f"job ended before the condition held: {job}"
        assert time.monotonic() < deadline, f"condition not reached in {timeout} s: {job}"


# --- the happy path ---------------------------------------------------------------------------


def test_submit_poll_download_with_checksum(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    c = gw.client()
    job_id = new_id()
    resp = submit(c, simple_workflow(unique("gw")), job_id=job_id)
    assert resp.status_code == 202, resp.text
    assert resp.json()["job_id"] == job_id
    assert resp.json()["status"] in {"queued", "running"}

    job = wait_job(c, job_id)
    assert job["status"] == "succeeded", job
    Job.model_validate(job)  # the answer parses with the published schema
    assert job["phase"] == "done"
    assert job["progress"]["nodes_done"] == job["progress"]["nodes_total"] == 4
    assert job["timings"]["total"] > 0 and job["timings"]["queued"] is not None
    [out] = job["outputs"]
    assert out["index"] == 0 and out["node_id"] == "4" and out["kind"] == "images"

    resp = c.get(f"/jobs/{job_id}/outputs/0")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "image/png" == out["mime"]
    assert int(resp.headers["content-length"]) == len(resp.content) == out["size"]
    assert resp.headers["x-sha256"] == sha256(resp.content) == out["sha256"]
    # The very bytes ComfyUI wrote.
    assert (gw.comfy.output_dir / out["filename"]).read_bytes() == resp.content
    assert gw.stats()["prompt_ids"] == [job_id]


def test_server_makes_a_job_id_when_none_is_given(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    c = gw.client()
    resp = submit(c, simple_workflow(unique("noid")))
    assert resp.status_code == 202
    job_id = resp.json()["job_id"]
    assert str(uuid.UUID(job_id)) == job_id
    assert wait_job(c, job_id)["status"] == "succeeded"


def test_input_files_are_uploaded_and_used(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    c = gw.client()
    name = f"{unique('in')}.png"
    resp = submit(
        c,
        load_image_workflow(name, unique("inv")),
        job_id=new_id(),
        inputs=[{"name": name, "data_b64": b64(png_bytes((200, 30, 30)))}],
    )
    assert resp.status_code == 202, resp.text
    job = wait_job(c, resp.json()["job_id"])
    assert job["status"] == "succeeded", job
    data = c.get(f"/jobs/{job['job_id']}/outputs/0").content
    with Image.open(io.BytesIO(data)) as img:
        assert img.convert("RGB").getpixel((0, 0)) == (55, 225, 225)  # inverted


# --- idempotency and concurrency -------------------------------------------------------------


def test_same_job_id_three_times_runs_once(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    c = gw.client()
    job_id = new_id()
    wf = slow_workflow("stub", unique("idem"), steps=5, step_seconds=0.05)
    first = submit(c, wf, job_id=job_id)
    second = submit(c, wf, job_id=job_id)  # while it is queued or running
    assert (first.status_code, second.status_code) == (202, 200)
    assert second.json()["job_id"] == job_id
    assert wait_job(c, job_id)["status"] == "succeeded"
    third = submit(c, wf, job_id=job_id)  # after it finished
    assert third.status_code == 200
    assert third.json()["status"] == "succeeded"

    stats = gw.stats()
    assert stats["prompts_received"] == 1
    assert stats["prompt_ids"] == [job_id]

    other = submit(c, simple_workflow(unique("other")), job_id=job_id)
    assert other.status_code == 409
    assert other.json()["error"]["type"] == "job_id_conflict"
    assert job_id in other.json()["error"]["message"]
    assert gw.stats()["prompts_received"] == 1


def test_same_inputs_other_bytes_is_a_conflict(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    c = gw.client()
    job_id, name = new_id(), "pic.png"
    wf = load_image_workflow(name, unique("inb"))
    one = [{"name": name, "data_b64": b64(png_bytes((1, 2, 3)))}]
    two = [{"name": name, "data_b64": b64(png_bytes((4, 5, 6)))}]
    assert submit(c, wf, job_id=job_id, inputs=one).status_code == 202
    assert submit(c, wf, job_id=job_id, inputs=one).status_code == 200
    assert submit(c, wf, job_id=job_id, inputs=two).status_code == 409
    wait_job(c, job_id)


def test_fifty_concurrent_submits_all_finish_once(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    ids = [new_id() for _ in range(50)]

    def post(job_id: str) -> int:
        with httpx.Client(
            base_url=gw.url,
            headers={"authorization": f"Bearer {gw.token}"},
            timeout=30,
            trust_env=False,
        ) as c:
            return submit(c, simple_workflow(unique("many")), job_id=job_id).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(post, ids))
    assert codes == [202] * 50

    c = gw.client()
    jobs = [wait_job(c, job_id, timeout=60) for job_id in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * 50
    assert len({j["outputs"][0]["sha256"] for j in jobs}) > 1  # each job its own image
    stats = gw.stats()
    assert stats["prompts_received"] == 50
    assert sorted(stats["prompt_ids"]) == sorted(ids)
    assert sorted(r.job_id for r in gw.store.list()) == sorted(ids)


# --- cancel ------------------------------------------------------------------------------------


def test_cancel_mid_job_interrupts_comfyui(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    c = gw.client()
    job_id = new_id()
    wf = slow_workflow("stub", unique("cancel"), steps=200, step_seconds=0.05)
    assert submit(c, wf, job_id=job_id).status_code == 202
    running = wait_until(c, job_id, lambda j: ((j["progress"] or {}).get("step") or 0) >= 2)
    assert running["status"] == "running"

    resp = c.post(f"/jobs/{job_id}/cancel")
    assert resp.status_code == 202
    job = wait_job(c, job_id)
    assert job["status"] == "cancelled", job
    assert job["error"]["type"] == "cancelled"
    # ComfyUI itself recorded the interrupt of this prompt.
    history = httpx.get(f"{gw.comfy.base_url}/history/{job_id}", timeout=10).json()[job_id]
    kinds = [m[0] for m in history["status"]["messages"]]
    assert "execution_interrupted" in kinds
    assert c.get(f"/jobs/{job_id}/outputs/0").status_code == 409
    # Cancelling again changes nothing.
    again = c.post(f"/jobs/{job_id}/cancel")
    assert again.status_code == 202 and again.json()["status"] == "cancelled"


def test_cancel_queued_job_never_reaches_comfyui(make_gateway: MakeGateway) -> None:
    gw = make_gateway(workers=1)
    c = gw.client()
    busy, queued = new_id(), new_id()
    # Steps far longer than the test: busy is still running when it is cancelled, on any machine.
    slow = slow_workflow("stub", unique("busy"), steps=3, step_seconds=600.0)
    assert submit(c, slow, job_id=busy).status_code == 202
    wait_until(c, busy, lambda j: j["status"] == "running")
    assert submit(c, simple_workflow(unique("q")), job_id=queued).status_code == 202
    assert c.get(f"/jobs/{queued}").json()["status"] == "queued"

    resp = c.post(f"/jobs/{queued}/cancel")
    assert resp.status_code == 202
    assert resp.json()["status"] == "cancelled"
    assert c.post(f"/jobs/{busy}/cancel").status_code == 202
    assert wait_job(c, busy)["status"] == "cancelled"
    assert queued not in gw.stats()["prompt_ids"]


# --- validation and errors from ComfyUI --------------------------------------------------------


def test_object_info_validation_rejects_before_comfyui(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    c = gw.client()
    wf = simple_workflow(unique("bad"))
    wf["3"]["inputs"]["sigma"] = 500.0  # above ImageBlur's max
    wf["2"]["class_type"] = "ImageInvert"
    wf["1"]["inputs"]["width"] = "wide"  # not an INT
    job_id = new_id()
    resp = submit(c, wf, job_id=job_id)
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["type"] == "prompt_outputs_failed_validation"
    assert set(err["node_errors"]) == {"1", "3"}
    kinds = {e["type"] for n in err["node_errors"].values() for e in n["errors"]}
    assert kinds == {"value_bigger_than_max", "invalid_input_type"}
    assert err["node_errors"]["3"]["class_type"] == "ImageBlur"
    assert "sigma" in err["message"] and "node 3" in err["message"]

    unknown = simple_workflow(unique("bad"))
    unknown["2"]["class_type"] = "NoSuchNode"
    resp = submit(c, unknown)
    assert resp.status_code == 422
    assert resp.json()["error"]["type"] == "invalid_prompt"
    assert "NoSuchNode" in resp.json()["error"]["message"]

    assert gw.stats()["prompts_received"] == 0  # nothing reached ComfyUI
    assert c.get(f"/jobs/{job_id}").status_code == 404  # and no job was made


def test_validate_route_and_object_info(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    c = gw.client()
    ok = c.post("/validate", json={"workflow": simple_workflow("v")})
    assert ok.status_code == 200 and ok.json()["ok"] is True and ok.json()["checked"] is True
    bad = simple_workflow("v")
    bad["3"]["inputs"]["sigma"] = 500.0
    report = c.post("/validate", json={"workflow": bad}).json()
    assert report["ok"] is False and set(report["node_errors"]) == {"3"}
    info = c.get("/object_info")
    assert info.status_code == 200 and "RylaSlowSteps" in info.json()
    assert gw.stats()["prompts_received"] == 0


def test_without_object_info_comfyui_validation_is_carried(
    make_gateway: MakeGateway,
) -> None:
    gw = make_gateway(validate=False)
    c = gw.client()
    wf = simple_workflow(unique("late"))
    wf["3"]["inputs"]["sigma"] = 500.0
    resp = submit(c, wf)
    assert resp.status_code == 202  # nobody checked it here
    job = wait_job(c, resp.json()["job_id"])
    assert job["status"] == "failed"
    assert job["error"]["type"] == "prompt_outputs_failed_validation"
    assert set(job["error"]["node_errors"]) == {"3"}
    assert c.get("/object_info").status_code == 503


def test_execution_error_is_carried_into_error(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    c = gw.client()
    name = f"{unique('corrupt')}.png"
    resp = submit(
        c,
        load_image_workflow(name, unique("x")),
        inputs=[{"name": name, "data_b64": b64(b"this is not a png file\n")}],
    )
    assert resp.status_code == 202, resp.text
    job = wait_job(c, resp.json()["job_id"])
    assert job["status"] == "failed"
    err = job["error"]
    assert err["type"] == "execution_error"
    assert (err["node_id"], err["node_type"]) == ("1", "LoadImage")
    assert "UnidentifiedImageError" in err["exception_type"]
    assert err["traceback_tail"]
    assert "node 1 (LoadImage)" in err["message"]


def test_comfyui_dying_mid_job_fails_the_job(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    c = gw.client()
    gw.fault("die", after_node=1)
    job = wait_job(c, submit(c, simple_workflow(unique("die"))).json()["job_id"])
    assert job["status"] == "failed"
    assert job["error"]["type"] == "comfyui_unavailable"
    assert "exit" in job["error"]["message"].lower()


def test_running_job_without_worker_is_failed(make_gateway: MakeGateway) -> None:
    from ryla_modal.gateway.schemas import JobRecord

    gw = make_gateway()
    c = gw.client()
    now = time.time()
    orphan = JobRecord(
        job_id="orphan-1",
        status="running",
        phase="executing",
        created_at=now,
        updated_at=now,
        workflow_sha256="0" * 64,
    )
    gw.store.create_if_absent(orphan)  # as if its worker thread had vanished
    job = c.get("/jobs/orphan-1").json()
    assert job["status"] == "failed"
    assert job["error"]["type"] == "worker_died"
    assert "submit it again" in job["error"]["message"]


# --- long poll and /generate -----------------------------------------------------------------


def test_long_poll_answers_when_the_job_changes(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    c = gw.client()
    job_id = new_id()
    wf = slow_workflow("stub", unique("lp"), steps=30, step_seconds=0.1)
    assert submit(c, wf, job_id=job_id).status_code == 202
    before = wait_until(c, job_id, lambda j: (j["progress"] or {}).get("step") is not None)
    t0 = time.monotonic()
    after = c.get(f"/jobs/{job_id}", params={"wait": 20}).json()
    took = time.monotonic() - t0
    assert (after["progress"], after["status"]) != (before["progress"], before["status"])
    assert took < 10, f"the long poll sat for {took:.1f} s although the job kept changing"
    wait_job(c, job_id)
    t0 = time.monotonic()
    assert c.get(f"/jobs/{job_id}", params={"wait": 20}).json()["status"] == "succeeded"
    assert time.monotonic() - t0 < 10  # a final job answers at once


class _WatchedStore(MemoryJobStore):
    """Says when a long poll begins to wait, so a test changes the job only after that."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    async def wait_for_change(self, job_id: str, revision: int, wait_s: float) -> None:
        self.waiting.set()
        await super().wait_for_change(job_id, revision, wait_s)


def _queued_record(store: _WatchedStore) -> JobRecord:
    """Queued, as no worker will ever take it (a "running" one without a worker is failed)."""
    now = time.time()
    record = JobRecord(
        job_id=new_id(), status="queued", created_at=now, updated_at=now, workflow_sha256="0" * 64
    )
    stored, created = store.create_if_absent(record)  # no worker: only this test changes it
    assert created
    return stored


def _next_change(store: _WatchedStore, job_id: str, **fields: Any) -> None:
    """Once the long poll waits (again), change the job."""
    assert store.waiting.wait(20), "the long poll never began to wait"
    store.waiting.clear()
    assert store.update(job_id, **fields) is not None


def test_a_long_poll_carries_changes_close_together_in_one_answer(
    make_gateway: MakeGateway,
) -> None:
    """A change that is not final is held for the next (a job's start writes two in a few ms);
    a final change ends the wait at once, whatever the linger."""
    store = _WatchedStore()
    gw = make_gateway(store=store, limits=Limits(progress_linger_s=60))
    record = _queued_record(store)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(
            gw.client().get, f"/jobs/{record.job_id}", params={"wait": 20}, timeout=30
        )
        _next_change(store, record.job_id, phase="starting_comfyui")
        _next_change(store, record.job_id, status="cancelled", phase=None)
        job = answer.result(timeout=30).json()
    assert job["status"] == "cancelled"  # not the first change alone: queued, starting_comfyui


def test_a_lingering_long_poll_still_answers_by_its_wait(make_gateway: MakeGateway) -> None:
    """The linger never outlasts the wait asked for, and the answer carries the change seen."""
    store = _WatchedStore()
    gw = make_gateway(store=store, limits=Limits(progress_linger_s=60))
    record = _queued_record(store)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(
            gw.client().get, f"/jobs/{record.job_id}", params={"wait": 1}, timeout=30
        )
        _next_change(store, record.job_id, phase="starting_comfyui")
        job = answer.result(timeout=30).json()
    assert (job["status"], job["phase"]) == ("queued", "starting_comfyui")


def test_generate_inlines_outputs(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    c = gw.client()
    resp = c.post("/generate", json={"workflow": simple_workflow(unique("gen"))})
    assert resp.status_code == 200, resp.text
    job = resp.json()
    assert job["status"] == "succeeded"
    [out] = job["outputs"]
    data = base64.b64decode(out["data_b64"])
    assert sha256(data) == out["sha256"] and len(data) == out["size"]


def test_generate_answers_202_when_the_job_takes_longer(make_gateway: MakeGateway) -> None:
    gw = make_gateway(limits=Limits(generate_wait_s=0.3))
    c = gw.client()
    wf = slow_workflow("stub", unique("gen"), steps=20, step_seconds=0.1)
    resp = c.post("/generate", json={"workflow": wf})
    assert resp.status_code == 202
    job = wait_job(c, resp.json()["job_id"])
    assert job["status"] == "succeeded"
    assert job["outputs"][0].get("data_b64") is None  # GET /jobs never inlines


# --- auth ---------------------------------------------------------------------------------------


def _route_table(gw: Gateway) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, its docs included."""
    table = []
    for route in gw.app.routes:
        methods = getattr(route, "methods", None) or {"GET"}
        table += [(m, getattr(route, "path", "/")) for m in sorted(set(methods) - {"HEAD"})]
    return table


@pytest.mark.parametrize("bad", [None, "wrong-token", ""])
def test_every_route_wants_the_token(make_gateway: MakeGateway, bad: str | None) -> None:
    gw = make_gateway()
    good = gw.client()
    known = new_id()
    assert submit(good, simple_workflow(unique("auth")), job_id=known).status_code == 202
    wait_job(good, known)

    table = _route_table(gw)
    assert {("POST", "/jobs"), ("GET", "/jobs/{job_id}/outputs/{index}"), ("GET", "/docs")} <= set(
        table
    )
    table += [("GET", "/no/such/route"), ("PUT", "/jobs")]
    anon = gw.client(token=bad if bad else False)
    bodies = set()
    for method, path in table:
        for job_id in (known, "no-such-job"):
            url = path.replace("{job_id}", job_id).replace("{index}", "0")
            body = {"workflow": simple_workflow("x")} if method == "POST" else None
            resp = anon.request(method, url, json=body)
            assert resp.status_code == 401, (method, url, resp.status_code)
            assert resp.headers["www-authenticate"].startswith("Bearer")
            bodies.add(resp.content)
    # The same answer everywhere: a 401 does not tell whether a job (or a route) exists.
    assert len(bodies) == 1
    # Basic auth or a token in another scheme does not pass either.
    for header in (f"Basic {gw.token}", f"Token {gw.token}", f"Bearer {gw.token}x"):
        resp = httpx.get(f"{gw.url}/health", headers={"authorization": header}, timeout=10)
        assert resp.status_code == 401
    assert good.get("/health").json()["executor"] == "local"
    assert gw.stats()["prompts_received"] == 1


def test_no_token_configured_means_open(make_gateway: MakeGateway) -> None:
    gw = make_gateway(token=None)
    assert gw.client(token=False).get("/health").status_code == 200


# --- limits and bad requests -------------------------------------------------------------------


def test_limits_answer_413(make_gateway: MakeGateway) -> None:
    gw = make_gateway(
        limits=Limits(max_body_bytes=4096, max_nodes=4, max_inputs=1, max_input_bytes=100)
    )
    c = gw.client()

    big = {"workflow": simple_workflow("big"), "pad": "x" * 5000}
    resp = c.post("/jobs", json=big)
    assert resp.status_code == 413
    assert "4,096-byte limit" in resp.json()["error"]["message"]

    def chunks() -> Any:  # no Content-Length: counted while reading
        for _ in range(10):
            yield b" " * 1000

    resp = c.post("/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413

    five = simple_workflow("five")
    five["5"] = {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}
    resp = submit(c, five)
    assert resp.status_code == 413
    assert "5 nodes" in resp.json()["error"]["message"]

    tiny = b64(b"x" * 10)
    two = [{"name": "a.png", "data_b64": tiny}, {"name": "b.png", "data_b64": tiny}]
    resp = submit(c, simple_workflow("in"), inputs=two)
    assert resp.status_code == 413 and "2 input files" in resp.json()["error"]["message"]

    resp = submit(c, simple_workflow("in"), inputs=[{"name": "a.png", "data_b64": b64(b"x" * 101)}])
    assert resp.status_code == 413
    assert "inputs[0] (a.png)" in resp.json()["error"]["message"]
    assert gw.stats()["prompts_received"] == 0


def test_too_many_pending_jobs_answers_429(make_gateway: MakeGateway) -> None:
    gw = make_gateway(limits=Limits(max_pending_jobs=1), workers=1)
    c = gw.client()
    slow = submit(c, slow_workflow("stub", unique("p"), steps=3, step_seconds=600.0))
    assert slow.status_code == 202  # pending until cancelled below, however slow this machine
    resp = submit(c, simple_workflow(unique("p2")))
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "5"
    c.post(f"/jobs/{slow.json()['job_id']}/cancel")
    assert wait_job(c, slow.json()["job_id"])["status"] == "cancelled"


BAD_REQUESTS: list[tuple[str, str, str, dict[str, Any], int, str, str]] = [
    # (id, method, path, request kwargs, status, error type, words in the message)
    (
        "not-json",
        "POST",
        "/jobs",
        {"content": b"{nope", "headers": {"content-type": "application/json"}},
        422,
        "not_json",
        "not JSON",
    ),
    (
        "empty-body",
        "POST",
        "/jobs",
        {"content": b"", "headers": {"content-type": "application/json"}},
        422,
        "invalid_request",
        "workflow",
    ),
    (
        "text-plain",
        "POST",
        "/jobs",
        {"content": b'{"workflow": {}}', "headers": {"content-type": "text/plain"}},
        422,
        "invalid_request",
        "Content-Type",
    ),
    ("array-body", "POST", "/jobs", {"json": [1, 2]}, 422, "invalid_request", "JSON object"),
    (
        "workflow-list",
        "POST",
        "/jobs",
        {"json": {"workflow": [1]}},
        422,
        "invalid_request",
        "workflow",
    ),
    (
        "timeout-type",
        "POST",
        "/jobs",
        {"json": {"workflow": {"1": {}}, "timeout_s": "soon"}},
        422,
        "invalid_request",
        "timeout_s",
    ),
    (
        "job-id-type",
        "POST",
        "/jobs",
        {"json": {"workflow": {"1": {}}, "job_id": 5}},
        422,
        "invalid_request",
        "job_id",
    ),
    (
        "job-id-path",
        "POST",
        "/jobs",
        {"json": {"workflow": {"1": {}}, "job_id": "../../etc"}},
        422,
        "invalid_request",
        "job_id",
    ),
    (
        "unknown-field",
        "POST",
        "/jobs",
        {"json": {"workflow": {"1": {}}, "priority": 1}},
        422,
        "invalid_request",
        "priority",
    ),
    (
        "empty-workflow",
        "POST",
        "/jobs",
        {"json": {"workflow": {}}},
        422,
        "invalid_workflow",
        "no nodes",
    ),
    (
        "node-not-object",
        "POST",
        "/jobs",
        {"json": {"workflow": {"1": 5}}},
        422,
        "invalid_workflow",
        "node '1'",
    ),
    (
        "dangling-link",
        "POST",
        "/jobs",
        {"json": {"workflow": {"1": {"class_type": "ImageInvert", "inputs": {"image": ["9", 0]}}}}},
        422,
        "invalid_workflow",
        "'9'",
    ),
    (
        "ui-format",
        "POST",
        "/jobs",
        {"json": {"workflow": {"nodes": [], "links": []}}},
        422,
        "invalid_workflow",
        "UI-format",
    ),
    (
        "ui-format-body",
        "POST",
        "/jobs",
        {"json": {"nodes": [], "links": [], "version": 0.4}},
        422,
        "invalid_workflow",
        "UI-format",
    ),
    (
        "bare-workflow",
        "POST",
        "/jobs",
        {"json": {"1": {"class_type": "EmptyImage", "inputs": {}}}},
        422,
        "invalid_request",
        "wrap it",
    ),
    (
        "bad-base64",
        "POST",
        "/jobs",
        {
            "json": {
                "workflow": {"1": {"class_type": "EmptyImage", "inputs": {}}},
                "inputs": [{"name": "a.png", "data_b64": "***"}],
            }
        },
        422,
        "invalid_input",
        "base64",
    ),
    (
        "input-name-path",
        "POST",
        "/jobs",
        {
            "json": {
                "workflow": {"1": {"class_type": "EmptyImage", "inputs": {}}},
                "inputs": [{"name": "../a.png", "data_b64": ""}],
            }
        },
        422,
        "invalid_request",
        "inputs.0.name",
    ),
    ("unknown-job", "GET", "/jobs/nope", {}, 404, "not_found", "nope"),
    ("unknown-job-cancel", "POST", "/jobs/nope/cancel", {}, 404, "not_found", "nope"),
    ("unknown-job-output", "GET", "/jobs/nope/outputs/0", {}, 404, "not_found", "nope"),
    ("output-index-type", "GET", "/jobs/nope/outputs/first", {}, 422, "invalid_request", "index"),
    ("wait-too-long", "GET", "/jobs/nope?wait=26", {}, 422, "invalid_request", "wait"),
    ("wait-negative", "GET", "/jobs/nope?wait=-1", {}, 422, "invalid_request", "wait"),
    ("wait-word", "GET", "/jobs/nope?wait=soon", {}, 422, "invalid_request", "wait"),
    ("unknown-route", "GET", "/jobz", {}, 404, "not_found", "/jobz"),
    ("wrong-method", "DELETE", "/jobs", {}, 405, "method_not_allowed", "DELETE"),
]


def test_bad_requests_get_clear_answers(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    c = gw.client()
    failures = []
    for case, method, path, kwargs, status, type_, words in BAD_REQUESTS:
        resp = c.request(method, path, **kwargs)
        body = resp.json()
        got = (resp.status_code, body.get("error", {}).get("type"))
        message = body.get("error", {}).get("message", "")
        if got != (status, type_) or words not in message:
            failures.append(f"{case}: {got} {message!r}")
    assert not failures, "\n".join(failures)
    assert gw.stats()["prompts_received"] == 0


def test_outputs_of_unfinished_or_failed_jobs_are_409(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    c = gw.client()
    job_id = new_id()
    submit(c, slow_workflow("stub", unique("o"), steps=20, step_seconds=0.05), job_id=job_id)
    resp = c.get(f"/jobs/{job_id}/outputs/0")
    assert resp.status_code == 409
    assert resp.json()["error"]["type"] == "job_not_succeeded"
    assert wait_job(c, job_id)["status"] == "succeeded"
    resp = c.get(f"/jobs/{job_id}/outputs/1")
    assert resp.status_code == 404 and "1 outputs" in resp.json()["error"]["message"]


def test_openapi_document_shows_the_contract(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    doc = gw.client().get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for name in ("Job", "JobRequest", "JobError", "OutputInfo", "Progress", "ErrorResponse"):
        assert name in schemas
    assert set(schemas["Job"]["properties"]) >= {
        "job_id",
        "status",
        "phase",
        "created_at",
        "updated_at",
        "progress",
        "outputs",
        "error",
        "timings",
        "call_id",
    }
    post = doc["paths"]["/jobs"]["post"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/JobRequest")
    assert {"200", "202", "401", "409", "413", "422"} <= set(post["responses"])
    assert json.dumps(doc)  # serialisable
    # the guard wants the token everywhere, and the document says so
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["security"] == [{"bearer": []}]


def test_openapi_document_without_a_token_names_no_scheme(make_gateway: MakeGateway) -> None:
    doc = make_gateway(token=None).client(token=False).get("/openapi.json").json()
    assert "security" not in doc
    assert "securitySchemes" not in doc.get("components", {})


def test_job_timeout_fails_the_job_and_frees_comfyui(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    c = gw.client()
    wf = slow_workflow("stub", unique("slowpoke"), steps=400, step_seconds=0.05)
    resp = submit(c, wf, timeout_s=1)
    assert resp.status_code == 202
    job_id = resp.json()["job_id"]
    job = wait_job(c, job_id)
    assert job["status"] == "failed"
    assert job["error"]["type"] == "timeout"
    assert job_id in job["error"]["message"]
    history = httpx.get(f"{gw.comfy.base_url}/history/{job_id}", timeout=10).json()[job_id]
    assert "execution_interrupted" in [m[0] for m in history["status"]["messages"]]


def test_a_server_bug_is_a_json_500_without_internals(
    launch_stub: Callable[..., ComfyServer], tmp_path: Path
) -> None:
    from ryla_modal.gateway.store import MemoryJobStore

    class BrokenStore(MemoryJobStore):
        def get(self, job_id: str) -> Any:
            raise RuntimeError("disk on fire at /srv/secret/path")

    comfy = launch_stub()
    with running_gateway(comfy, tmp_path / "work", store=BrokenStore()) as gw:
        resp = gw.client().get("/jobs/some-job")
    assert resp.status_code == 500
    assert resp.json() == {
        "error": {
            "type": "internal_error",
            "message": "internal server error; the server log has the details",
        }
    }
