"""ComfyMonitor: ComfyUI's state, restarts with a capped backoff and a bounded number of attempts.

Real processes: the stand-in launched by ``ComfyProcess``, killed with SIGKILL; a restart that
cannot succeed is a command that exits at once.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

import pytest

from ryla_modal._transport import deadline_client
from ryla_modal.comfy.api import ComfyAPI
from ryla_modal.comfy.process import (
    COMFY_DOWN,
    COMFY_FAILED,
    COMFY_OK,
    ComfyMonitor,
    RestartPolicy,
    check_ready,
)
from ryla_modal.errors import ComfyUIUnavailable
from tests._hang_servers import TricklePeer
from tests._http_server import Answer, ScriptedServer, json_answer
from tests.conftest import ComfyServer

FAST = RestartPolicy(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2)


def _until(cond: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


def test_backoff_doubles_up_to_its_cap() -> None:
    policy = RestartPolicy(initial_backoff_s=0.5, max_backoff_s=30.0)
    assert [policy.backoff(i) for i in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert policy.backoff(10_000) == 30.0


def test_a_killed_comfyui_is_restarted(launch_stub: Callable[..., ComfyServer]) -> None:
    comfy = launch_stub()
    monitor = ComfyMonitor(comfy.base_url, process=comfy.process, restart=FAST, probe_every_s=0.1)
    monitor.start()
    try:
        first = comfy.process.pid
        assert first is not None
        os.killpg(first, signal.SIGKILL)
        _until(lambda: monitor.restarts == 1 and monitor.state == COMFY_OK, 30)
        assert comfy.process.pid != first
        assert monitor.wait_up(5) is False  # up: no wait
    finally:
        monitor.close()
        monitor.join()


def test_restarts_are_bounded_then_jobs_fail_at_once(
    launch_stub: Callable[..., ComfyServer],
) -> None:
    comfy = launch_stub()
    monitor = ComfyMonitor(comfy.base_url, process=comfy.process, restart=FAST, probe_every_s=0.1)
    monitor.start()
    try:
        comfy.process.argv = [sys.executable, "-c", "raise SystemExit(3)"]  # every restart fails
        pid = comfy.process.pid
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)
        _until(lambda: monitor.state == COMFY_FAILED, 30)
        assert monitor.restarts == 0
        with pytest.raises(ComfyUIUnavailable, match="could not be restarted"):
            monitor.wait_up(60)
    finally:
        monitor.close()
        monitor.join()


def test_a_url_that_refuses_is_down_and_waited_for(
    launch_stub: Callable[..., ComfyServer],
) -> None:
    comfy = launch_stub()
    monitor = ComfyMonitor(comfy.base_url, probe_every_s=0.1)  # not ours: never restarted
    monitor.start()
    try:
        comfy.process.stop(grace=2)
        _until(lambda: monitor.state == COMFY_DOWN, 10)
        with pytest.raises(ComfyUIUnavailable, match="did not come back"):
            monitor.wait_up(0.3)
        comfy.process.start(ready_timeout=20)
        monitor.wait_up(10)  # raises unless ComfyUI answers again within 10 s
        assert monitor.state == COMFY_OK
    finally:
        monitor.close()
        monitor.join()


def test_a_burst_of_jobs_shares_one_readiness_probe() -> None:
    """Jobs arriving while a probe is in flight take its answer instead of probing again."""
    gate = threading.Event()

    def app(method: str, path: str, query: dict[str, list[str]], body: bytes) -> Answer:
        if path == "/system_stats":
            gate.wait(10)  # held until every job is waiting
        return json_answer({"system": {}, "devices": []})

    with ScriptedServer(app) as server:
        monitor = ComfyMonitor(server.url, probe_timeout_s=20)  # not started: no probes of its own
        entered: list[int] = []
        with concurrent.futures.ThreadPoolExecutor(16) as pool:

            def job(n: int) -> bool:
                entered.append(n)
                return monitor.wait_up(30)

            futures = [pool.submit(job, n) for n in range(16)]
            _until(lambda: len(entered) == 16 and len(server.paths()) >= 1, 10)
            time.sleep(0.3)  # let the last ones reach the wait; a straggler only adds a probe
            gate.set()
            assert [f.result(timeout=30) for f in futures] == [False] * 16
        probes = server.paths().count("/system_stats")
    assert 1 <= probes <= 3, f"{probes} probes for 16 jobs"
    assert monitor.state == COMFY_OK


HANG_GUARD_S = 10.0  # far past every probe budget below: reaching it means the probe hung


@pytest.mark.parametrize("what", ["headers", "body"])
def test_a_readiness_probe_of_a_trickling_comfyui_ends_by_its_budget(what: str) -> None:
    """A byte every 50 ms never trips httpx's per-read timeout; the probe's total budget does.

    All three kinds of caller: a probe with its own client, the launcher's reused client, and
    the monitor's shared probe (which a job's wait_up runs)."""
    with (
        concurrent.futures.ThreadPoolExecutor(3) as pool,  # exits last: the peer closes first
        TricklePeer(what, interval_s=0.05) as peer,
        deadline_client() as reused,
    ):
        own = pool.submit(check_ready, peer.url, timeout=0.5)
        shared = pool.submit(check_ready, peer.url, timeout=0.5, client=reused)
        with pytest.raises(ComfyUIUnavailable, match=r"readiness probe of 0\.5s passed"):
            own.result(timeout=HANG_GUARD_S)
        with pytest.raises(ComfyUIUnavailable, match=r"readiness probe of 0\.5s passed"):
            shared.result(timeout=HANG_GUARD_S)
        monitor = ComfyMonitor(peer.url, probe_timeout_s=0.5)  # not started: no probes of its own
        try:
            # A silent answer is no refusal: the job is not held (its own deadlines decide).
            assert pool.submit(monitor.wait_up, 30).result(timeout=HANG_GUARD_S) is False
        finally:
            monitor.close()
            monitor.join()


def test_a_recent_answer_to_a_job_vouches_for_comfyui_without_a_probe() -> None:
    """ComfyAPI.answered_at is set by each answer and cleared by a failed request; wait_up
    takes a recent one instead of probing, unless told to recheck."""

    def app(method: str, path: str, query: dict[str, list[str]], body: bytes) -> Answer:
        return json_answer({} if path.startswith("/history") else {"system": {}, "devices": []})

    with ScriptedServer(app) as server:
        monitor = ComfyMonitor(server.url, fresh_s=3600)  # not started: no probes of its own
        with ComfyAPI(server.url) as api:
            assert api.history("some-job") is None  # a job's own request, answered
            heard = api.answered_at
            assert heard is not None
            for _ in range(5):
                assert monitor.wait_up(5, answered_at=heard) is False
            assert server.paths().count("/system_stats") == 0
            assert monitor.wait_up(5, answered_at=heard, recheck=True) is False
            assert server.paths().count("/system_stats") == 1
            assert monitor.wait_up(5) is False  # a URL with no answer to go by: a probe
            assert server.paths().count("/system_stats") == 2
        url = server.url
    with ComfyAPI(url, http_timeout=2) as api:  # the server is gone: the failure clears it
        api.answered_at = heard
        with pytest.raises(ComfyUIUnavailable):
            api.history("some-job")
        assert api.answered_at is None
