"""The retry decision and deadlines: pure functions shared by the sync and async clients."""

from __future__ import annotations

import email.utils
import random

import httpx
import pytest

from ryla_modal.policy import (
    Deadline,
    RetryPolicy,
    in_cold_start,
    is_retryable_exception,
    is_retryable_status,
    parse_retry_after,
    retry_delay,
)


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        (408, True),
        (429, True),
        (502, True),
        (503, True),
        (504, True),
        (400, False),
        (401, False),
        (404, False),
        (409, False),
        (422, False),
        (500, False),
        (200, False),
    ],
)
def test_retryable_status(status: int, retry: bool) -> None:
    assert is_retryable_status(status) is retry


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (httpx.ConnectError("refused"), True),
        (httpx.ReadTimeout("slow"), True),
        (httpx.RemoteProtocolError("reset"), True),
        (
            httpx.HTTPStatusError(
                "x", request=httpx.Request("GET", "http://x"), response=httpx.Response(400)
            ),
            False,
        ),
        (ValueError("bug"), False),
    ],
)
def test_retryable_exception(exc: BaseException, retry: bool) -> None:
    assert is_retryable_exception(exc) is retry


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "junk"}) is None
    assert parse_retry_after({}) is None
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 7, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=now) == pytest.approx(7, abs=1)


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=10, initial_delay_s=1, max_delay_s=4)
    rng = random.Random(1)
    delays = [policy.backoff(n, rng) for n in range(1, 8)]
    assert all(0 <= d <= 4 for d in delays)
    assert max(policy.backoff(1, random.Random(i)) for i in range(50)) <= 1


def test_retry_delay_gives_up_when_spent_or_asked_too_much() -> None:
    policy = RetryPolicy(max_attempts=3, retry_after_cap_s=10)
    assert retry_delay(policy, 3, retry_after=None, remaining_s=None) is None
    assert retry_delay(policy, 1, retry_after=11, remaining_s=None) is None
    assert retry_delay(policy, 1, retry_after=2, remaining_s=None) == 2
    assert retry_delay(policy, 1, retry_after=2, remaining_s=1) is None


def test_deadline_caps_attempt_timeouts() -> None:
    assert Deadline(None).remaining() is None
    assert Deadline(None).cap(30) == 30
    d = Deadline(5)
    assert 0 < d.cap(30) <= 5
    assert Deadline(0).expired()


def test_cold_start_phases() -> None:
    assert in_cold_start("queued", None)
    assert in_cold_start("running", "starting_comfyui")
    assert not in_cold_start("running", "executing")
    assert not in_cold_start("succeeded", "done")
