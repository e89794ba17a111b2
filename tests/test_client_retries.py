"""The one retry loop, seen from outside: requests counted at a real server against the retries
the client logged and announced — sync and async alike."""

from __future__ import annotations

import email.utils
import logging
import threading
import time
from typing import Any

import pytest

from ryla_modal.client import JobEvent
from ryla_modal.errors import EndpointUnavailable
from ryla_modal.policy import RetryPolicy
from tests._hang_servers import closed_port
from tests._http_server import Answer, ScriptedServer, json_answer
from tests.conftest import simple_workflow
from tests.test_client import KINDS, call, run

FAST = RetryPolicy(max_attempts=4, initial_delay_s=0.01, max_delay_s=0.02)


def failing(times: int, status: int = 503, headers: dict[str, str] | None = None) -> Any:
    """An app that answers ``status`` ``times`` times, then ``{"status": "ok"}``."""
    left = [times]
    lock = threading.Lock()

    def app(method: str, path: str, query: dict[str, list[str]], body: bytes) -> Answer:
        with lock:
            left[0] -= 1
            fail = left[0] >= 0
        if fail:
            return json_answer({"error": {"type": "x", "message": "busy"}}, status, headers)
        return json_answer({"status": "ok"})

    return app


def retry_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "ryla_modal" and r.levelno == logging.INFO and "retrying" in r.getMessage()
    ]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("failures", [0, 1, 3, 10])
def test_retries_logged_match_the_attempts_made(
    kind: str, failures: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ryla_modal")
    with ScriptedServer(failing(failures)) as server:

        async def scenario(client: Any) -> Any:
            return await call(client.health())

        if failures < FAST.max_attempts:
            assert run(kind, server.url, scenario, retry_policy=FAST) == {"status": "ok"}
        else:
            with pytest.raises(EndpointUnavailable, match=f"after {FAST.max_attempts} attempts"):
                run(kind, server.url, scenario, retry_policy=FAST)
    attempts = len(server.requests)
    assert attempts == min(failures + 1, FAST.max_attempts)
    logs = retry_logs(caplog)
    assert len(logs) == attempts - 1  # one line per retry, none for the last attempt
    for n, line in enumerate(logs, start=1):
        assert line.startswith("retrying GET /health in ")
        assert f"(attempt {n} of {FAST.max_attempts} failed: HTTP 503)" in line


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("form", ["seconds", "http date"])
def test_retry_after_is_the_delay_slept(
    kind: str, form: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ryla_modal")
    value = "1" if form == "seconds" else email.utils.formatdate(time.time() + 2, usegmt=True)
    with ScriptedServer(failing(1, 429, {"retry-after": value})) as server:
        run(kind, server.url, lambda c: call(c.health()), retry_policy=FAST)
    first, second = (t for t, _, _ in server.requests)
    (line,) = retry_logs(caplog)
    logged = float(line.split(" in ")[1].split("s ")[0])
    assert 0 < logged <= 2.0  # the server's delay, not FAST's 0.02 s backoff
    assert second - first >= logged - 0.01  # and it is what was slept (the log rounds to 10 ms)


@pytest.mark.parametrize("kind", KINDS)
def test_an_absurd_retry_after_gives_up_at_once(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ryla_modal")
    with (
        ScriptedServer(failing(5, 429, {"retry-after": "86400"})) as server,
        pytest.raises(EndpointUnavailable, match="come back in 86400s") as info,
    ):
        run(kind, server.url, lambda c: call(c.health()), retry_policy=FAST)
    assert len(server.requests) == 1 and retry_logs(caplog) == []
    assert "more than the 120s we wait" in str(info.value)


@pytest.mark.parametrize("kind", KINDS)
def test_each_retry_is_a_job_event(kind: str, tmp_path: Any) -> None:
    events: list[JobEvent] = []
    url = f"http://127.0.0.1:{closed_port()}"

    async def scenario(client: Any) -> Any:
        wf = simple_workflow("retry-events")
        return await call(
            client.generate(wf, job_id="j-1", out_dir=tmp_path, on_event=events.append)
        )

    with pytest.raises(EndpointUnavailable, match="could not reach"):
        run(kind, url, scenario, retry_policy=FAST)
    retries = [e for e in events if e.kind == "retry"]
    assert [e.retry.attempt for e in retries if e.retry] == [1, 2, 3]
    for ev in retries:
        assert ev.job_id == "j-1" and ev.job is None and ev.retry is not None
        assert ev.retry.what == "POST /jobs" and "ConnectError" in ev.retry.cause
        assert "retrying POST /jobs" in str(ev)
