"""`ryla serve` under the faults of issue 11 (items 5, 8, 9, 10), as real processes on real sockets.

Each test failed on the code before the fix: a stopped ComfyUI blocked submits for 30 s and /health
said "ok" (5); a restart failed jobs ComfyUI went on to run, and a SIGKILLed serve left its
ComfyUI behind (8); a ComfyUI that died made every later job fail (9); a SIGTERM answered long
polls with 500 (10).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from ryla_modal.client import RylaClient
from ryla_modal.comfy.process import port_in_use
from tests._pids import wait_dead
from tests.conftest import ComfyServer, simple_workflow, slow_workflow, unique
from tests.gateway_fixtures import TOKEN, wait_job
from tests.test_serve_cli import Serve, launch_serve

__all__ = ["launch_serve"]  # the fixture, shared with test_serve_cli

pytestmark = pytest.mark.timeout(120)


def _stats(comfy_url: str) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{comfy_url}/_fake/stats", timeout=10).json()
    return data


def _wait_health(
    c: httpx.Client, want: Callable[[dict[str, Any]], bool], within: float
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        health: dict[str, Any] = c.get("/health").json()
        if want(health):
            return health
        assert time.monotonic() < deadline, health
        time.sleep(0.2)


@contextlib.contextmanager
def _stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


# --- 5: object_info refresh never blocks other requests; /health names a silent ComfyUI ------


def test_stopped_comfyui_does_not_block_submits_and_health_says_so(
    launch_stub: Callable[..., ComfyServer],
    launch_serve: Callable[..., Serve],
    tmp_path: Path,
) -> None:
    comfy = launch_stub()
    serve = launch_serve(tmp_path / "data", "--comfyui-url", comfy.base_url)
    pid = comfy.process.pid
    assert pid is not None
    ids = [str(uuid.uuid4()) for _ in range(2)]
    answers: dict[str, int | str] = {}

    def submit(job_id: str) -> None:
        # 8 s: the old code held the first submit 30 s on GET /object_info, the next behind it.
        with serve.client() as c:
            try:
                wf = simple_workflow(unique("stop"))
                resp = c.post("/jobs", json={"job_id": job_id, "workflow": wf}, timeout=8)
                answers[job_id] = resp.status_code
            except httpx.TimeoutException as exc:
                answers[job_id] = type(exc).__name__

    with _stopped(pid):
        threads = [threading.Thread(target=submit, args=(i,)) for i in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert answers == {i: 202 for i in ids}
        with serve.client() as c:
            health = _wait_health(c, lambda h: h["status"] != "ok", within=15)
        assert health["status"] == "degraded"
        assert health["comfyui"] == "unresponsive"
    with serve.client() as c:
        for job_id in ids:
            assert wait_job(c, job_id, timeout=60)["status"] == "succeeded"
        assert _wait_health(c, lambda h: h["status"] == "ok", within=15)["comfyui"] == "ok"


# --- 8: re-adoption after a SIGKILL; the launched ComfyUI dies with serve ---------------------


def test_sigkilled_serve_re_adopts_what_comfyui_still_has(
    launch_stub: Callable[..., ComfyServer],
    launch_serve: Callable[..., Serve],
    tmp_path: Path,
) -> None:
    comfy = launch_stub()
    data = tmp_path / "data"
    first = launch_serve(data, "--comfyui-url", comfy.base_url, "--workers", "8")
    ids = [str(uuid.uuid4()) for _ in range(5)]
    with first.client() as c:
        for job_id in ids:
            wf = slow_workflow("stub", unique("adopt"), steps=6, step_seconds=0.1)
            assert c.post("/jobs", json={"job_id": job_id, "workflow": wf}).status_code == 202
        deadline = time.monotonic() + 30
        while _stats(comfy.base_url)["prompts_received"] < len(ids):
            assert time.monotonic() < deadline, "the jobs never reached ComfyUI"
            time.sleep(0.05)
    os.killpg(first.proc.pid, signal.SIGKILL)  # no cleanup at all
    first.proc.wait(timeout=10)
    time.sleep(0.5)  # ComfyUI goes on meanwhile: some finish while nobody follows them

    second = launch_serve(data, "--comfyui-url", comfy.base_url, "--workers", "8")
    with second.client() as c:
        for job_id in ids:
            job = wait_job(c, job_id, timeout=60)
            assert job["status"] == "succeeded", job
            assert len(job["outputs"]) == 1
            out = c.get(f"/jobs/{job_id}/outputs/0")
            assert out.status_code == 200 and out.content
        new_id = str(uuid.uuid4())
        wf = simple_workflow(unique("after"))
        assert c.post("/jobs", json={"job_id": new_id, "workflow": wf}).status_code == 202
        assert wait_job(c, new_id)["status"] == "succeeded"
    stats = _stats(comfy.base_url)
    assert stats["prompts_received"] == len(ids) + 1  # nothing submitted twice
    assert sorted(stats["prompt_ids"]) == sorted([*ids, new_id])
    assert "re-adopted" in second.stderr()


def test_sigkilled_serve_takes_its_comfyui_along(
    launch_serve: Callable[..., Serve], tmp_path: Path
) -> None:
    serve = launch_serve(tmp_path / "data")
    assert serve.comfy_pid is not None
    port = urlsplit(serve.comfy_url()).port
    assert port is not None
    os.killpg(serve.proc.pid, signal.SIGKILL)  # only serve's group: ComfyUI has its own
    serve.proc.wait(timeout=10)
    assert not wait_dead([serve.comfy_pid], within=5), "ComfyUI outlived a SIGKILLed serve"
    deadline = time.monotonic() + 5
    while port_in_use("127.0.0.1", port):
        assert time.monotonic() < deadline, f"port {port} still taken after serve died"
        time.sleep(0.05)


# --- 9: a dead launched ComfyUI is restarted; a URL ComfyUI that is down is waited for ---------


def test_killed_comfyui_is_restarted_and_later_jobs_run(
    launch_serve: Callable[..., Serve], tmp_path: Path
) -> None:
    serve = launch_serve(tmp_path / "data")
    first_pid = serve.comfy_pid
    assert first_pid is not None
    with serve.client() as c:
        doomed = str(uuid.uuid4())
        wf = slow_workflow("stub", unique("doomed"), steps=200, step_seconds=0.05)
        assert c.post("/jobs", json={"job_id": doomed, "workflow": wf}).status_code == 202
        deadline = time.monotonic() + 20
        # In ComfyUI's sampler, not only "running" here: a job that finds ComfyUI dead before
        # its prompt was sent waits for the restart and succeeds (its own test).
        while not (c.get(f"/jobs/{doomed}").json()["progress"] or {}).get("step"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(first_pid, signal.SIGKILL)
        failed = wait_job(c, doomed)
        assert failed["status"] == "failed"
        assert failed["error"]["type"] == "comfyui_unavailable"
        later = [str(uuid.uuid4()) for _ in range(2)]
        for job_id in later:  # arriving while ComfyUI restarts: they wait for it
            wf = simple_workflow(unique("later"))
            assert c.post("/jobs", json={"job_id": job_id, "workflow": wf}).status_code == 202
        for job_id in later:
            job = wait_job(c, job_id, timeout=60)
            assert job["status"] == "succeeded", (job["error"], serve.stderr()[-3000:])
        health = _wait_health(c, lambda h: h["comfyui"] == "ok", within=15)
        assert health["comfyui_restarts"] == 1
    assert "restarting it" in serve.stderr()
    assert "ComfyUI restarted" in serve.stderr()


def test_job_waits_for_a_comfyui_url_that_is_down(
    launch_stub: Callable[..., ComfyServer],
    launch_serve: Callable[..., Serve],
    tmp_path: Path,
) -> None:
    comfy = launch_stub()
    serve = launch_serve(tmp_path / "data", "--comfyui-url", comfy.base_url)
    comfy.process.stop(grace=2)
    with serve.client() as c:
        job_id = str(uuid.uuid4())
        wf = simple_workflow(unique("down"))
        assert c.post("/jobs", json={"job_id": job_id, "workflow": wf}).status_code == 202
        health = _wait_health(c, lambda h: h["comfyui"] == "down", within=15)
        assert health["status"] == "degraded"
        deadline = time.monotonic() + 15
        while (job := c.get(f"/jobs/{job_id}").json())["phase"] != "starting_comfyui":
            assert job["status"] == "queued", job  # waiting, not failed
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        comfy.process.start(ready_timeout=20)  # back, on the same port
        assert wait_job(c, job_id, timeout=60)["status"] == "succeeded"


# --- 10: SIGTERM answers waiting clients 503 + Retry-After; the client rides through ----------


def test_sigterm_answers_long_polls_503_and_the_client_rides_through(
    launch_stub: Callable[..., ComfyServer],
    launch_serve: Callable[..., Serve],
    tmp_path: Path,
) -> None:
    comfy = launch_stub()
    data = tmp_path / "data"
    first = launch_serve(data, "--comfyui-url", comfy.base_url)
    port = urlsplit(first.url).port
    job_id = str(uuid.uuid4())
    with first.client() as c:
        # Long steps: each ends a long poll, and SIGTERM must not land between two of them.
        wf = slow_workflow("stub", unique("term"), steps=8, step_seconds=1.0)
        assert c.post("/jobs", json={"job_id": job_id, "workflow": wf}).status_code == 202
    polled: list[httpx.Response] = []
    waited: list[Any] = []

    def long_poll() -> None:
        # Poll until an answer is not a 200 (each progress step ends one long poll).
        deadline = time.monotonic() + 30
        with first.client() as c:
            while time.monotonic() < deadline:
                resp = c.get(f"/jobs/{job_id}", params={"wait": 20}, timeout=30)
                if resp.status_code != 200 or resp.json()["status"] != "running":
                    polled.append(resp)
                    return

    def ride() -> None:
        with RylaClient(first.url, token=TOKEN) as client:
            try:
                waited.append(client.wait(job_id))
            except Exception as exc:
                waited.append(exc)

    threads = [threading.Thread(target=long_poll), threading.Thread(target=ride)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # both wait inside the server
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(timeout=30) == 143, first.stderr()
    threads[0].join(10)
    assert len(polled) == 1
    assert polled[0].status_code == 503, polled[0].text
    assert polled[0].headers["retry-after"].isdigit()
    assert polled[0].json()["error"]["type"] == "server_stopping"

    launch_serve(data, "--comfyui-url", comfy.base_url, "--port", str(port))
    threads[1].join(60)
    assert len(waited) == 1
    job = waited[0]
    assert not isinstance(job, Exception), repr(job)
    assert job.status == "succeeded"
    assert _stats(comfy.base_url)["prompt_ids"].count(job_id) == 1
