"""Every client call returns by its deadline, whatever the network does — sync and async alike.

Real sockets on 127.0.0.1: a peer that accepts and never answers, peers that drip the status line
or the body one byte at a time (each byte well within httpx's per-read timeout, so only a total
deadline ends the wait), and a refused port.  The +1 s bound is a hang guard, not a speed test.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ryla_modal.errors import (
    EndpointUnavailable,
    ExecutionTimeout,
    RequestTimeout,
    RylaTimeout,
)
from ryla_modal.policy import RetryPolicy
from tests._hang_servers import SilentPeer, TricklePeer, closed_port
from tests._http_server import Answer, ScriptedServer, job_answer
from tests.conftest import simple_workflow
from tests.test_client import KINDS, call, run

DEADLINE_S = 1.5
HANG_GUARD_S = 1.0
JOB_ID = "job-deadline-1"


@contextlib.contextmanager
def faulty(fault: str) -> Iterator[str]:
    if fault == "refused":
        yield f"http://127.0.0.1:{closed_port()}"
        return
    peer: SilentPeer | TricklePeer
    peer = SilentPeer() if fault == "silent" else TricklePeer(fault.split()[1])
    with peer:
        yield peer.url


CALLS = {
    "health": lambda c: c.health(timeout=DEADLINE_S),
    "status": lambda c: c.status(JOB_ID, timeout=DEADLINE_S),
    "generate": lambda c: c.generate(
        simple_workflow("deadline"), job_id=JOB_ID, out_dir="unused", timeout=DEADLINE_S
    ),
}
PHASES = {"health": "health", "status": "status", "generate": "submit"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("what", list(CALLS))
@pytest.mark.parametrize("fault", ["silent", "trickle headers", "trickle body", "refused"])
def test_every_call_returns_by_its_deadline(kind: str, what: str, fault: str) -> None:
    async def scenario(client: Any) -> Any:
        return await call(CALLS[what](client))

    # Patient retries: with a refused port only the deadline, not the attempts, ends the call.
    policy = RetryPolicy(max_attempts=50, initial_delay_s=0.05, max_delay_s=0.2)
    with faulty(fault) as url:
        started = time.monotonic()
        with pytest.raises((RylaTimeout, EndpointUnavailable)) as info:
            run(kind, url, scenario, retry_policy=policy)
        took = time.monotonic() - started
    assert took < DEADLINE_S + HANG_GUARD_S, f"{fault}: returned after {took:.1f}s"
    err = info.value
    if fault == "refused":
        # the last retry that fits before the deadline fails: the refusal is the reason
        assert isinstance(err, EndpointUnavailable | RequestTimeout), err
    else:
        assert isinstance(err, RequestTimeout), err
        assert isinstance(err, TimeoutError) and err.exit_code == 124
    if isinstance(err, RylaTimeout):
        assert err.phase == PHASES[what]
        assert err.job_id == (None if what == "health" else JOB_ID)
        if err.job_id:
            assert f"ryla jobs wait {JOB_ID}" in (err.hint or "")


@pytest.mark.parametrize("kind", KINDS)
def test_a_silent_long_poll_ends_at_the_execution_budget(kind: str) -> None:
    """The job is executing, then the gateway goes quiet mid-poll: the phase budget ends the
    wait (not the 120 s request budget), and the error names the phase and the job."""
    release = threading.Event()

    def app(method: str, path: str, query: dict[str, list[str]], body: bytes) -> Answer:
        if "wait" in query:
            release.wait(30)  # silence: the answer never comes in time
        return job_answer(JOB_ID)

    with ScriptedServer(app) as server:

        async def scenario(client: Any) -> Any:
            return await call(client.wait(JOB_ID, execution_timeout=DEADLINE_S))

        started = time.monotonic()
        try:
            with pytest.raises(ExecutionTimeout) as info:
                run(kind, server.url, scenario)
        finally:
            release.set()
        took = time.monotonic() - started
    assert took < DEADLINE_S + HANG_GUARD_S
    assert info.value.phase == "execution" and info.value.job_id == JOB_ID
    assert "execution budget" in str(info.value)


@pytest.mark.parametrize("kind", KINDS)
def test_no_tight_poll_loop_near_the_execution_deadline(kind: str) -> None:
    """A server that ignores ?wait= and answers at once: the client still paces its polls."""
    with ScriptedServer(lambda method, path, query, body: job_answer(JOB_ID)) as server:

        async def scenario(client: Any) -> Any:
            return await call(client.wait(JOB_ID, execution_timeout=2.0))

        with pytest.raises(ExecutionTimeout) as info:
            run(kind, server.url, scenario)
        ended = time.monotonic()
    assert info.value.phase == "execution" and info.value.job_id == JOB_ID
    last_second = [t for t, _, _ in server.requests if t > ended - 1.0]
    # 649 GETs in the last second before the fix; the pace is one per 0.25 s now
    assert 1 <= len(last_second) <= 8, len(last_second)
    waits = [p for _, _, p in server.requests[1:]]
    assert all("wait=" in p for p in waits), waits  # every poll is a long poll, never wait=0


@pytest.mark.parametrize("kind", KINDS)
def test_a_download_cut_by_its_deadline_leaves_no_partial_file(kind: str, tmp_path: Path) -> None:
    """The output trickles in: the download stops at the deadline and its temp file is gone
    (for the async client, the worker thread that writes it is stopped and awaited)."""
    stop = threading.Event()

    def crawl() -> Iterator[bytes]:
        for _ in range(100_000):
            if stop.wait(0.05):
                return
            yield b"\0" * 1024

    def app(method: str, path: str, query: dict[str, list[str]], body: bytes) -> Answer:
        if path.endswith("/outputs/0"):
            return 200, {"content-type": "image/png", "content-length": str(10**8)}, crawl()
        output = {"index": 0, "node_id": "9", "filename": "a.png", "kind": "images"}
        output |= {"mime": "image/png", "size": 10**8, "sha256": "0" * 64}
        return job_answer(JOB_ID, "succeeded", phase="done", outputs=[output])

    out = tmp_path / "out"
    with ScriptedServer(app) as server:

        async def scenario(client: Any) -> Any:
            job = await call(client.status(JOB_ID))
            return await call(client.download(job, out, timeout=DEADLINE_S))

        started = time.monotonic()
        try:
            with pytest.raises(RequestTimeout) as info:
                run(kind, server.url, scenario)
        finally:
            stop.set()
        took = time.monotonic() - started
    assert took < DEADLINE_S + HANG_GUARD_S
    assert info.value.phase == "download" and info.value.job_id == JOB_ID
    assert list(out.iterdir()) == []
