"""RylaClient and AsyncRylaClient over real HTTP: a gateway on uvicorn in front of the ComfyUI
stand-in, with the fault proxy in between for network failures.

Both clients run the same parametrized scenarios: each scenario is an ``async def`` that awaits
``call(...)``, which passes the sync client's plain results through unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ryla_modal.client import AsyncRylaClient, InputUpload, JobEvent, RylaClient
from ryla_modal.errors import (
    AuthError,
    ColdStartTimeout,
    EndpointUnavailable,
    ExecutionError,
    JobCancelled,
    OutputIntegrityError,
    WorkflowValidationError,
)
from ryla_modal.policy import RetryPolicy
from tests.conftest import ComfyServer, simple_workflow, slow_workflow, stub_process, unique
from tests.fakes.fault_proxy import FaultProxy
from tests.fakes.hostile_gateway import PAYLOAD, create_hostile_app
from tests.gateway_fixtures import TOKEN, Gateway, UvicornThread, running_gateway

FAST = RetryPolicy(max_attempts=6, initial_delay_s=0.01, max_delay_s=0.05)
KINDS = ["sync", "async"]


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RYLA_CONFIG_DIR", str(tmp_path / "config"))
    for name in ("RYLA_ENDPOINT", "RYLA_TOKEN", "RYLA_MODAL_KEY", "RYLA_MODAL_SECRET"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    server = stub_process(tmp_path_factory.mktemp("client-stub"))
    server.process.start(ready_timeout=20)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(stub: ComfyServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(stub, tmp_path_factory.mktemp("client-gw"), workers=2) as gw:
        yield gw


@pytest.fixture
def proxy(gateway: Gateway) -> Iterator[FaultProxy]:
    with FaultProxy(int(gateway.url.rsplit(":", 1)[1])) as p:
        yield p


async def call(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def run(kind: str, url: str, scenario: Callable[[Any], Awaitable[Any]], **kw: Any) -> Any:
    kw.setdefault("token", TOKEN)
    kw.setdefault("retry_policy", FAST)
    if kind == "sync":

        async def sync_main() -> Any:
            with RylaClient(url, **kw) as client:
                return await scenario(client)

        return asyncio.run(sync_main())

    async def async_main() -> Any:
        async with AsyncRylaClient(url, **kw) as client:
            return await scenario(client)

    return asyncio.run(async_main())


def prompts_for(gateway: Gateway, job_id: str) -> int:
    return sum(1 for pid in gateway.stats()["prompt_ids"] if pid == job_id)


# --------------------------------------------------------------------------- the happy path
@pytest.mark.parametrize("kind", KINDS)
def test_generate_saves_every_output_with_checksum_and_manifest(
    kind: str, gateway: Gateway, tmp_path: Path
) -> None:
    events: list[JobEvent] = []
    out = tmp_path / "out"

    async def scenario(client: Any) -> Any:
        return await call(
            client.generate(simple_workflow(unique("cl")), out_dir=out, on_event=events.append)
        )

    result = run(kind, gateway.url, scenario)
    assert result.job.status == "succeeded"
    assert len(result.files) == 1 == len(result.job.outputs)
    saved = result.files[0]
    assert saved.path.parent == out and saved.path.exists()
    data = saved.path.read_bytes()
    assert data.startswith(b"\x89PNG")
    assert hashlib.sha256(data).hexdigest() == saved.sha256 == result.job.outputs[0].sha256
    manifest = json.loads(result.manifest.read_text())
    assert manifest["job_id"] == result.job.job_id
    assert manifest["workflow"]["4"]["class_type"] == "SaveImage"
    assert manifest["outputs"][0]["sha256"] == saved.sha256
    assert "executing" in manifest["timings"]
    kinds = [e.kind for e in events]
    assert kinds[0] == "submitted" and kinds[-1] == "done"
    assert "update" in kinds and "saved" in kinds
    assert prompts_for(gateway, result.job.job_id) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_progress_events_report_sampler_steps(kind: str, gateway: Gateway, tmp_path: Path) -> None:
    events: list[JobEvent] = []

    async def scenario(client: Any) -> Any:
        wf = slow_workflow("stub", unique("steps"), steps=4, step_seconds=0.5)
        return await call(client.generate(wf, out_dir=tmp_path, on_event=events.append))

    run(kind, gateway.url, scenario)
    progress = [e.job.progress for e in events if e.job is not None and e.job.progress]
    steps = [p.step for p in progress if p.step]
    assert steps, "no sampler step reached the client"
    assert max(steps) <= 4
    types = {p.node_type for p in progress}
    assert "RylaSlowSteps" in types


# --------------------------------------------------------------------------- network failures
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("status", "retry_after"), [(502, None), (503, None), (504, None), (429, "1")]
)
def test_gateway_errors_are_retried(
    kind: str,
    status: int,
    retry_after: str | None,
    proxy: FaultProxy,
    gateway: Gateway,
    tmp_path: Path,
) -> None:
    proxy.arm("POST", "/jobs", "status", status=status, retry_after=retry_after, times=2)
    proxy.arm("GET", r"/jobs/[^/]+", "status", status=status, retry_after=retry_after, times=2)

    async def scenario(client: Any) -> Any:
        return await call(client.generate(simple_workflow(unique("r")), out_dir=tmp_path))

    result = run(kind, proxy.url, scenario)
    assert result.job.status == "succeeded"
    injected = [s for s in proxy.log.seen if s[2] == "status"]
    assert len(injected) == 4
    assert prompts_for(gateway, result.job.job_id) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_cold_start_delay_and_resets_are_survived(
    kind: str, proxy: FaultProxy, gateway: Gateway, tmp_path: Path
) -> None:
    proxy.arm("POST", "/jobs", "delay", delay_s=1.0)
    proxy.arm("GET", r"/jobs/[^/]+", "reset", times=2)
    proxy.arm("GET", r"/jobs/[^/]+/outputs/\d+", "reset", times=1)

    async def scenario(client: Any) -> Any:
        return await call(client.generate(simple_workflow(unique("d")), out_dir=tmp_path))

    result = run(kind, proxy.url, scenario)
    assert result.job.status == "succeeded"
    assert [f.path.exists() for f in result.files] == [True]
    assert sum(1 for s in proxy.log.seen if s[2] == "reset") == 3


@pytest.mark.parametrize("kind", KINDS)
def test_redirect_to_result_url_is_followed(
    kind: str, proxy: FaultProxy, gateway: Gateway, tmp_path: Path
) -> None:
    proxy.arm("POST", "/jobs", "redirect")
    proxy.arm("GET", r"/jobs/[^/]+", "redirect", times=2)

    async def scenario(client: Any) -> Any:
        return await call(client.generate(simple_workflow(unique("303")), out_dir=tmp_path))

    result = run(kind, proxy.url, scenario)
    assert result.job.status == "succeeded"
    assert sum(1 for s in proxy.log.seen if s[2] == "result") == 3


@pytest.mark.parametrize("kind", KINDS)
def test_lost_submit_response_never_runs_the_job_twice(
    kind: str, proxy: FaultProxy, gateway: Gateway, tmp_path: Path
) -> None:
    proxy.arm("POST", "/jobs", "drop_response", times=2)
    job_id = str(uuid.uuid4())

    async def scenario(client: Any) -> Any:
        return await call(
            client.generate(simple_workflow(unique("lost")), job_id=job_id, out_dir=tmp_path)
        )

    result = run(kind, proxy.url, scenario)
    assert result.job.job_id == job_id and result.job.status == "succeeded"
    assert [s[2] for s in proxy.log.seen if s[0] == "POST"] == [
        "drop_response",
        "drop_response",
        "forward",
    ]
    assert prompts_for(gateway, job_id) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_retries_end_with_a_clear_error(kind: str, proxy: FaultProxy, tmp_path: Path) -> None:
    proxy.arm("POST", "/jobs", "status", status=503, times=100)

    async def scenario(client: Any) -> Any:
        return await call(client.submit(simple_workflow(unique("x"))))

    with pytest.raises(EndpointUnavailable, match="503"):
        run(kind, proxy.url, scenario, retry_policy=RetryPolicy(3, 0.01, 0.02))
    assert sum(1 for s in proxy.log.seen if s[0] == "POST") == 3


@pytest.mark.parametrize("kind", KINDS)
def test_unreachable_endpoint(kind: str, tmp_path: Path) -> None:
    from tests._hang_servers import closed_port

    async def scenario(client: Any) -> Any:
        return await call(client.health())

    with pytest.raises(EndpointUnavailable, match="could not reach"):
        run(
            kind,
            f"http://127.0.0.1:{closed_port()}",
            scenario,
            retry_policy=RetryPolicy(2, 0.01, 0.02),
        )


# --------------------------------------------------------------------------- job outcomes
@pytest.mark.parametrize("kind", KINDS)
def test_bad_token_is_an_auth_error(kind: str, gateway: Gateway) -> None:
    async def scenario(client: Any) -> Any:
        return await call(client.status(str(uuid.uuid4())))

    with pytest.raises(AuthError, match="401"):
        run(kind, gateway.url, scenario, token="wrong")


@pytest.mark.parametrize("kind", KINDS)
def test_validation_error_carries_node_errors(kind: str, gateway: Gateway) -> None:
    wf = simple_workflow(unique("v"))
    wf["3"]["inputs"]["sigma"] = -5.0  # below ImageBlur's minimum

    async def scenario(client: Any) -> Any:
        return await call(client.submit(wf))

    with pytest.raises(WorkflowValidationError) as info:
        run(kind, gateway.url, scenario)
    assert "3" in info.value.node_errors
    types = [e["type"] for e in info.value.node_errors["3"]["errors"]]
    assert types == ["value_smaller_than_min"]


@pytest.mark.parametrize("kind", KINDS)
def test_execution_error_names_the_node(kind: str, gateway: Gateway, tmp_path: Path) -> None:
    name = f"corrupt_{uuid.uuid4().hex[:6]}.png"
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "c"}},
    }

    async def scenario(client: Any) -> Any:
        upload = InputUpload(name, b"this is not a png file\n")
        return await call(client.generate(wf, inputs=[upload], out_dir=tmp_path))

    with pytest.raises(ExecutionError) as info:
        run(kind, gateway.url, scenario)
    assert info.value.node_id == "1" and info.value.node_type == "LoadImage"
    assert info.value.job_id
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", KINDS)
def test_cancel_mid_job(kind: str, gateway: Gateway) -> None:
    async def scenario(client: Any) -> Any:
        job = await call(client.submit(slow_workflow("stub", unique("cx"), steps=200)))
        for _ in range(100):
            current = await call(client.status(job.job_id, wait=1))
            if current.progress and current.progress.step:
                break
        await call(client.cancel(job.job_id))
        return await call(client.wait(job.job_id))

    with pytest.raises(JobCancelled):
        run(kind, gateway.url, scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_cold_start_timeout_keeps_the_job_and_wait_resumes(
    kind: str, stub: ComfyServer, tmp_path: Path
) -> None:
    # One worker busy with a job that outlasts the test until cancelled: the next job stays
    # queued, which is a cold start, however slow this machine is.
    with running_gateway(stub, tmp_path / "w", workers=1) as gw:

        async def scenario(client: Any) -> Any:
            busy_wf = slow_workflow("stub", unique("busy"), steps=3, step_seconds=600.0)
            busy = await call(client.submit(busy_wf))
            job = await call(client.submit(simple_workflow(unique("q"))))
            with pytest.raises(ColdStartTimeout) as info:
                await call(client.wait(job.job_id, cold_start_timeout=0.5))
            assert info.value.job_id == job.job_id
            assert isinstance(info.value, TimeoutError)
            await call(client.cancel(busy.job_id))
            return await call(client.wait(job.job_id, cold_start_timeout=30))

        job = run(kind, gw.url, scenario)
    assert job.status == "succeeded"


# --------------------------------------------------------------------------- hostile servers
@pytest.mark.parametrize("kind", KINDS)
def test_hostile_output_names_stay_inside_out(kind: str, tmp_path: Path) -> None:
    server = UvicornThread(create_hostile_app())
    server.start()
    out = tmp_path / "deep" / "out"
    try:

        async def scenario(client: Any) -> Any:
            return await call(client.generate(simple_workflow("h"), out_dir=out))

        result = run(kind, server.url, scenario)
    finally:
        server.stop()
    assert len(result.files) == 4
    for f in result.files:
        assert f.path.parent == out
        assert f.path.read_bytes() == PAYLOAD
        assert "\x00" not in f.path.name and len(f.path.name) <= 120
    written = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {f.path for f in result.files} | {result.manifest}


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_checksum_is_an_error_and_leaves_nothing(kind: str, tmp_path: Path) -> None:
    server = UvicornThread(create_hostile_app(wrong_checksum=True))
    server.start()
    try:

        async def scenario(client: Any) -> Any:
            return await call(client.generate(simple_workflow("h"), out_dir=tmp_path / "o"))

        with pytest.raises(OutputIntegrityError, match="sha256 mismatch"):
            run(kind, server.url, scenario)
    finally:
        server.stop()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"status": "exploded"}, "job.status"),
        ({"created_at": "yesterday"}, "job.created_at"),
        ({"job_id": None}, "job.job_id"),
        ({"outputs": [{"index": 0, "node_id": "9", "filename": "a.png"}]}, "job.outputs[0].kind"),
        ({"progress": ["not", "an", "object"]}, "job.progress"),
        ({"timings": {"executing": "slow"}}, "job.timings.executing"),
    ],
)
def test_malformed_job_answer_is_an_error_naming_the_field(
    kind: str, fields: dict[str, Any], named: str, tmp_path: Path
) -> None:
    server = UvicornThread(create_hostile_app(job_fields=fields))
    server.start()
    try:

        async def scenario(client: Any) -> Any:
            return await call(client.generate(simple_workflow("h"), out_dir=tmp_path / "o"))

        with pytest.raises(EndpointUnavailable, match="did not answer with a job") as info:
            run(kind, server.url, scenario)
    finally:
        server.stop()
    assert named in info.value.message
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("kind", KINDS)
def test_list_jobs_and_job_logs_through_the_gateway(
    kind: str, gateway: Gateway, tmp_path: Path
) -> None:
    async def scenario(client: Any) -> Any:
        result = await call(client.generate(simple_workflow(unique("ls")), out_dir=tmp_path))
        page = await call(client.list_jobs(status="succeeded", limit=100))
        logs = await call(client.job_logs(result.job.job_id))
        return result.job.job_id, page, logs

    job_id, page, logs = run(kind, gateway.url, scenario)
    assert job_id in [j.job_id for j in page.jobs]
    assert all(j.status == "succeeded" for j in page.jobs)
    assert logs["job_id"] == job_id and logs["source"] == "comfyui"
    assert isinstance(logs["lines"], list)
