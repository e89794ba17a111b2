"""The client's smaller calls over real HTTP: list_jobs, job_logs, job-id checks, and loading a
UI-format workflow through the deployment — sync and async alike."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest

import ryla_modal
from ryla_modal.client import JobPage
from ryla_modal.errors import (
    ConfigError,
    EndpointUnavailable,
    JobIdError,
    WorkflowFormatError,
)
from ryla_modal.workflow import load_for_deployment
from tests._hang_servers import closed_port
from tests._http_server import Answer, ScriptedServer, job_record, json_answer
from tests.conftest import simple_workflow
from tests.fakes.hostile_gateway import create_hostile_app
from tests.gateway_fixtures import UvicornThread
from tests.test_client import KINDS, call, run


def jobs_app(method: str, path: str, query: dict[str, list[str]], body: bytes) -> Answer:
    if path == "/jobs":
        before = query.get("before", [None])[0]
        ids = ["c", "b", "a"]
        start = ids.index(before) + 1 if before else 0
        limit = int(query.get("limit", ["20"])[0])
        page = ids[start : start + limit]
        status = query.get("status", [None])[0]
        jobs = [job_record(f"job-{i}", status or "running") for i in page]
        more = start + limit < len(ids)
        return json_answer({"jobs": jobs, "next": page[-1] if more else None})
    if path == "/jobs/job-a/logs":
        return json_answer({"job_id": "job-a", "lines": ["one", "two"], "source": "comfyui"})
    if path == "/jobs/job-b/logs":  # an answer about another job
        return json_answer({"job_id": "job-a", "lines": [], "source": "comfyui"})
    return json_answer({"error": {"type": "not_found", "message": "no such job"}}, 404)


@pytest.mark.parametrize("kind", KINDS)
def test_list_jobs_pages_newest_first(kind: str) -> None:
    with ScriptedServer(jobs_app) as server:

        async def scenario(client: Any) -> Any:
            first = await call(client.list_jobs(status="running", limit=2))
            second = await call(client.list_jobs(status="running", limit=2, before=first.next))
            return first, second

        first, second = run(kind, server.url, scenario)
    assert isinstance(first, JobPage) and ryla_modal.__getattr__("JobPage") is JobPage
    assert [j.job_id for j in first.jobs] == ["job-c", "job-b"] and first.next == "b"
    assert [j.job_id for j in second.jobs] == ["job-a"] and second.next is None
    assert all(j.status == "running" for j in first.jobs + second.jobs)
    assert server.paths() == [
        "/jobs?status=running&limit=2",
        "/jobs?status=running&limit=2&before=b",
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_job_logs_are_one_jobs_lines(kind: str) -> None:
    with ScriptedServer(jobs_app) as server:
        logs = run(kind, server.url, lambda c: call(c.job_logs("job-a")))
        with pytest.raises(EndpointUnavailable, match="logs of job job-b"):
            run(kind, server.url, lambda c: call(c.job_logs("job-b")))
    assert logs["lines"] == ["one", "two"] and logs["source"] == "comfyui"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", ["../../health", "a/b", "", "x" * 65, "-leading", "ünï"])
def test_a_bad_job_id_is_refused_before_any_request(kind: str, bad: str) -> None:
    with ScriptedServer(jobs_app) as server:
        for method in ("status", "cancel", "job_logs", "wait"):

            async def scenario(client: Any, method: str = method) -> Any:
                return await call(getattr(client, method)(bad))

            with pytest.raises(JobIdError, match="is not a job id"):
                run(kind, server.url, scenario)
        with pytest.raises(JobIdError):
            run(kind, server.url, lambda c: call(c.submit(simple_workflow("x"), job_id=bad)))
    assert server.requests == []


@pytest.mark.parametrize("kind", KINDS)
def test_an_answer_about_another_job_is_an_error(kind: str, tmp_path: Path) -> None:
    server = UvicornThread(create_hostile_app(job_fields={"job_id": "someone-else"}))
    server.start()
    try:

        async def scenario(client: Any) -> Any:
            return await call(client.generate(simple_workflow("h"), out_dir=tmp_path / "o"))

        with pytest.raises(EndpointUnavailable, match="answered about job 'someone-else'"):
            run(kind, server.url, scenario)
        with pytest.raises(EndpointUnavailable, match="when asked about job mine"):
            run(kind, server.url, lambda c: call(c.status("mine")))
    finally:
        server.stop()
    assert not (tmp_path / "o").exists()  # no download URL was ever built from the wrong id


UI_WORKFLOW = {"nodes": [{"id": 1, "type": "EmptyImage"}], "links": [], "version": 0.4}


@pytest.mark.parametrize("kind", KINDS)
def test_load_workflow_converts_ui_format_or_says_how_to_reach_the_deployment(
    kind: str, tmp_path: Path
) -> None:
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps(UI_WORKFLOW))
    api = tmp_path / "api.json"
    graph = simple_workflow("api")
    api.write_text(json.dumps(graph))
    url = f"http://127.0.0.1:{closed_port()}"
    loaded = run(kind, url, lambda c: call(c.load_workflow(str(api))))  # API format: no request
    assert loaded.to_dict() == graph
    with pytest.raises(WorkflowFormatError) as info:
        run(kind, url, lambda c: call(c.load_workflow(str(ui))))
    assert "could not be asked" in info.value.message
    assert "--endpoint" in (info.value.hint or "") and "health --wake" not in (
        info.value.hint or ""
    )


def test_an_unconfigured_endpoint_hints_deploy_or_endpoint(tmp_path: Path) -> None:
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps(UI_WORKFLOW))

    def no_endpoint() -> dict[str, Any]:
        raise ConfigError("no endpoint configured")

    with pytest.raises(WorkflowFormatError) as info:
        load_for_deployment(str(ui), no_endpoint)
    assert "`ryla deploy`" in (info.value.hint or "") and "--endpoint" in (info.value.hint or "")
    assert "Export (API)" in (info.value.hint or "")


def test_the_twins_offer_the_same_calls_with_the_same_parameters() -> None:
    """The public signatures are written twice (each class reads and type-checks on its own):
    this keeps them from drifting apart."""
    from ryla_modal.client import AsyncRylaClient, RylaClient

    def calls(cls: type) -> dict[str, inspect.Signature]:
        names = {n for n in dir(cls) if not n.startswith("_")} - {"close", "aclose", "settings"}
        return {n: inspect.signature(getattr(cls, n)) for n in sorted(names)}

    sync, asynchronous = calls(RylaClient), calls(AsyncRylaClient)
    assert sync.keys() == asynchronous.keys()
    for name, signature in sync.items():
        assert signature.parameters == asynchronous[name].parameters, name
    assert inspect.signature(RylaClient).parameters.keys() == (
        inspect.signature(AsyncRylaClient).parameters.keys()
    )
